"""VAN's 1x1 convs on the CPU as oneDNN convolutions or as GEMMs, whichever measures faster
(`van_focal.models._routes`, per shape, layout and training or inference).

A 1x1 conv is a matrix product over channels: on a channels_last map, `F.linear` on its (B, H, W, C)
view, with no copy; on an NCHW map, a batched matmul over the (B, C, H*W) view. The two libraries behind
them (oneDNN for convolutions, the BLAS for matmuls) rank differently by CPU and shape; PyTorch itself
also sends a single-threaded 1x1 conv with a batch below 16 to its slow unfold-based path.
"""
from typing import Optional

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


@register_notrace_module  # a leaf for torch.fx: its route choice is not traceable
class PointwiseConv(nn.Conv2d):
    """A 1x1 conv (stride 1, no padding, no groups) through the faster of oneDNN and a GEMM on the CPU."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv(x, self.weight, self.bias)
