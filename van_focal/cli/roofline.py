"""The limit in view: a model's achieved GFLOP/s against the rate its own dominant kernels reach alone.

`capture` runs one step of a model (inference or training) under a dispatch mode that records every aten
call which `torch.utils.flop_counter` counts FLOPs for (convolutions, matmuls, attention, forward and
backward), with its shapes, strides, dtypes and other arguments; identical calls are counted, not kept
twice. `replay` runs each distinct call alone on fresh random tensors of the same layout and times it.
The attainable rate is the captured FLOPs over the summed isolated times: what the model would reach if
everything else (element-wise ops, norms, copies, gathers, the optimizer) took no time and its kernels ran
as fast as alone. Since the same FLOPs divide both, the percentage reached is also the share of the step
time that the kernels alone account for. Only aten ops are looked at, so this holds for any timm model;
an op without a FLOP formula (torch_npu's fused attention, for one) counts with everything else.
"""
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.flop_counter import flop_registry, shape_wrapper

from ..core import device as devices

aten = torch.ops.aten

_torch_conv_backward = flop_registry[aten.convolution_backward].__wrapped__


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed, output_padding,
                         groups, output_mask, out_shape, **kwargs) -> int:
    """torch's formula, with the weight gradient of a grouped conv counted per group (torch 2.14 counts it as if
    ungrouped: a depth-wise conv's weight gradient C times too many FLOPs; fixed upstream by pytorch#183405)."""
    def part(mask):
        return _torch_conv_backward(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                                    output_padding, groups, mask, out_shape)
    grad_weight = part([False, output_mask[1], False])
    return part([output_mask[0], False, False]) + (grad_weight // groups if _TORCH_IGNORES_GROUPS else grad_weight)


# a 1x1 depth-wise conv of 2 channels on one pixel: 4 FLOPs for its weight gradient, 8 if groups are ignored
_TORCH_IGNORES_GROUPS = _torch_conv_backward([1, 2, 1, 1], [1, 2, 1, 1], [2, 1, 1, 1], None, [1], [0], [1], False, [0], 2,
                                             [False, True, False], (None, [2, 1, 1, 1], None)) == 8

# Formulas in FlopCounterMode's custom_mapping form (shapes in place of tensors). The CPU's fused attention has
# none in flop_registry (FlopCounterMode counts it as 0 FLOPs); its arguments start as the CUDA flash
# attention's, whose formulas fit it.
FORMULA_FIXES = {
    aten.convolution_backward: _conv_backward_flops,
    aten._scaled_dot_product_flash_attention_for_cpu: flop_registry[aten._scaled_dot_product_flash_attention].__wrapped__,
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        flop_registry[aten._scaled_dot_product_flash_attention_backward].__wrapped__,
}
FLOP_FORMULAS = {**flop_registry, **{op: shape_wrapper(f) for op, f in FORMULA_FIXES.items()}}

# Result-column slug -> readable name of each kernel class; '<slug>_backward' for the calls autograd makes.
FORWARD_CLASSES = {'1x1_conv': '1x1 conv', 'depthwise_conv': 'depth-wise conv', 'grouped_conv': 'grouped conv',
                   'dense_conv': 'dense conv', 'linear': 'linear / matmul', 'attention': 'attention'}
KERNEL_CLASSES = {**FORWARD_CLASSES, **{f'{slug}_backward': f'{name} (backward)' for slug, name in FORWARD_CLASSES.items()}}
MATMUL_OPS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten._scaled_mm}
MIN_RUN_SECONDS = 2e-3  # short kernels are repeated within one timed run, so that timer and sync costs vanish


@dataclass(frozen=True)
class TensorSpec:
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def random(self) -> torch.Tensor:
        """A fresh tensor of this layout (overlapping strides such as an expanded mask's included)."""
        extent = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) if all(self.shape) else 0
        if self.dtype.is_floating_point or self.dtype.is_complex:
            base = torch.randn(extent, device=self.device).to(self.dtype)
        elif self.dtype == torch.bool:
            base = torch.rand(extent, device=self.device) < 0.5
        else:
            base = torch.zeros(extent, device=self.device, dtype=self.dtype)
        return base.as_strided(self.shape, self.stride)


@dataclass
class KernelCall:
    """One distinct call: the op, its arguments (tensors as TensorSpec), how often the step made it, its FLOPs."""
    op: Any
    leaves: List[Any]
    tree: Any
    count: int
    flops: int
    kernel_class: str
    seconds: Optional[float] = None

    def run(self) -> Callable[[], Any]:
        """The call on fresh tensors, ready to be repeated."""
        args, kwargs = tree_unflatten([x.random() if isinstance(x, TensorSpec) else x for x in self.leaves], self.tree)
        return lambda: self.op(*args, **kwargs)


def _spec(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return TensorSpec(tuple(x.shape), tuple(x.stride()), x.dtype, x.device)
    return x


def kernel_class(op: Any, args: tuple, kwargs: dict) -> str:
    """The class slug of a counted call: convolutions by their weight and groups, matmuls, attention; with
    '_backward' when autograd's backward pass makes the call."""
    slug = _forward_class(op, args, kwargs)
    return f'{slug}_backward' if torch._C._current_autograd_node() is not None else slug


def _forward_class(op: Any, args: tuple, kwargs: dict) -> str:
    packet = op._overloadpacket
    if packet in MATMUL_OPS:
        return 'linear'
    if 'conv' not in packet.__name__:
        return 'attention'
    named = dict(zip((a.name for a in op._schema.arguments), args), **kwargs)
    weight, groups = named['weight'], named.get('groups', 1)
    if groups > 1 and weight.shape[1] == 1:  # one input channel per group
        return 'depthwise_conv'
    if groups > 1:
        return 'grouped_conv'
    return '1x1_conv' if all(k == 1 for k in weight.shape[2:]) else 'dense_conv'


class _Recorder(TorchDispatchMode):
    """Counts each distinct call of an op with a FLOP formula; every other op just runs."""

    def __init__(self):
        super().__init__()
        self.calls: Dict[Any, KernelCall] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._overloadpacket not in FLOP_FORMULAS:
            # as FlopCounterMode does: an op with a decomposition is seen as the ops it decomposes into
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        leaves, tree = tree_flatten((args, kwargs))
        leaves = [_spec(x) for x in leaves]
        key = (func, tuple(leaves), repr(tree))
        if key in self.calls:
            self.calls[key].count += 1
        else:
            flops = FLOP_FORMULAS[func._overloadpacket](*args, **kwargs, out_val=out)
            self.calls[key] = KernelCall(func, leaves, tree, 1, flops, kernel_class(func, args, kwargs))
        return out


def capture(step: Callable[[], Any]) -> List[KernelCall]:
    """The distinct FLOP-counted aten calls of one `step()`, with their counts and FLOPs. The step runs once
    before, unrecorded: the first run of a shape also times the routes of `van_focal.models._routes`."""
    step()
    recorder = _Recorder()
    with recorder:
        step()
    return list(recorder.calls.values())


def _seconds(call: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of one `call()` over `repeats` timed runs, after `warmup` calls."""
    for _ in range(max(warmup, 1)):
        call()
    devices.synchronize(device)
    start = time.perf_counter()
    call()
    devices.synchronize(device)
    inner = max(1, min(100, int(MIN_RUN_SECONDS / max(time.perf_counter() - start, 1e-9))))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            call()
        devices.synchronize(device)
        seconds.append((time.perf_counter() - start) / inner)
    return statistics.median(seconds)


def replay(calls: List[KernelCall], device: torch.device, warmup: int = 2, repeats: int = 5) -> None:
    """Time each call alone (sets `seconds`)."""
    with torch.inference_mode():
        for call in calls:
            call.seconds = _seconds(call.run(), device, warmup, repeats)


def summarize(calls: List[KernelCall], step_seconds: float) -> Dict[str, Any]:
    """Result columns (roofline_*): the step's counted GFLOP, the achieved and attainable GFLOP/s and the
    percentage, and per kernel class present its calls, share of FLOPs, isolated ms per step and GFLOP/s."""
    flops = sum(c.count * c.flops for c in calls)
    seconds = sum(c.count * c.seconds for c in calls)
    row = dict(roofline_step_gflop=round(flops / 1e9, 3),
               roofline_achieved_gflops_per_sec=round(flops / step_seconds / 1e9, 1),
               roofline_gflops_per_sec=round(flops / seconds / 1e9, 1) if seconds else None,
               roofline_pct=round(100 * seconds / step_seconds, 1),
               roofline_kernel_ms=round(1e3 * seconds, 2), roofline_distinct_calls=len(calls))
    for slug in KERNEL_CLASSES:
        members = [c for c in calls if c.kernel_class == slug]
        if not members:
            continue
        class_flops = sum(c.count * c.flops for c in members)
        class_seconds = sum(c.count * c.seconds for c in members)
        row[f'roofline_{slug}_calls'] = sum(c.count for c in members)
        row[f'roofline_{slug}_flops_pct'] = round(100 * class_flops / flops, 1)
        row[f'roofline_{slug}_ms'] = round(1e3 * class_seconds, 2)
        row[f'roofline_{slug}_gflops_per_sec'] = round(class_flops / class_seconds / 1e9, 1) if class_seconds else None
    return row


def measure(step: Callable[[], Any], device: torch.device, step_seconds: float, warmup: int = 2,
            repeats: int = 5) -> Dict[str, Any]:
    """`summarize` for a step whose measured time is `step_seconds`: capture, replay, sum up."""
    calls = capture(step)
    devices.synchronize(device)
    replay(calls, device, warmup, repeats)
    return summarize(calls, step_seconds)


def describe(row: Dict[str, Any]) -> str:
    """The roofline columns of a result row as a readable block."""
    passes = 'forward and backward' if row['bench'] == 'train' else 'forward'
    lines = [f"  roofline: {row['roofline_step_gflop']:.3g} GFLOP per step ({passes}) at "
             f"{row['roofline_achieved_gflops_per_sec']:.1f} GFLOP/s = {row['roofline_pct']:.0f} % of the "
             f"{row['roofline_gflops_per_sec']} GFLOP/s its FLOP-counted kernels reach alone",
             f"  (alone they take {row['roofline_kernel_ms']:.1f} of the step's {row['latency_ms']:.1f} ms; the other "
             f"{100 - row['roofline_pct']:.0f} % is everything else, element-wise ops, norms, copies, and the kernels' "
             "slowdown in context)",
             f"  {'kernel class':<28} {'calls':>6} {'% FLOPs':>8} {'ms alone':>9} {'GFLOP/s':>8}"]
    for slug, name in KERNEL_CLASSES.items():
        if row.get(f'roofline_{slug}_calls'):
            lines.append(f"  {name:<28} {row[f'roofline_{slug}_calls']:>6} {row[f'roofline_{slug}_flops_pct']:>8.1f} "
                         f"{row[f'roofline_{slug}_ms']:>9.2f} {row[f'roofline_{slug}_gflops_per_sec']:>8.1f}")
    return '\n'.join(lines)
