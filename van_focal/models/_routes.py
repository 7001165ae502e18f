"""Exact alternative computations ("routes") of one step, the fastest chosen by measurement.

Where a step can be computed in more than one exact way (a dilated depth-wise conv as oneDNN's dilated
kernel or as plain convs on interleaved sub-grids; attention through `scaled_dot_product_attention` or
as explicit matmuls), which way is faster depends on the CPU (AMD EPYC and Intel Xeon disagree), the
shapes, the memory layout and whether gradients are needed. So, as `torch.backends.cudnn.benchmark` does,
each route is timed on the first real inputs of every key (op, shapes, dtype, layout, needs-grad,
device) and the fastest is used for that key from then on in this process.

The routes of one op give the same values up to float summation order, like cuDNN's algorithms;
`VAN_FOCAL_ROUTES=default` takes every op's first route without timing (reproducible run to run), as
does autocast, and `forced` pins routes for tests. `chosen()` tells what was picked, for bench_official.py and the doctor.
"""
import contextlib
import functools
import logging
import os
import time
from typing import Any, Callable, Dict, Hashable, Iterator, Optional, Sequence, Tuple

import torch

from ..core import device as devices

_logger = logging.getLogger(__name__)

_chosen: Dict[Tuple[str, Hashable], str] = {}
_forced: Dict[str, str] = {}
TIMED_ROUNDS = 3
MARGIN = 0.05


def layout(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return 'contiguous'
    if t.dim() == 4 and t.stride(1) == 1:  # channels_last, or a crop of such a map
        return 'channels_last'
    return 'strided'


def key_of(*tensors: torch.Tensor, **extra: Hashable) -> Hashable:
    """What a route choice depends on: each tensor's shape, dtype, layout, needs-grad and device, and `extra`."""
    parts = tuple((tuple(t.shape), t.dtype, layout(t), t.requires_grad, t.device.type) for t in tensors)
    return parts + tuple(sorted(extra.items()))


@torch.jit.unused
def capturing_graph() -> bool:
    """Whether torch.compile, an exporter or the TorchScript tracer is recording: they get the plain op,
    portable, free of timing, and free of shape-dependent padding that would guard a dynamic-size graph."""
    return (torch.compiler.is_compiling() or getattr(torch.compiler, 'is_exporting', lambda: False)()
            or torch.jit.is_tracing())


def plain_op(x: torch.Tensor) -> bool:
    """Whether the op on `x` is the plain library call, with no route: under TorchScript, off the CPU (routes
    are measured on the CPU only), and while a graph is captured (`capturing_graph`)."""
    if torch.jit.is_scripting():
        return True
    return x.device.type != 'cpu' or capturing_graph()


def _measuring() -> bool:
    return os.environ.get('VAN_FOCAL_ROUTES', 'measure') != 'default'


def _seconds(route: Callable[[], Any], device: torch.device) -> float:
    start = time.perf_counter()
    route()
    devices.synchronize(device)
    return time.perf_counter() - start


def _fastest(routes: Dict[str, Callable[[], Any]], device: torch.device) -> str:
    """Name of the route with the lowest time over interleaved rounds, after one untimed call each (the
    minimum, not the median: other work on the machine only ever adds time). The first route (the plain
    library call, where there is one) is kept unless another is faster by more than MARGIN: timed alone,
    a route's edge of a few percent is within what the surrounding model's memory traffic changes."""
    for route in routes.values():
        route()
    times = {name: [] for name in routes}
    for _ in range(TIMED_ROUNDS):
        for name, route in routes.items():
            times[name].append(_seconds(route, device))
    best = {name: min(seconds) for name, seconds in times.items()}
    first, fastest = next(iter(best)), min(best, key=best.get)
    return first if best[first] <= best[fastest] * (1 + MARGIN) else fastest


def _known(op: str, key: Hashable, names) -> Optional[str]:
    forced = _forced.get(op)
    return forced if forced in names else _chosen.get((op, key))


def first_route_only(device: torch.device) -> bool:
    """Where the routes are not timed: under autocast (its casts differ between routes, so their outputs'
    dtypes would too) and inside a dispatch mode (a FLOP counter or profiler would count every timing)."""
    return (torch.is_autocast_enabled(device.type)
            or torch.utils._python_dispatch._get_current_dispatch_mode() is not None)


def choose(op: str, key: Hashable, timers: Dict[str, Callable[[], Any]], device: torch.device) -> str:
    """Name of the fastest route for `key`, timing each route's timer (a callable of no arguments doing the
    route's work) the first time the key is seen."""
    name = _known(op, key, timers)
    if name is None:
        if first_route_only(device):
            return next(iter(timers))
        name = _fastest(timers, device) if _measuring() and len(timers) > 1 else next(iter(timers))
        _chosen[(op, key)] = name
        _logger.debug('route %s for %s %s', name, op, key)
    return name


def run(op: str, key: Hashable, routes: Dict[str, Callable[[], Any]], device: torch.device) -> Any:
    """The result of the fastest of `routes` (callables of no arguments doing the same work) for `key`."""
    return routes[choose(op, key, routes, device)]()


def _forward_backward(fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor]) -> Callable[[], Any]:
    """A timer of `fn` on detached copies of `tensors` (keeping which need gradients), then its backward."""
    inputs = [t.detach().requires_grad_(t.requires_grad) for t in tensors]

    def timer():
        # identity saved-tensor hooks: inside a non-reentrant activation checkpoint, the checkpoint's own
        # hooks would otherwise hold what the timer saves, and the recomputation would not match
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            out = fn(*inputs)
            out.backward(torch.ones_like(out))
    return timer


def apply(op: str, candidates: Dict[str, Callable[..., torch.Tensor]], *tensors: torch.Tensor,
          **key_extra: Hashable) -> torch.Tensor:
    """The fastest of `candidates` (functions of `tensors` computing the same thing) applied to `tensors`.

    The key is the tensors' shapes, dtypes, layouts and device, whether gradients flow, and `key_extra`.
    Where gradients flow the routes are timed forward and backward together: a route's backward can
    cost more than its forward, and decide which is faster."""
    training = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    key = key_of(*(t if training else t.detach() for t in tensors), training=training, **key_extra)
    name = _known(op, key, candidates)
    if name is None:
        if training:
            timers = {n: _forward_backward(fn, tensors) for n, fn in candidates.items()}
        else:
            timers = {n: functools.partial(fn, *tensors) for n, fn in candidates.items()}
        name = choose(op, key, timers, tensors[0].device)
    return candidates[name](*tensors)


def chosen() -> Dict[str, Dict[str, int]]:
    """{op: {route: number of keys it was chosen for}} in this process so far."""
    summary: Dict[str, Dict[str, int]] = {}
    for (op, _), name in _chosen.items():
        summary.setdefault(op, {}).setdefault(name, 0)
        summary[op][name] += 1
    return summary


def describe_chosen() -> str:
    """'op: route xN, route xM; ...' for benchmark rows and reports."""
    return '; '.join(f'{op}: ' + ', '.join(f'{name} x{n}' for name, n in sorted(counts.items()))
                     for op, counts in sorted(chosen().items()))


def clear() -> None:
    _chosen.clear()


@contextlib.contextmanager
def forced(**op_routes: str) -> Iterator[None]:
    """Use the named route of each op (`forced(dilated_dw_conv='interleaved')`) inside the block, untimed,
    where the op offers it."""
    previous = dict(_forced)
    _forced.update(op_routes)
    try:
        yield
    finally:
        _forced.clear()
        _forced.update(previous)
