"""Convert weights in any layout this package reads to timm's: a safetensors file, or a `save_for_hf` folder
with a model card, ready to publish on the Hugging Face hub.

    van-focal-convert focal_tiny_patch4_window7_224.pdparams focal_tiny.safetensors \\
        --model focal_tiny_patch4_window7_224.paddle_in1k
    van-focal-convert van_b2_ms.ckpt hub/van_b2_mindspore --model van_b2

The input is any file the models load: official PyTorch checkpoints, the HF transformers and OpenMMLab
VAN layouts, PaddlePaddle .pdparams, MindSpore .ckpt (see docs/foreign_weights.md). It is loaded strictly
into `--model`, so a wrong model or class count stops with one line. An OUT ending in .safetensors gets the
state dict (timm's key names) with the source and model recorded in the file's metadata; any other OUT is a
folder written by timm's `save_for_hf` (config.json, model.safetensors) plus a README.md model card: the
architecture, the source file, the preprocessing, the published top-1 and the license of the source (the
model's pretrained tag's when `--model` names it, as `focal_tiny_patch4_window7_224.paddle_in1k`, else
`--top1` / `--license`). Weights made with MindSpore keep its tanh-GELU: config.json records
`act_layer: gelu_tanh`, and the safetensors metadata says to build the model with it.
"""
import argparse
import json
import logging
import os
from typing import Any, Dict, Optional

import timm
import torch.nn as nn
from timm import utils

from ..core.checkpoint import load_checkpoint
from ..core.errors import UsageError
from .args import check_model_name, parse_args, run_main

_logger = logging.getLogger('convert')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='van-focal-convert', description=__doc__.splitlines()[0])
    parser.add_argument('-c', '--config', default='', metavar='FILE', help='YAML file of flag defaults')
    parser.add_argument('input', metavar='IN', help='weights file: .pth/.pth.tar/.bin/.safetensors/.pdparams/.ckpt')
    parser.add_argument('output', metavar='OUT', help='a .safetensors file, or a folder for save_for_hf')
    parser.add_argument('--model', '-m', required=True,
                        help='model name, with the pretrained tag whose card to write (e.g. van_b2.in1k)')
    parser.add_argument('--num-classes', type=int, default=None, help="default: the model tag's")
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs)
    parser.add_argument('--top1', default='', metavar='TEXT',
                        help="the published result of these weights, for the card (default: the model tag's, "
                             'when the model is named with its tag)')
    parser.add_argument('--license', default='', help="the source's license, for the card (default: the tag's)")
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow pickled Python objects in a PyTorch input (weights_only=False)')
    return parser


def uses_tanh_gelu(model: nn.Module) -> bool:
    """Whether the model's GELUs are the tanh approximation (as after loading MindSpore weights)."""
    return any(getattr(m, 'approximate', 'none') == 'tanh' for m in model.modules())


def model_card(model: nn.Module, model_name: str, source: str, tanh_gelu: bool, top1: str = '',
               license: str = '') -> Dict[str, Any]:
    """timm's model-card dict (for `timm.models._hub.generate_readme`). The published result and license are
    the pretrained tag's when `model_name` names one (`van_b2.in1k`: the file is that tag's weights), else
    `top1` / `license`, else said to be unknown."""
    cfg = dict(model.pretrained_cfg)
    tagged = '.' in model_name
    params = sum(p.numel() for p in model.parameters())
    details = {
        'Model Type': 'Image classification / feature backbone',
        'Architecture': f"{model_name.split('.')[0]} ({type(model).__name__}, van_focal)"
                        + (', tanh-approximated GELU (act_layer=gelu_tanh)' if tanh_gelu else ''),
        'Model Stats': {'Params (M)': round(params / 1e6, 2), 'Image size': 'x'.join(map(str, cfg['input_size'][1:]))},
        'Source file': os.path.basename(source),
        'Preprocessing': {'interpolation': cfg.get('interpolation'), 'crop_pct': cfg.get('crop_pct'),
                          'mean': list(cfg.get('mean', ())), 'std': list(cfg.get('std', ()))},
        'Published results': [top1] if top1 else list(cfg.get('notes') or ()) if tagged else [
            'not recorded (name the model with its pretrained tag, or pass --top1)'],
        'License of the source': license or (cfg.get('license') if tagged else '') or 'unknown: check the source',
    }
    for key, title in (('origin_url', 'Original'), ('paper_name', 'Paper')):
        if cfg.get(key):
            details[title] = cfg[key]
    if cfg.get('num_classes') == 21841 or model.num_classes == 21841:
        details['Dataset'] = 'ImageNet-22k'
    elif model.num_classes == 1000:
        details['Dataset'] = 'ImageNet-1k'
    kwargs = ", act_layer='gelu_tanh'" if tanh_gelu else ''
    usage = (f"```python\nimport timm, van_focal\nmodel = timm.create_model('hf-hub:ORG/REPO', pretrained=True)\n"
             f"# or from this folder: timm.create_model('local-dir:PATH', pretrained=True)\n"
             f"# or the architecture by name: timm.create_model('{model_name.split('.')[0]}'{kwargs})\n```\n")
    return {'license': license or (cfg.get('license') if tagged else '') or 'other', 'details': details, 'usage': usage,
            'tags': ['image-classification', 'timm'],
            'description': f'{model_name} weights converted to timm\'s layout by van_focal from {os.path.basename(source)}.'}


def convert(source: str, output: str, model_name: str, num_classes: Optional[int] = None,
            model_kwargs: Optional[Dict[str, Any]] = None, trusted: bool = False, top1: str = '',
            license: str = '') -> nn.Module:
    """Load `source` strictly into `model_name` and write it to `output` (see the module docstring)."""
    if not os.path.isfile(source):
        raise UsageError(f'{source}: no such file.')
    check_model_name(model_name)
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    model = timm.create_model(model_name, pretrained=False, **kwargs).eval()
    load_checkpoint(model, source, use_ema=True, strict=True, trusted=trusted)
    tanh_gelu = uses_tanh_gelu(model)
    model_args = {'act_layer': 'gelu_tanh'} if tanh_gelu else {}
    if output.endswith('.safetensors'):
        from safetensors.torch import save_file
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        metadata = {'format': 'pt', 'model': model_name, 'source': os.path.basename(source),
                    'model_args': json.dumps(dict(model_args, num_classes=model.num_classes))}
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, output, metadata=metadata)
    else:
        from timm.models import save_for_hf
        from timm.models._hub import generate_readme
        save_for_hf(model, output, model_args=model_args or None, safe_serialization=True)
        with open(os.path.join(output, 'README.md'), 'w') as f:
            card = model_card(model, model_name, source, tanh_gelu, top1, license)
            f.write(generate_readme(card, model_name.split('.')[0]))
    _logger.info(f'{source} -> {output} ({model_name}{", tanh-GELU" if tanh_gelu else ""})')
    return model


def main(argv=None) -> None:
    parser = build_parser()
    args = parse_args(parser, argv)
    utils.setup_default_logging()
    convert(args.input, args.output, args.model, args.num_classes, args.model_kwargs, args.trust_checkpoint,
            args.top1, args.license)


def run() -> None:
    run_main(main)


if __name__ == '__main__':
    run()
