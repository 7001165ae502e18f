"""Export a VAN / Focal Transformer (or any timm model) to ONNX or torch.export, and check it.

    van-focal-export --checkpoint output/train/RUN/model_best.pth.tar --out model.onnx
    van-focal-export --model van_b2 --pretrained --dynamic --out van_b2.onnx
    van-focal-export --model focal_tiny_patch4_window7_224 --checkpoint focal-tiny.pth --out focal_t.onnx
    van-focal-export --model van_b0 --features --out van_b0_features.onnx
    van-focal-export --model focalv2_tiny_useconv_patch4_window7_224 --out focalv2_t.pt2
    van-focal-export --model van_b0 --checkpoint RUN/model_best.pth.tar --reparam --out van_b0.onnx \
        --int8 --calibration-data DATA/train --val-data DATA/val

A checkpoint written by train.py gives the model, its kwargs, the class count and names, the input size
and the preprocessing, as in validate.py and predict (any flag overrides them). The preprocessing the
exported graph expects (input size, interpolation, mean, std, crop) and the class names go into the
file: the ONNX model's metadata_props, or `preprocessing.json` among a .pt2 archive's extra files.
`.onnx`: timm's `onnx_export` (torch.onnx.export, the dynamo-based exporter unless `--exporter
torchscript`), then the file is run in onnxruntime (CPU) and compared with the PyTorch model.
`.pt2`: `torch.export.export`, saved with `torch.export.save`, loaded back and compared.
The batch dimension is always dynamic; `--dynamic` also makes height and width dynamic (VAN).
Focal models take one input size per file: their key-index tables are constants of the size.
A .onnx file carries the model's preprocessing and class names in its metadata (`predict --onnx`);
`--int8` also writes FILE.int8.onnx, quantized by onnxruntime and checked against float (van_focal.cli.deploy).
"""
import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
from timm import utils
from timm.utils import reparameterize_model
from timm.utils.onnx import onnx_export

from ..core.errors import UsageError
from ..train import run_info
from . import deploy
from .args import add_model_input_args, check_model_name, given_flags, parse_args, run_main
from .predict import class_names

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]
EXPORTERS = ('dynamo', 'torchscript')
TOLERANCE = 1e-4  # largest relative difference accepted, max |ours - PyTorch| / max |PyTorch|
PT2_METADATA = 'preprocessing.json'  # a .pt2 archive's extra file holding `metadata`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='van-focal-export', description=__doc__.splitlines()[0])
    parser.add_argument('--model', '-m', default=None, help="registered model name, e.g. van_b2; default: the checkpoint's")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument('--checkpoint', default='', metavar='PATH', help='weights to load (a train.py run, official or timm layout)')
    weights.add_argument('--pretrained', action='store_true', help="the model's pretrained weights")
    parser.add_argument('--use-ema', action='store_true', help="prefer the checkpoint's EMA weights")
    add_model_input_args(parser, img_size_nargs='+')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs)
    parser.add_argument('--dynamic', '--dynamic-size', action='store_true', dest='dynamic',
                        help='dynamic height and width too (VAN; the batch is always dynamic)')
    parser.add_argument('--features', action='store_true', help='the features_only backbone: one output per stage')
    parser.add_argument('--reparam', action='store_true', help='fold BatchNorm and layer scale first (VAN, timm reparameterize)')
    parser.add_argument('--exporter', default='dynamo', choices=EXPORTERS, help='torch.onnx exporter for .onnx files')
    parser.add_argument('--opset', type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument('--tolerance', type=float, default=TOLERANCE, help='largest relative difference accepted')
    parser.add_argument('--out', required=True, metavar='FILE', help='FILE.onnx (torch.onnx) or FILE.pt2 (torch.export)')
    deploy.add_int8_args(parser)
    return parser


def resolve_img_size(args: argparse.Namespace, given: Set[str]) -> None:
    """`--img-size N` as timm's int flag; `--img-size H W` as `--input-size C H W`."""
    size = args.img_size
    if not size:
        return
    if len(size) > 2:
        raise UsageError(f'--img-size {" ".join(map(str, size))}: give H W, or one N for N x N.')
    if len(size) == 1:
        args.img_size = size[0]
        return
    args.input_size = [args.in_chans or (args.input_size[0] if args.input_size else 3), *size]
    args.img_size = None
    given.add('input_size')


def create_export_model(args: argparse.Namespace, given: Set[str]) -> Tuple[nn.Module, Dict[str, Any]]:
    """The model in eval mode, as it will be exported, and its preprocessing: from `--checkpoint`'s run and the
    flags, as validate.py and predict resolve them (van_focal.run_info)."""
    resolve_img_size(args, given)
    saved = run_info.settings_from_checkpoint(args, given, default_model=None)
    check_model_name(args.model)
    model = run_info.rebuild_model(args, saved, **(dict(features_only=True) if args.features else {}))
    model.eval()
    data_config = run_info.data_config_for(args, model, saved)
    return (reparameterize_model(model) if args.reparam else model), data_config


def metadata(args: argparse.Namespace, data_config: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """What a user of the exported file needs besides the graph: the model, its preprocessing (the exported
    input size) and its class names as predict names them (none for `--features`)."""
    names = None if args.features else class_names(model, args.class_names)
    return dict(model=args.model, data_config=run_info.plain_data_config(data_config), class_names=names)


def takes_any_size(model: nn.Module) -> bool:
    """Whether one traced graph serves every input size (VAN, convnets); False for the Focal models,
    whose attention gathers keys through index tables computed in Python for each input size."""
    return not any(getattr(m, 'per_size_tables', False) for m in model.modules())


def _as_list(outputs: Outputs) -> List[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def relative_difference(ours: Outputs, reference: Outputs) -> float:
    """max |ours - reference| / max |reference|, the largest over all outputs."""
    return max(float((torch.as_tensor(a) - b).abs().max() / b.abs().max())
               for a, b in zip(_as_list(ours), _as_list(reference)))


def _chw(size: Sequence[int]) -> Tuple[int, int, int]:
    """(C, H, W) of an input size given as (H, W) (3 channels) or (C, H, W)."""
    return tuple(size) if len(size) == 3 else (3, *size)


def export_onnx(model: nn.Module, path: str, size: Sequence[int], dynamic: bool = False,
                exporter: str = 'dynamo', opset: int = None) -> None:
    """torch.onnx.export through timm's `onnx_export` (which also runs onnx's full model check)."""
    num_outputs = len(_as_list(_eager(model, torch.zeros(1, *_chw(size)))))
    onnx_export(model, path, example_input=torch.randn(2, *_chw(size)), dynamic_size=dynamic, use_dynamo=exporter == 'dynamo',
                opset=opset, output_names=[f'output{i}' for i in range(num_outputs)], check=True)


def export_program(model: nn.Module, size: Sequence[int], dynamic: bool = False) -> torch.export.ExportedProgram:
    """torch.export.export with a dynamic batch (traced at batch 2: size-1 dimensions get specialised)."""
    dims = {0: torch.export.Dim.DYNAMIC}
    if dynamic:
        dims.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    return torch.export.export(model, (torch.randn(2, *_chw(size)),), dynamic_shapes=(dims,))


def onnx_outputs(path: str, x: torch.Tensor, threads: int = None) -> List[torch.Tensor]:
    """All outputs of the ONNX file run in onnxruntime on the CPU (timm's `onnx_forward` returns the first only)."""
    session = onnx_session(path, threads)
    return [torch.from_numpy(o) for o in session.run(None, {session.get_inputs()[0].name: x.numpy()})]


def onnx_session(path: str, threads: int = None):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def check_inputs(size: Sequence[int], dynamic: bool) -> List[torch.Tensor]:
    """Batches of 1 and 3 (the export traced 2) at the exported size and, with dynamic sizes, at another."""
    c, h, w = _chw(size)
    sizes = [(c, h, w)] + ([(c, h + 32, w + 64)] if dynamic else [])
    return [torch.randn(batch, *chw) for chw in sizes for batch in (1, 3)]


@torch.no_grad()
def _eager(model: nn.Module, x: torch.Tensor) -> Outputs:
    return model(x)


def verify(model: nn.Module, path: str, size: Sequence[int], dynamic: bool) -> Dict[str, float]:
    """Largest relative difference of the exported file to the PyTorch model, per checked input shape."""
    if path.endswith('.pt2'):
        program = torch.export.load(path).module()
        run = lambda x: _eager(program, x)  # noqa: E731
    else:
        run = lambda x: onnx_outputs(path, x)  # noqa: E731
    return {'x'.join(map(str, x.shape)): relative_difference(run(x), _eager(model, x)) for x in check_inputs(size, dynamic)}


def export(model: nn.Module, path: str, size: Sequence[int], dynamic: bool = False, exporter: str = 'dynamo',
           opset: int = None, meta: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """Export to `path` (.onnx or .pt2) at input `size` ((H, W) or (C, H, W)), with `meta` stored in the file,
    and return the relative differences to PyTorch (`verify`)."""
    if dynamic and not takes_any_size(model):
        raise UsageError(f'--dynamic: {type(model).__name__} models are exported for one input size per file '
                         '(their key-index tables are constants of the size); drop --dynamic and export one file '
                         'per size with --img-size H W.')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith('.pt2'):
        extra = {PT2_METADATA: json.dumps(meta)} if meta else None
        torch.export.save(export_program(model, size, dynamic), path, extra_files=extra)
    elif path.endswith('.onnx'):
        export_onnx(model, path, size, dynamic, exporter, opset)
        if meta:
            deploy.write_metadata(path, meta)
    else:
        raise UsageError(f'--out {path}: name it FILE.onnx (ONNX) or FILE.pt2 (torch.export).')
    return verify(model, path, size, dynamic)


def read_metadata(path: str) -> Dict[str, Any]:
    """The `meta` that `export` stored in an .onnx or .pt2 file."""
    if path.endswith('.pt2'):
        extra = {PT2_METADATA: ''}
        torch.export.load(path, extra_files=extra)
        return json.loads(extra[PT2_METADATA] or '{}')
    return deploy.read_metadata(path)


def describe_input(data_config: Dict[str, Any]) -> str:
    c, h, w = data_config['input_size']
    mean = ', '.join(f'{m:g}' for m in data_config['mean'])
    std = ', '.join(f'{s:g}' for s in data_config['std'])
    return (f"input {c}x{h}x{w}, {data_config['interpolation']} resize, crop_pct {data_config['crop_pct']:g} "
            f"({data_config['crop_mode']}), mean ({mean}), std ({std})")


def main(argv: List[str] = None) -> None:
    parser = build_parser()
    args = parse_args(parser, argv)
    deploy.check_int8_args(args)
    model, data_config = create_export_model(args, given_flags(parser, argv))
    size = data_config['input_size']
    meta = metadata(args, data_config, model)
    differences = export(model, args.out, size, args.dynamic, args.exporter, args.opset, meta)
    how = 'torch.export' if args.out.endswith('.pt2') else f'torch.onnx ({args.exporter})'
    source = f' from {args.checkpoint}' if args.checkpoint else ' (pretrained)' if args.pretrained else ' (random weights)'
    classes = f', {len(args.class_names)} named classes' if args.class_names and not args.features else ''
    print(f'{args.out}: {os.path.getsize(args.out) / 2 ** 20:.1f} MB, {args.model}{source}{classes} via {how}, '
          f'dynamic {"batch, height, width" if args.dynamic else "batch"}')
    where = 'metadata_props' if args.out.endswith('.onnx') else f'extra file {PT2_METADATA}'
    print(f'  expects {describe_input(data_config)} (stored in its {where})')
    for shape, difference in differences.items():
        print(f'  input {shape}: max relative difference to PyTorch {difference:.2e}')
    worst = max(differences.values())
    print(f'largest difference {worst:.2e} ({"within" if worst <= args.tolerance else "ABOVE"} tolerance {args.tolerance:g})')
    if worst > args.tolerance:
        sys.exit(1)
    if args.int8:
        print('\n'.join(deploy.describe(*deploy.export_int8(args.out, meta, args))))


def run() -> None:
    """The console script `van-focal-export`: a user's mistake ends in one line and exit status 2."""
    run_main(main)


if __name__ == '__main__':
    run()
