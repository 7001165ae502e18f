"""Export a VAN / Focal Transformer (or any timm model) to ONNX or torch.export, and check it.

    van-focal-export --model van_b2 --pretrained --dynamic --out van_b2.onnx
    van-focal-export --model focal_tiny_patch4_window7_224 --checkpoint focal-tiny.pth --out focal_t.onnx
    van-focal-export --model van_b0 --features --out van_b0_features.onnx
    van-focal-export --model focalv2_tiny_useconv_patch4_window7_224 --out focalv2_t.pt2
    van-focal-export --model van_b0 --checkpoint RUN/model_best.pth.tar --reparam --out van_b0.onnx \
        --int8 --calibration-data DATA/train --val-data DATA/val

`.onnx`: timm's `onnx_export` (torch.onnx.export, the dynamo-based exporter unless `--exporter
torchscript`), then the file is run in onnxruntime (CPU) and compared with the PyTorch model.
`.pt2`: `torch.export.export`, saved with `torch.export.save`, loaded back and compared.
The batch dimension is always dynamic; `--dynamic` also makes height and width dynamic (VAN).
Focal models take one input size per file: their key-index tables are constants of the size.
A .onnx file carries the model's preprocessing and class names in its metadata (`predict --onnx`);
`--int8` also writes FILE.int8.onnx, quantized by onnxruntime and checked against float (van_focal.cli.deploy).
"""
import argparse
import os
import sys
from typing import Dict, List, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.utils import reparameterize_model
from timm.utils.onnx import onnx_export

from ..core.checkpoint import checkpoint_loading, load_checkpoint
from ..core.errors import UsageError
from . import deploy
from .args import check_model_name, run_main

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]
EXPORTERS = ('dynamo', 'torchscript')
TOLERANCE = 1e-4  # largest relative difference accepted, max |ours - PyTorch| / max |PyTorch|


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', required=True, help='registered model name, e.g. van_b2')
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument('--checkpoint', default='', metavar='PATH', help='weights to load (official or timm layout)')
    weights.add_argument('--pretrained', action='store_true', help="the model's pretrained weights")
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load the checkpoint with weights_only=False; only for files you trust')
    parser.add_argument('--use-ema', action='store_true', help="prefer the checkpoint's EMA weights")
    parser.add_argument('--num-classes', type=int, default=None)
    parser.add_argument('--img-size', type=int, nargs='+', default=None, metavar='N',
                        help="input H W (or one N for N x N); default: the model's pretrained_cfg")
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


def create_export_model(name: str, pretrained: bool = False, checkpoint: str = '', features: bool = False,
                        num_classes: int = None, reparam: bool = False, trusted: bool = False,
                        use_ema: bool = False) -> nn.Module:
    """The model in eval mode, as it will be exported."""
    kwargs = dict(features_only=True) if features else {}
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    with checkpoint_loading(name, name):
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if checkpoint:
        load_checkpoint(model, checkpoint, use_ema=use_ema, trusted=trusted)
    model.eval()
    return reparameterize_model(model) if reparam else model


def takes_any_size(model: nn.Module) -> bool:
    """Whether one traced graph serves every input size (VAN, convnets); False for the Focal models,
    whose attention gathers keys through index tables computed in Python for each input size."""
    return not any(getattr(m, 'per_size_tables', False) for m in model.modules())


def input_size(model: nn.Module, img_size: Sequence[int] = None) -> Tuple[int, int]:
    if img_size:
        if len(img_size) > 2:
            raise UsageError(f'--img-size {" ".join(map(str, img_size))}: give H W, or one N for N x N.')
        return (img_size[0], img_size[-1])
    return tuple(model.pretrained_cfg['input_size'][1:])


def _as_list(outputs: Outputs) -> List[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def relative_difference(ours: Outputs, reference: Outputs) -> float:
    """max |ours - reference| / max |reference|, the largest over all outputs."""
    return max(float((torch.as_tensor(a) - b).abs().max() / b.abs().max())
               for a, b in zip(_as_list(ours), _as_list(reference)))


def export_onnx(model: nn.Module, path: str, size: Tuple[int, int], dynamic: bool = False,
                exporter: str = 'dynamo', opset: int = None) -> None:
    """torch.onnx.export through timm's `onnx_export` (which also runs onnx's full model check)."""
    num_outputs = len(_as_list(_eager(model, torch.zeros(1, 3, *size))))
    onnx_export(model, path, example_input=torch.randn(2, 3, *size), dynamic_size=dynamic, use_dynamo=exporter == 'dynamo',
                opset=opset, output_names=[f'output{i}' for i in range(num_outputs)], check=True)


def export_program(model: nn.Module, size: Tuple[int, int], dynamic: bool = False) -> torch.export.ExportedProgram:
    """torch.export.export with a dynamic batch (traced at batch 2: size-1 dimensions get specialised)."""
    dims = {0: torch.export.Dim.DYNAMIC}
    if dynamic:
        dims.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    return torch.export.export(model, (torch.randn(2, 3, *size),), dynamic_shapes=(dims,))


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


def check_inputs(size: Tuple[int, int], dynamic: bool) -> List[torch.Tensor]:
    """Batches of 1 and 3 (the export traced 2) at the exported size and, with dynamic sizes, at another."""
    sizes = [size] + ([(size[0] + 32, size[1] + 64)] if dynamic else [])
    return [torch.randn(batch, 3, *hw) for hw in sizes for batch in (1, 3)]


@torch.no_grad()
def _eager(model: nn.Module, x: torch.Tensor) -> Outputs:
    return model(x)


def verify(model: nn.Module, path: str, size: Tuple[int, int], dynamic: bool) -> Dict[str, float]:
    """Largest relative difference of the exported file to the PyTorch model, per checked input shape."""
    if path.endswith('.pt2'):
        program = torch.export.load(path).module()
        run = lambda x: _eager(program, x)  # noqa: E731
    else:
        run = lambda x: onnx_outputs(path, x)  # noqa: E731
    return {'x'.join(map(str, x.shape)): relative_difference(run(x), _eager(model, x)) for x in check_inputs(size, dynamic)}


def export(model: nn.Module, path: str, size: Tuple[int, int], dynamic: bool = False, exporter: str = 'dynamo',
           opset: int = None) -> Dict[str, float]:
    """Export to `path` (.onnx or .pt2) and return the relative differences to PyTorch (`verify`)."""
    if dynamic and not takes_any_size(model):
        raise UsageError(f'--dynamic: {type(model).__name__} models are exported for one input size per file '
                         '(their key-index tables are constants of the size); drop --dynamic and export one file '
                         'per size with --img-size H W.')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith('.pt2'):
        torch.export.save(export_program(model, size, dynamic), path)
    elif path.endswith('.onnx'):
        export_onnx(model, path, size, dynamic, exporter, opset)
    else:
        raise UsageError(f'--out {path}: name it FILE.onnx (ONNX) or FILE.pt2 (torch.export).')
    return verify(model, path, size, dynamic)


def main(argv: List[str] = None) -> None:
    args = build_parser().parse_args(argv)
    check_model_name(args.model)
    deploy.check_int8_args(args)
    model = create_export_model(args.model, args.pretrained, args.checkpoint, args.features, args.num_classes,
                                args.reparam, args.trust_checkpoint, args.use_ema)
    size = input_size(model, args.img_size)
    differences = export(model, args.out, size, args.dynamic, args.exporter, args.opset)
    if args.out.endswith('.onnx'):  # preprocessing and class names, for predict --onnx and other runtimes
        meta = deploy.export_metadata(model, args.model, size, args.checkpoint, args.trust_checkpoint)
        deploy.write_metadata(args.out, meta)
    how = 'torch.export' if args.out.endswith('.pt2') else f'torch.onnx ({args.exporter})'
    print(f'{args.out}: {os.path.getsize(args.out) / 2 ** 20:.1f} MB, {args.model} via {how}, '
          f'dynamic {"batch, height, width" if args.dynamic else "batch"}')
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
