"""Check that this machine runs the models right: the first command to run on a new GPU or NPU machine.

    van-focal-doctor                          # the accelerator present, else the CPU
    van-focal-doctor --device npu --models van_b0,focalv2_tiny_useconv_patch4_window7_224

Prints the versions and the device, runs each model family (small configs) forward and backward on the
device against a CPU float32 reference, in float32 and in mixed precision, runs AMP training steps through
the loss scaler (one of them forced to overflow, which must be skipped), reports which attention kernel
ran, all-reduces across two devices when two are visible, and ends with a pass/fail table and a block to
paste into a bug report. Exit status 0 when every check passes, 1 otherwise.
"""
import argparse
import copy
import socket
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..core import device as devices  # first: keeps a torch_npu without CANN from breaking `import torch`
import torch  # noqa: E402,I001
import torch.nn as nn  # noqa: E402
import timm  # noqa: E402

from .. import models as _registered  # noqa: E402,F401  (importing it registers the models with timm)
from ..core.errors import UsageError  # noqa: E402
from ..core.version import __version__  # noqa: E402
from ..models import _attention  # noqa: E402
from ..models import _routes as routes  # noqa: E402
from .args import run_main  # noqa: E402

DEFAULT_MODELS = ('van_b0', 'focal_tiny_patch4_window7_224', 'focal_tiny_useconv_patch4_window7_224',
                  'focalv2_tiny_useconv_patch4_window7_224')
IMG_SIZE = 64
BATCH = 2
# Small configurations of each family: the same code paths (Focal at 64 px also pads its windows).
SMALL = {
    'van': dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1)),
    'focal': dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), img_size=IMG_SIZE, focal_topk=32),
}
# Relative error (max |device - reference| / max |reference|) allowed against the CPU float32 reference.
# float32 on an accelerator runs its matmuls in TF32 / HF32 (device.set_fast_math): 10-bit mantissas.
TOLERANCES = {('cpu', torch.float32): 1e-4, ('accelerator', torch.float32): 2e-2,
              torch.float16: 5e-2, torch.bfloat16: 5e-2}


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL, SKIP or INFO
    detail: str = ''


def small_model(name: str) -> nn.Module:
    return timm.create_model(name, num_classes=10, drop_path_rate=0., **SMALL['van' if name.startswith('van') else 'focal'])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    if not torch.isfinite(a).all():
        return float('inf')
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def forward_backward(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                     autocast=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits and all parameter gradients (flattened, in order) of one cross-entropy step in train mode."""
    model.train()
    model.zero_grad(set_to_none=True)
    with (autocast or nullcontext)():
        logits = model(x)
    nn.functional.cross_entropy(logits.float(), target).backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return logits, grads


def amp_dtypes(device: torch.device) -> List[torch.dtype]:
    """The mixed-precision dtypes train.py can use on `device`."""
    dtypes = [] if device.type == 'cpu' else [torch.float16]
    return dtypes + ([torch.bfloat16] if devices.bf16_supported(device) else [])


def check_model(name: str, device: torch.device) -> List[Check]:
    torch.manual_seed(0)
    reference = small_model(name)
    x, target = torch.randn(BATCH, 3, IMG_SIZE, IMG_SIZE), torch.randint(0, 10, (BATCH,))
    ref_logits, ref_grads = forward_backward(reference, x, target)
    model = copy.deepcopy(reference).to(device)
    xd, td = x.to(device), target.to(device)
    checks = []
    for dtype in [torch.float32] + amp_dtypes(device):
        label = f'{name} {str(dtype).split(".")[1]} fwd+bwd vs CPU fp32'
        try:
            autocast = devices.autocast(device, dtype != torch.float32, dtype)
            logits, grads = forward_backward(model, xd, td, autocast)
            devices.synchronize(device)
        except Exception as e:  # a kernel the device lacks is a finding, not a crash of the doctor
            checks.append(Check(label, 'FAIL', f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'))
            continue
        tol = TOLERANCES.get(dtype) or TOLERANCES[('cpu' if device.type == 'cpu' else 'accelerator', dtype)]
        errors = relative_error(logits, ref_logits), relative_error(grads, ref_grads)
        status = 'PASS' if max(errors) <= tol else 'FAIL'
        checks.append(Check(label, status, f'logits {errors[0]:.1e}, grads {errors[1]:.1e} (tol {tol:.0e})'))
    return checks


def check_attention_kernel(device: torch.device, used: Dict[str, int]) -> Check:
    """Which kernel Focal's attention ran on: fused (the device's own kernel taking the additive bias, the
    NPU's npu_fusion_attention) or scaled_dot_product_attention (a fallback on an NPU)."""
    ran = ', '.join(f'{k} x{v}' for k, v in sorted(used.items())) or 'no attention layer ran'
    if devices.fused_attention_op(device) is not None:
        if not used.get('npu_fusion_attention'):
            return Check('attention kernel', 'FAIL', f'{ran}; the fused kernel is available but did not run')
        return Check('attention kernel', 'INFO', f'fused: {ran}')
    kind = 'fallback' if device.type == 'npu' else "PyTorch's own choice"
    return Check('attention kernel', 'INFO', f'{kind}: {ran}')


def check_loss_scaler(device: torch.device) -> List[Check]:
    """One AMP float16 step through the loss scaler train.py uses, then one whose gradients overflow:
    the first must change the weights, the second must leave them untouched and lower the scale."""
    scaler = devices.loss_scaler(device, True, torch.float16)
    where = ''
    if scaler is None:  # the CPU trains in bfloat16 without scaling; the scaler logic is still checked
        scaler, where = timm.utils.NativeScaler(device=device.type), ' (CPU: timm NativeScaler)'
    torch.manual_seed(0)
    model = small_model('van_b0').to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    autocast = devices.autocast(device, True, torch.float16)
    x = torch.randn(BATCH, 3, IMG_SIZE, IMG_SIZE, device=device)
    target = torch.randint(0, 10, (BATCH,), device=device)
    checks = []
    for label, factor, must_apply in (('loss scaler: normal step applied', 1.0, True),
                                      ('loss scaler: overflow step skipped', 1e38, False)):
        before = [p.detach().clone() for p in model.parameters()]
        scale_before = scaler._scaler.get_scale()
        with autocast():
            loss = nn.functional.cross_entropy(model(x).float(), target) * factor
        scaler(loss, optimizer)
        optimizer.zero_grad(set_to_none=True)
        changed = any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
        scale_after = scaler._scaler.get_scale()
        ok = changed == must_apply and (must_apply or scale_after < scale_before)
        detail = f'weights {"changed" if changed else "unchanged"}, scale {scale_before:g} -> {scale_after:g}{where}'
        checks.append(Check(label, 'PASS' if ok else 'FAIL', detail))
    return checks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _all_reduce_worker(rank: int, device_type: str, port: int, world_size: int) -> None:
    device = torch.device(f'{devices.resolve_device_name(device_type)}:{rank}' if device_type != 'cpu' else 'cpu')
    if device_type != 'cpu':
        getattr(torch, device_type).set_device(device)
    torch.distributed.init_process_group(devices.dist_backend(device_type), init_method=f'tcp://127.0.0.1:{port}',
                                         rank=rank, world_size=world_size)
    try:
        value = torch.full((4,), float(rank + 1), device=device)
        torch.distributed.all_reduce(value)
        expected = world_size * (world_size + 1) / 2
        if not torch.all(value.cpu() == expected):
            raise AssertionError(f'rank {rank}: all_reduce gave {value.cpu().tolist()}, expected {expected}')
    finally:
        torch.distributed.destroy_process_group()


def check_all_reduce(device: torch.device, world_size: int = 2) -> Check:
    label = f'all-reduce over {world_size} devices'
    count = devices.device_count(device.type)
    if device.type != 'cpu' and count < world_size:
        return Check(label, 'SKIP', f'{count} device(s) visible')
    try:
        torch.multiprocessing.spawn(_all_reduce_worker, args=(device.type, _free_port(), world_size),
                                    nprocs=world_size, join=True)
    except Exception as e:
        return Check(label, 'FAIL', str(e).strip().splitlines()[-1][:300])
    return Check(label, 'PASS', f'{devices.dist_backend(device.type)}')


def run_checks(device: torch.device, models: List[str], all_reduce: bool) -> List[Check]:
    checks = []
    _attention.KERNELS_USED.clear()
    for name in models:
        checks += check_model(name, device)
    checks.append(check_attention_kernel(device, dict(_attention.KERNELS_USED)))
    checks.append(Check('routes picked', 'INFO', routes.describe_chosen() or 'none: one route on this device'))
    checks += check_loss_scaler(device)
    if all_reduce:
        checks.append(check_all_reduce(device))
    else:
        checks.append(Check('all-reduce over 2 devices', 'SKIP', 'the CPU is one device' if device.type == 'cpu'
                            else 'skipped (--no-all-reduce)'))
    return checks


def table(checks: List[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return '\n'.join(f'{c.name:<{width}}  {c.status:<4}  {c.detail}' for c in checks)


def report(device: torch.device, info: Dict[str, str], checks: List[Check]) -> str:
    failed = [c for c in checks if c.status == 'FAIL']
    verdict = f'{len(failed)} of {len(checks)} checks FAILED' if failed else f'all {len(checks)} checks passed'
    lines = [f'van_focal {__version__} doctor on {device}: {verdict}', '']
    lines += [f'{key:<12} {value}' for key, value in info.items()]
    lines += ['', table(checks)]
    bug = ['```', f'van_focal {__version__} doctor, {device}: {verdict}']
    bug += [f'{key}: {value}' for key, value in info.items()]
    bug += [f'{c.status} {c.name}: {c.detail}' for c in checks if c.status != 'PASS']
    bug.append('```')
    lines += ['', 'Paste into a bug report:', *bug]
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='van-focal-doctor', description=__doc__.splitlines()[0])
    parser.add_argument('--device', default=None, help='cuda, npu or cpu (default: the accelerator present)')
    parser.add_argument('--models', default=','.join(DEFAULT_MODELS),
                        help='comma-separated model names (small configurations of each are built)')
    parser.add_argument('--no-all-reduce', action='store_true', help='skip the 2-device all-reduce')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.amp_dtype = 'float16'
    device = devices.init_device(args)
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    for name in models:
        if not name.startswith(('van_', 'focal')) or not timm.is_model(name):
            raise UsageError(f'--models {name}: not a VAN or Focal Transformer model name.')
    info = devices.describe(device)
    checks = run_checks(device, models, all_reduce=not args.no_all_reduce and device.type != 'cpu')
    print(report(device, info, checks), flush=True)
    return 1 if any(c.status == 'FAIL' for c in checks) else 0


def run() -> None:
    """The console script `van-focal-doctor`: a user's mistake ends in one line and exit status 2."""
    run_main(lambda: sys.exit(main()))


if __name__ == '__main__':
    run()
