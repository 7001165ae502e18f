"""VAN weights in the HF transformers and OpenMMLab layouts: recognised from their keys, strict, with the
owners' own logits, through every loading door (fixtures: tests/fixtures/make_golden_layouts.py)."""
import pytest
import timm
import torch

import van_focal  # noqa: F401
from conftest import golden, relative_error
from offline_hub import add_repo, offline_hub  # noqa: F401  (fixture)
from van_focal.core.checkpoint import allow_training_configs
from van_focal.models.van_layouts import detect_layout

LAYOUTS = {'van_hf_cfg': 'hf_transformers', 'van_mmpretrain_cfg': 'openmmlab', 'van_tiny_cfg': 'official'}
# OpenMMLab's VAN normalises with LayerNorm eps 1e-5 where the official code (and this one) uses 1e-6.
TOLERANCE = {'van_hf_cfg': 1e-5, 'van_mmpretrain_cfg': 1e-4, 'van_tiny_cfg': 1e-5}


def small(kwargs):
    return dict(embed_dims=kwargs['embed_dims'], depths=kwargs['depths'], num_classes=kwargs['num_classes'])


def raw_state_dict(path):
    allow_training_configs()  # again: timm's own loading removes argparse.Namespace when it is done
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint.get('state_dict', checkpoint)


@pytest.mark.parametrize('name', LAYOUTS)
def test_layout_is_recognised(name):
    path, _, _, _ = golden(name)
    assert detect_layout(list(raw_state_dict(path))) == LAYOUTS[name]


@pytest.mark.parametrize('door', ['load_checkpoint', 'pretrained_cfg_overlay', 'load_state_dict'])
@pytest.mark.parametrize('name', ['van_hf_cfg', 'van_mmpretrain_cfg'])
def test_golden_logits_through_each_door(name, door):
    path, kwargs, x, logits = golden(name)
    if door == 'pretrained_cfg_overlay':
        model = timm.create_model('van_b0', pretrained=True, **small(kwargs),
                                  pretrained_cfg_overlay=dict(file=str(path), num_classes=kwargs['num_classes']))
    else:
        model = timm.create_model('van_b0', **small(kwargs))
        if door == 'load_checkpoint':
            timm.models.load_checkpoint(model, str(path), strict=True)
        else:
            model.load_state_dict(raw_state_dict(path), strict=True)
    with torch.no_grad():
        assert relative_error(model.eval()(x), logits) <= TOLERANCE[name]


def test_openmmlab_backbone_only_checkpoint():
    """mmsegmentation-style backbone weights (no head): all of them load into a headless model."""
    path, kwargs, x, _ = golden('van_mmpretrain_cfg')
    backbone = {k: v for k, v in raw_state_dict(path).items() if k.startswith('backbone.')}
    model = timm.create_model('van_b0', **dict(small(kwargs), num_classes=0)).eval()
    model.load_state_dict(backbone, strict=True)
    reference = timm.create_model('van_b0', pretrained=True, **small(kwargs),
                                  pretrained_cfg_overlay=dict(file=str(path), num_classes=kwargs['num_classes'])).eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference.forward_head(reference.forward_features(x), pre_logits=True))


def test_hf_tag_downloads_through_the_hub(offline_hub):  # noqa: F811
    """`van_b0.hf_in1k` fetches transformers' file from its hub repo (here a hub cache on disk, offline)."""
    path, kwargs, x, logits = golden('van_hf_cfg')
    cfg = timm.models.get_pretrained_cfg('van_b0.hf_in1k')
    add_repo(offline_hub, cfg.hf_hub_id, {cfg.hf_hub_filename: path})
    model = timm.create_model('van_b0.hf_in1k', pretrained=True, **small(kwargs),
                              pretrained_cfg_overlay=dict(num_classes=kwargs['num_classes'])).eval()
    with torch.no_grad():
        assert relative_error(model(x), logits) <= TOLERANCE['van_hf_cfg']


def test_openmmlab_tag_downloads_from_its_url(offline_hub, tmp_path):  # noqa: F811
    """`van_b0.mmcls_in1k` fetches OpenMMLab's file from its URL (here served from torch.hub's cache)."""
    path, kwargs, x, logits = golden('van_mmpretrain_cfg')
    url = timm.models.get_pretrained_cfg('van_b0.mmcls_in1k').url
    cached = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / url.rsplit('/', 1)[1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    model = timm.create_model('van_b0.mmcls_in1k', pretrained=True, **small(kwargs),
                              pretrained_cfg_overlay=dict(num_classes=kwargs['num_classes'])).eval()
    with torch.no_grad():
        assert relative_error(model(x), logits) <= TOLERANCE['van_mmpretrain_cfg']


def test_focal_checkpoints_from_before_the_stages_rename():
    """This package's own Focal checkpoints once named the stage container `layers`: they still load."""
    kwargs = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
    model = timm.create_model('focal_tiny_patch4_window7_224', **kwargs)
    old = {k.replace('stages.', 'layers.', 1) if k.startswith('stages.') else k: v for k, v in model.state_dict().items()}
    assert any(k.startswith('layers.1.downsample.') for k in old)
    fresh = timm.create_model('focal_tiny_patch4_window7_224', **kwargs)
    fresh.load_state_dict(old, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
