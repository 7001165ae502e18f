"""A conv and the element-wise op after it in one pass over memory on the CPU, where that measures faster.

oneDNN applies a GELU, or a product or sum with another map, to a convolution's output as it writes it
(post-ops; `torch.ops.mkldnn._convolution_pointwise`, what inductor uses on the CPU): the map is written once
and not read back. Its GELU is the exact (erf) or tanh form, equal to torch's up to float rounding. VAN's
MLP (3x3 depth-wise conv, GELU) and attention (1x1 conv, GELU; 1x1 conv times the gate's input) and
Focal's MLP (linear, GELU, as a 1x1 conv on the tokens) run through it in inference.

Each is a route (`van_focal.models._routes`): the separate ops stay unless the fused one is faster on this
CPU and shape. Off the CPU, with gradients, under autocast or a dispatch mode (FLOP counters), in graph capture, torch.fx
tracing and TorchScript: the separate ops.
"""
from typing import Optional

import torch
import torch.nn as nn

from timm.layers import GELU, GELUTanh

from . import _routes as routes


def gelu_approximation(act: nn.Module) -> Optional[str]:
    """'none' or 'tanh' for torch's and timm's GELU modules, None for any other activation."""
    if isinstance(act, nn.GELU):
        return act.approximate
    if isinstance(act, GELUTanh):
        return 'tanh'
    if isinstance(act, GELU):
        return 'none'
    return None


def _fusable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN's fused op may serve: an inference call on the CPU, float32 or bfloat16 (as the weight), no
    autocast, no graph capture or torch.fx tracing, and no dispatch mode (a FLOP counter knows the separate ops)."""
    if isinstance(x, torch.fx.Proxy) or routes.plain_op(x) or not torch.backends.mkldnn.is_available():
        return False
    if routes.first_route_only(x.device) or x.dtype not in (torch.float32, torch.bfloat16) or weight.dtype != x.dtype:
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))


def _conv_fusable(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    return (_fusable(x, conv.weight) and conv.padding_mode == 'zeros' and not isinstance(conv.padding, str)
            and x.dim() == 4)


def _onednn(x: torch.Tensor, conv: nn.Conv2d, attr: str, algorithm: Optional[str]) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
        attr, [None], algorithm)


def conv_gelu(conv: nn.Conv2d, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """act(conv(x)), the GELU applied by oneDNN as it writes the conv's output where that is faster."""
    approximate = gelu_approximation(act)
    if torch.jit.is_scripting() or approximate is None or not _conv_fusable(x, conv):
        return act(conv(x))
    return routes.run('conv_gelu', routes.key_of(x, conv.weight, groups=conv.groups, dilation=conv.dilation), {
        'separate': lambda: act(conv(x)),
        'onednn_fused': lambda: _onednn(x, conv, 'gelu', approximate),
    }, x.device)


def conv_mul(conv: nn.Conv2d, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """other * conv(x), the product formed by oneDNN as it writes the conv's output where that is faster."""
    if torch.jit.is_scripting() or not _conv_fusable(x, conv) or not _fusable(other, conv.weight) \
            or other.shape != x.shape[:1] + (conv.out_channels,) + x.shape[2:]:
        return other * conv(x)
    return routes.run('conv_mul', routes.key_of(x, conv.weight, other, groups=conv.groups), {
        'separate': lambda: other * conv(x),
        'onednn_fused': lambda: torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
            conv.groups, 'mul', None, None, [None], None),
    }, x.device)


def linear_gelu(fc: nn.Linear, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """act(fc(x)) of (..., C) tokens, as a 1x1 conv with oneDNN's GELU post-op on their channels_last view where
    that is faster."""
    approximate = gelu_approximation(act)
    if torch.jit.is_scripting() or approximate is None or not _fusable(x, fc.weight) or not x.is_contiguous() \
            or x.dim() < 2:
        return act(fc(x))

    def fused() -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        as_map = rows.view(1, rows.shape[0], 1, rows.shape[1]).permute(0, 3, 1, 2)  # (1, C, N, 1), channels_last
        out = torch.ops.mkldnn._convolution_pointwise(
            as_map, fc.weight[:, :, None, None], fc.bias, [0, 0], [1, 1], [1, 1], 1, 'gelu', [None], approximate)
        return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], fc.out_features)

    return routes.run('linear_gelu', routes.key_of(x, fc.weight), {
        'separate': lambda: act(fc(x)),
        'onednn_fused': fused,
    }, x.device)
