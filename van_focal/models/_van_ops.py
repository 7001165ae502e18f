"""VAN's block in training keeping less than half the activations for backward: the same sums, the cheap
element-wise results recomputed in backward instead of kept.

Autograd keeps, per block, the inputs of every op that needs them: the GELU's input and output, the gate's
two factors u and attn and its product u * attn, the layer-scale products' inputs, and in the MLP the 1x1
conv's output, the depth-wise conv's output and the GELU's output (each `mlp_ratio` times the block's width).
`van_block_saving_memory` runs the block through three autograd functions that save less:

- `_GeluDepthwise`, LKA's first conv on GELU(p): saves p (kept anyway), not GELU(p).
- `_GatedProjection`, the end of the attention branch, ls1 * (a + proj_2(GELU(p) * attn)): saves a, p and
  attn (a and p are kept anyway), not GELU(p), the product, nor the branch output before the layer scale.
- `_MlpOutput`, the end of the MLP, ls2 * fc2(GELU(dwconv(h))): saves h only; backward recomputes the
  3x3 depth-wise conv and the GELU.

The layer scale's gradient needs the branch before scaling, y = a + W v + b, which is not saved: with
M = sum over pixels of g v^T (the 1x1 conv's weight gradient before scaling by ls, a product backward
computes anyway), sum(g * y) per channel is sum(g * a) + rowsum(W * M) + b * sum(g).

Under autocast each function casts as autocast casts the convs (their inputs to the autocast dtype, the
residual sums in the wider dtype), with autocast off inside, so forward and backward each see one dtype.
Graph capture (torch.compile, export, TorchScript), MLP dropout in training and activations other than
GELU take the plain block, whose backward is autograd's.
"""
import contextlib
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import device as devices
from . import _routes as routes
from ._conv_act import conv_gelu, gelu_approximation
from ._depthwise import depthwise_conv, depthwise_conv_grads
from ._pointwise import pointwise_conv, pointwise_conv_grads


def _autocast_off(t: torch.Tensor):
    """A context with autocast off on t's device (where it is on): the functions cast themselves."""
    if devices.autocast_dtype(t.device.type) is None:
        return contextlib.nullcontext()
    return torch.autocast(t.device.type, enabled=False)


def _cast(t: Optional[torch.Tensor], dtype: Optional[torch.dtype]) -> Optional[torch.Tensor]:
    return t if t is None or dtype is None or not t.is_floating_point() else t.to(dtype)


def _channel(t: torch.Tensor) -> torch.Tensor:
    return t[:, None, None]


def _scaled_projection_grads(g: torch.Tensor, v: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                             scale: torch.Tensor, needs: Tuple[bool, bool, bool, bool], dtype: Optional[torch.dtype]):
    """Gradients of r = scale * (conv1x1(v, weight) + bias) for dr = g: (v, weight, bias, the part of scale's
    gradient that comes through the projection).

    One 1x1 convolution backward (`pointwise_conv_grads`) of the unscaled g with the weight scaled per output channel gives all it needs:
    the input gradient W^T (scale * g), M = sum over pixels of g v^T (weight gradient scale * M) and sum(g)
    (bias gradient scale * sum(g)); and scale's part, rowsum(W * M) + bias * sum(g)."""
    scaled_weight = weight * scale[:, None, None, None].to(weight.dtype)
    need_m, need_sum = needs[1] or needs[3], bias is not None and (needs[2] or needs[3])
    grad_v, m, g_sum = pointwise_conv_grads(_cast(g, dtype), v, _cast(scaled_weight, dtype),
                                            (needs[0], need_m, need_sum))
    grad_w = grad_b = grad_scale = None
    if needs[1]:
        grad_w = m.float() * scale.float()[:, None, None, None]
    if bias is not None and needs[2]:
        grad_b = g_sum.float() * scale.float()
    if needs[3]:
        grad_scale = (weight.flatten(1).float() * m.flatten(1).float()).sum(1)
        if bias is not None:
            grad_scale = grad_scale + bias.float() * g_sum.float()
    return grad_v, grad_w, grad_b, grad_scale


class _GeluDepthwise(torch.autograd.Function):
    """depthwise_conv(GELU(p)), saving p: backward recomputes the GELU."""

    @staticmethod
    def forward(ctx, p, weight, bias, dilation, approximate, dtype):
        ctx.save_for_backward(p, weight)
        ctx.setup = dilation, approximate, dtype, bias is not None
        with _autocast_off(p):
            return depthwise_conv(_cast(F.gelu(p, approximate=approximate), dtype), _cast(weight, dtype),
                                  _cast(bias, dtype), dilation)

    @staticmethod
    def backward(ctx, grad):
        p, weight = ctx.saved_tensors
        dilation, approximate, dtype, has_bias = ctx.setup
        needs = ctx.needs_input_grad
        with _autocast_off(p):
            u = _cast(F.gelu(p, approximate=approximate), dtype)
            grad_u, grad_w, grad_b = depthwise_conv_grads(
                _cast(grad, dtype), u, _cast(weight, dtype), dilation, (needs[0], needs[1], has_bias and needs[2]))
            grad_p = None if grad_u is None else torch.ops.aten.gelu_backward(grad_u.to(p.dtype), p,
                                                                              approximate=approximate)
        return grad_p, grad_w, grad_b, None, None, None


class _GatedProjection(torch.autograd.Function):
    """scale * (a + conv1x1(GELU(p) * attn, weight) + bias), saving a, p and attn."""

    @staticmethod
    def forward(ctx, a, p, attn, weight, bias, scale, approximate, dtype):
        ctx.save_for_backward(a, p, attn, weight, bias, scale)
        ctx.setup = approximate, dtype
        with _autocast_off(a):
            v = F.gelu(p, approximate=approximate) * attn
            z = pointwise_conv(_cast(v, dtype), _cast(weight, dtype), _cast(bias, dtype))
            return (a + z) * _channel(scale)

    @staticmethod
    def backward(ctx, g):
        a, p, attn, weight, bias, scale = ctx.saved_tensors
        approximate, dtype = ctx.setup
        needs = ctx.needs_input_grad
        with _autocast_off(a):
            u = F.gelu(p, approximate=approximate)
            grad_v, grad_w, grad_b, grad_scale = _scaled_projection_grads(
                g, _cast(u * attn, dtype), weight, bias, scale, (needs[1] or needs[2], needs[3], needs[4], needs[5]),
                dtype)
            grad_a = g * _channel(scale) if needs[0] else None
            grad_p = grad_attn = None
            if grad_v is not None:
                grad_attn = (grad_v * u).to(attn.dtype) if needs[2] else None
                grad_p = torch.ops.aten.gelu_backward((grad_v * attn).to(p.dtype), p,
                                                      approximate=approximate) if needs[1] else None
            if needs[5]:
                grad_scale = grad_scale + (g * a).sum((0, 2, 3)).float()
        return grad_a, grad_p, grad_attn, grad_w, grad_b, grad_scale, None, None


class _MlpOutput(torch.autograd.Function):
    """scale * conv1x1(GELU(depthwise_conv(h)), weight) + scale * bias, saving h: backward recomputes the
    depth-wise conv and the GELU."""

    @staticmethod
    def forward(ctx, h, dw_weight, dw_bias, dilation, weight, bias, scale, approximate, dtype, dw_gelu):
        ctx.save_for_backward(h, dw_weight, dw_bias, weight, bias, scale)
        ctx.setup = dilation, approximate, dtype
        with _autocast_off(h):
            if dw_gelu is not None:  # the module's conv and GELU, in one pass where faster (`_conv_act`)
                u = dw_gelu(h)
            else:
                d = depthwise_conv(_cast(h, dtype), _cast(dw_weight, dtype), _cast(dw_bias, dtype), dilation)
                u = F.gelu(d, approximate=approximate)
            z = pointwise_conv(_cast(u, dtype), _cast(weight, dtype), _cast(bias, dtype))
            return z * _channel(scale)

    @staticmethod
    def backward(ctx, g):
        h, dw_weight, dw_bias, weight, bias, scale = ctx.saved_tensors
        dilation, approximate, dtype = ctx.setup
        needs = ctx.needs_input_grad
        with _autocast_off(h):
            h_c, dw_weight_c = _cast(h, dtype), _cast(dw_weight, dtype)
            d = depthwise_conv(h_c, dw_weight_c, _cast(dw_bias, dtype), dilation)
            u = F.gelu(d, approximate=approximate)
            dw_needs = (needs[0], needs[1], dw_bias is not None and needs[2])
            grad_u, grad_w, grad_b, grad_scale = _scaled_projection_grads(
                g, u, weight, bias, scale, (any(dw_needs), needs[4], needs[5], needs[6]), dtype)
            grad_h = grad_dw_w = grad_dw_b = None
            if grad_u is not None:
                grad_d = torch.ops.aten.gelu_backward(grad_u.to(d.dtype), d, approximate=approximate)
                grad_h, grad_dw_w, grad_dw_b = depthwise_conv_grads(grad_d, h_c, dw_weight_c, dilation, dw_needs)
        return grad_h, grad_dw_w, grad_dw_b, None, grad_w, grad_b, grad_scale, None, None, None


@torch.jit.unused
def saves_less(block: nn.Module, x: torch.Tensor) -> bool:
    """Whether `van_block_saving_memory` serves: asked for (`VAN.set_low_memory`), eager, with gradients, a GELU,
    and no MLP dropout in training."""
    if not block.low_memory or not torch.is_grad_enabled():
        return False
    if isinstance(x, torch.fx.Proxy) or routes.capturing_graph():
        return False  # torch.fx's symbolic tracing, torch.compile, export: the plain block
    if gelu_approximation(block.attn.activation) is None or gelu_approximation(block.mlp.act) is None:
        return False
    if block.training and block.mlp.drop.p > 0:
        return False
    return x.requires_grad or any(p.requires_grad for p in block.parameters())


@torch.jit.unused
def van_block_saving_memory(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`VanBlock.forward` (same parameters, same sums) through the functions above."""
    attn, lka, mlp = block.attn, block.attn.spatial_gating_unit, block.mlp
    dtype = devices.autocast_dtype(x.device.type)
    approximate = gelu_approximation(attn.activation)
    a = block.norm1(x)
    p = attn.proj_1(a)
    attn_map = _GeluDepthwise.apply(p, lka.conv0.weight, lka.conv0.bias, lka.conv0.dilation[0], approximate, dtype)
    attn_map = lka.conv1(lka.conv_spatial(attn_map))
    x = x + block.drop_path(_GatedProjection.apply(a, p, attn_map, attn.proj_2.weight, attn.proj_2.bias,
                                                   block.layer_scale_1, approximate, dtype))
    h = mlp.fc1(block.norm2(x))
    return x + block.drop_path(_MlpOutput.apply(h, mlp.dwconv.weight, mlp.dwconv.bias, mlp.dwconv.dilation[0],
                                                mlp.fc2.weight, mlp.fc2.bias, block.layer_scale_2,
                                                gelu_approximation(mlp.act), dtype,
                                                None if dtype else lambda h: conv_gelu(mlp.dwconv, mlp.act, h)))
