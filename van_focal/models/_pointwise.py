"""VAN's 1x1 convs on the CPU as oneDNN convolutions or as GEMMs, whichever measures faster
(`van_focal.models._routes`, per shape, layout and training or inference).

A 1x1 conv is a matrix product over channels: on a channels_last map, `F.linear` on its (B, H, W, C)
view, with no copy; on an NCHW map, a batched matmul over the (B, C, H*W) view. The two libraries behind
them (oneDNN for convolutions, the BLAS for matmuls) rank differently by CPU and shape; PyTorch itself
also sends a single-threaded 1x1 conv with a batch below 16 to its slow unfold-based path.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.models import register_notrace_module

from . import _routes as routes


def _as_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return F.conv2d(x, weight, bias)


def _as_gemm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    if routes.layout(x) == 'channels_last':
        return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)
    B, C, H, W = x.shape
    y = torch.matmul(weight.flatten(1), x.reshape(B, C, H * W))
    return (y if bias is None else y + bias[:, None]).view(B, -1, H, W)


ROUTES = {'onednn': _as_conv, 'gemm': _as_gemm}


@torch.jit.unused
def _routed(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    if bias is None:
        return routes.apply('pointwise_conv', ROUTES, x, weight)
    return routes.apply('pointwise_conv', ROUTES, x, weight, bias)


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`F.conv2d(x, weight, bias)` for a 1x1 weight, through the faster of oneDNN and a GEMM on the CPU."""
    if routes.plain_op(x):
        return F.conv2d(x, weight, bias)
    return _routed(x, weight, bias)


def _grads_onednn(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, needs: Tuple[bool, bool, bool]):
    return torch.ops.aten.convolution_backward(grad, x, weight, [weight.shape[0]], [1, 1], [0, 0], [1, 1], False,
                                               [0, 0], 1, list(needs))


def _grads_gemm(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, needs: Tuple[bool, bool, bool]):
    w = weight.flatten(1)
    grad_x = grad_w = grad_b = None
    if routes.layout(grad) == routes.layout(x) == 'channels_last':
        g_rows = grad.permute(0, 2, 3, 1).reshape(-1, w.shape[0])
        x_rows = x.permute(0, 2, 3, 1).reshape(-1, w.shape[1])
        if needs[0]:
            B, _, H, W = x.shape
            grad_x = g_rows.mm(w).view(B, H, W, -1).permute(0, 3, 1, 2)
        if needs[1]:
            grad_w = g_rows.t().mm(x_rows).view_as(weight)
    else:
        B, C, H, W = grad.shape
        g_mat = grad.reshape(B, C, H * W)
        if needs[0]:
            grad_x = torch.matmul(w.t(), g_mat).view(B, -1, H, W)
        if needs[1]:
            grad_w = torch.bmm(g_mat, x.reshape(B, w.shape[1], H * W).transpose(1, 2)).sum(0).view_as(weight)
    if needs[2]:
        grad_b = grad.sum((0, 2, 3))
    return grad_x, grad_w, grad_b


def pointwise_conv_grads(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         needs: Tuple[bool, bool, bool]) -> Tuple[Optional[torch.Tensor], ...]:
    """(input, weight, bias) gradients of `pointwise_conv(x, weight, bias)` for the output gradient `grad`, each
    only where `needs` says: oneDNN's convolution backward or GEMMs, the faster on the CPU; the library's elsewhere."""
    if routes.plain_op(x):
        return _grads_onednn(grad, x, weight, needs)
    key = routes.key_of(x, grad, weight, needs=tuple(needs))
    return routes.run('pointwise_conv_grads', key, {
        'onednn': lambda: _grads_onednn(grad, x, weight, needs),
        'gemm': lambda: _grads_gemm(grad, x, weight, needs),
    }, x.device)


@register_notrace_module  # a leaf for torch.fx: its route choice is not traceable
class PointwiseConv(nn.Conv2d):
    """A 1x1 conv (stride 1, no padding, no groups) through the faster of oneDNN and a GEMM on the CPU."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv(x, self.weight, self.bias)
