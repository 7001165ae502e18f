"""torch.hub entry points: every registered VAN and Focal Transformer model.

    model = torch.hub.load('OWNER/van_focal', 'van_b2', pretrained=True)
    model = torch.hub.load('OWNER/van_focal', 'van_b0', pretrained=True, pretrained_cfg='hf_in1k', num_classes=10)
    model = torch.hub.load('/path/to/a/clone', 'focal_tiny_patch4_window7_224', source='local', features_only=True)

Each entry point is `timm.create_model(name, pretrained=..., **kwargs)`: timm's keyword arguments (num_classes,
in_chans, features_only, out_indices, pretrained_cfg (a tag), pretrained_cfg_overlay=dict(file=...), drop_path_rate,
img_size for Focal, output_stride for VAN, ...) all apply. `torch.hub.list` names them; `torch.hub.help` shows this.
"""
import timm

import van_focal  # noqa: F401  (registers the models with timm)

dependencies = ['torch', 'torchvision', 'timm', 'yaml']

MODELS = timm.list_models(['van_*', 'focal_*', 'focalv2_*'])


def _entry_point(name: str):
    def entry_point(pretrained: bool = False, **kwargs):
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__doc__ = f"`timm.create_model('{name}', pretrained=pretrained, **kwargs)`.\n\n{__doc__}"
    return entry_point


globals().update({name: _entry_point(name) for name in MODELS})
