"""VAN's depth-wise convs (5x5, 7x7 dilated 3, and the MLP's 3x3) on the CPU through the fastest exact route.

oneDNN's CPU kernels for these are uneven: its dilated depth-wise kernels are several times slower than
its plain ones, and its combined backward (input, weight and bias gradients in one call) is slower than
the three computed apart. Which alternative wins depends on the CPU, the shape and the layout, so each
is chosen by measurement (`van_focal.models._routes`):

- `dilated_dw_conv` (forward of a dilated conv): oneDNN's dilated kernel, or a plain conv on the d x d
  interleaved sub-grids of the map (`interleaved`).
- `dw_conv_grad_input`: oneDNN's input-gradient kernel, or the forward conv of the output gradient with
  the kernel flipped (stride 1, symmetric padding: the same sums).
- `dw_conv_grad_weight`: oneDNN's weight-gradient kernel, or for a dilated conv the undilated one on
  the interleaved sub-grids of input and output gradient.

Other devices, TorchScript, exporters and torch.compile get the plain `F.conv2d`. `DepthwiseConv` is the
module: an `nn.Conv2d` with the same parameters, state-dict keys and padding, computed this way.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.models import register_notrace_function, register_notrace_module

from . import _routes as routes


def to_subgrids(x: torch.Tensor, d: int) -> torch.Tensor:
    """(B, C, H, W) -> (B*d*d, C, ceil(H/d), ceil(W/d)): the d x d interleaved sub-grids stacked into the
    batch, zero-padded to multiples of d, in the memory layout of x (one copy)."""
    B, C, H, W = x.shape
    Hp, Wp = -(-H // d) * d, -(-W // d) * d
    x = F.pad(x, (0, Wp - W, 0, Hp - H))
    if routes.layout(x) == 'channels_last':
        x = x.permute(0, 2, 3, 1).reshape(B, Hp // d, d, Wp // d, d, C).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B * d * d, Hp // d, Wp // d, C).permute(0, 3, 1, 2)
    x = x.reshape(B, C, Hp // d, d, Wp // d, d).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(B * d * d, C, Hp // d, Wp // d)


def from_subgrids(y: torch.Tensor, d: int, size: Tuple[int, int]) -> torch.Tensor:
    """The inverse of `to_subgrids`, cropped to `size`, in the memory layout of y."""
    Bdd, C, h, w = y.shape
    B = Bdd // (d * d)
    if routes.layout(y) == 'channels_last':
        y = y.permute(0, 2, 3, 1).reshape(B, d, d, h, w, C).permute(0, 3, 1, 4, 2, 5)
        y = y.reshape(B, h * d, w * d, C).permute(0, 3, 1, 2)
    else:
        y = y.reshape(B, d, d, C, h, w).permute(0, 3, 4, 1, 5, 2).reshape(B, C, h * d, w * d)
    return y[:, :, :size[0], :size[1]]


def interleaved_dilated_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], d: int) -> torch.Tensor:
    """A depth-wise conv with dilation d and 'same' zero padding as an undilated conv on the interleaved
    sub-grids of x: output pixel (i, j) only sees input pixels with the same (i mod d, j mod d), so each
    sub-grid is an ordinary depth-wise conv with padding k // 2, with the same products and sums."""
    y = F.conv2d(to_subgrids(x, d), weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])
    return from_subgrids(y, d, x.shape[2:])


def _onednn_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], d: int) -> torch.Tensor:
    return F.conv2d(x, weight, bias, padding=d * (weight.shape[-1] // 2), dilation=d, groups=x.shape[1])


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], d: int) -> torch.Tensor:
    if d == 1:
        return _onednn_conv(x, weight, bias, 1)
    return routes.run('dilated_dw_conv', routes.key_of(x.detach(), d=d, k=weight.shape[-1], bias=bias is not None), {
        'onednn': lambda: _onednn_conv(x, weight, bias, d),
        'interleaved': lambda: interleaved_dilated_conv(x, weight, bias, d),
    }, x.device)


def _onednn_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, d: int, which: int) -> torch.Tensor:
    """One of (input, weight) gradients from oneDNN's convolution_backward, the other not computed."""
    padding = d * (weight.shape[-1] // 2)
    mask = [which == 0, which == 1, False]
    return torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [padding, padding], [d, d], False,
                                               [0, 0], x.shape[1], mask)[which]


def _grad_weight_on_subgrids(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, d: int) -> torch.Tensor:
    return _onednn_grad(to_subgrids(grad, d), to_subgrids(x, d), weight, 1, which=1)


def depthwise_conv_grads(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, d: int,
                         needs: Tuple[bool, bool, bool]) -> Tuple[Optional[torch.Tensor], ...]:
    """(input, weight, bias) gradients of `depthwise_conv(x, weight, bias, d)` for the output gradient `grad`,
    each only where `needs` says; through the fastest exact route on the CPU, oneDNN's kernels elsewhere.
    Differentiable ops only: double backward works."""
    if routes.plain_op(x):
        return torch.ops.aten.convolution_backward(grad, x, weight, [x.shape[1]], [1, 1],
                                                   [d * (weight.shape[-1] // 2)] * 2, [d, d], False, [0, 0],
                                                   x.shape[1], list(needs))
    key = routes.key_of(x, grad, d=d, k=weight.shape[-1])
    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_x = routes.run('dw_conv_grad_input', key, {
            'onednn': lambda: _onednn_grad(grad, x, weight, d, which=0),
            'flipped_forward': lambda: _forward(grad, weight.flip(-1, -2), None, d),
        }, x.device)
    if needs[1]:
        candidates = {'onednn': lambda: _onednn_grad(grad, x, weight, d, which=1)}
        if d > 1:
            candidates['interleaved'] = lambda: _grad_weight_on_subgrids(grad, x, weight, d)
        grad_w = routes.run('dw_conv_grad_weight', key, candidates, x.device)
    if needs[2]:
        grad_b = grad.sum((0, 2, 3))
    return grad_x, grad_w, grad_b


class _RoutedDepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, d):
        ctx.save_for_backward(x, weight)
        ctx.d = d
        return _forward(x, weight, bias, d)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return (*depthwise_conv_grads(grad, x, weight, ctx.d, tuple(ctx.needs_input_grad[:3])), None)


@torch.jit.unused
def _routed(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], d: int) -> torch.Tensor:
    if torch.is_autocast_enabled('cpu'):
        # Cast as autocast casts a conv, but outside the autograd function, whose backward must see one dtype.
        dtype = torch.get_autocast_dtype('cpu')
        with torch.autocast('cpu', enabled=False):
            return _routed(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), d)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _RoutedDepthwiseConv.apply(x, weight, bias, d)
    return _forward(x, weight, bias, d)


@register_notrace_function
def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int = 1) -> torch.Tensor:
    """A depth-wise conv with stride 1 and 'same' zero padding (odd kernel), through the fastest exact route."""
    if routes.plain_op(x):
        return _onednn_conv(x, weight, bias, dilation)
    return _routed(x, weight, bias, dilation)


@register_notrace_module  # a leaf for torch.fx: its route choice is not traceable
class DepthwiseConv(nn.Conv2d):
    """A depth-wise conv with stride 1 and 'same' zero padding (odd kernel, any dilation): `nn.Conv2d`'s
    parameters and state-dict keys, computed through `depthwise_conv`."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1, bias: bool = True):
        super().__init__(channels, channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
                         groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv(x, self.weight, self.bias, self.dilation[0])
