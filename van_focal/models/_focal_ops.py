"""Focal Transformer's layers below the paper's level: windows in and out of a (B, H, W, C) map, the
q/k/v gather of every window's keys, attention with an additive bias, and the CPU fast paths.

On the CPU, the linear layers, the window pooling and the gather's backward each have two exact ways to
be computed, the faster chosen by measurement per shape (`_routes`); `RoutedLinear` and `WindowPool`
keep `nn.Linear`'s parameters and state-dict keys. Under TorchScript, off the CPU and while a graph is
captured (torch.compile, export, jit.trace) every op is the plain one (`_routes.plain_op`).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from timm.models._features_fx import register_notrace_function

from . import _routes as routes
from ._attention import attention_with_bias


@register_notrace_function
def pad_to_windows(x: torch.Tensor, ws: int, centred: bool = False) -> torch.Tensor:
    """Zero-pad a (B, H, W, C) map to multiples of ws, at the bottom/right or (centred) on both sides."""
    pad_h, pad_w = (-x.shape[1]) % ws, (-x.shape[2]) % ws
    if pad_h == 0 and pad_w == 0:
        return x
    top, left = (pad_h // 2, pad_w // 2) if centred else (0, 0)
    return F.pad(x, (0, 0, left, pad_w - left, top, pad_h - top))


def _map_to_windows(x: torch.Tensor, nwh: int, nww: int, ws: int, heads: int) -> torch.Tensor:
    """(B, nwh*ws, nww*ws, C) map -> (B, heads*nW, ws*ws, head_dim) window queries, heads outermost."""
    B = x.shape[0]
    x = x.reshape(B, nwh, ws, nww, ws, heads, -1).permute(0, 5, 1, 3, 2, 4, 6)
    return x.reshape(B, heads * nwh * nww, ws * ws, -1)


def windows_to_map(x: torch.Tensor, nwh: int, nww: int, ws: int) -> torch.Tensor:
    """(B, heads*nW, ws*ws, head_dim) attention output -> (B, nwh*ws, nww*ws, C) map."""
    B, _, _, head_dim = x.shape
    x = x.view(B, -1, nwh, nww, ws, ws, head_dim).permute(0, 2, 4, 3, 5, 1, 6)
    # An explicit copy (reshape copies here anyway, except for one-window maps): otherwise torch.export
    # records a view valid for the strides of the eager SDPA output only, not of its decomposition.
    return x.clone(memory_format=torch.contiguous_format).view(B, nwh * ws, nww * ws, -1)


def _gather_keys_values(qkv: torch.Tensor, index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (B, heads*nW, S, head_dim) of each window from the (B, N, 3, heads, head_dim)
    projection of all tokens and an (nW, S) index into them: one gather, heads outermost so that
    the result is already laid out for attention."""
    B, _, _, heads, head_dim = qkv.shape
    kv = qkv[:, :, 1:].permute(2, 0, 3, 1, 4).index_select(3, index.view(-1))  # (2, B, heads, nW*S, head_dim)
    kv = kv.view(2, B, heads * index.shape[0], index.shape[1], head_dim)
    return kv[0], kv[1]  # not unbind: the TorchScript-based ONNX exporter mistranslates it


def _gather_qkv_plain(qkv: torch.Tensor, index: torch.Tensor, height: int, width: int,
                      ws: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Window queries (B, heads*nW, ws*ws, head_dim) of the first height*width tokens of the
    (B, N, 3, heads, head_dim) projection, as a (height, width) map zero-padded to whole windows,
    and the keys and values of `_gather_keys_values`."""
    B, _, _, heads, head_dim = qkv.shape
    q = pad_to_windows(qkv[:, :height * width, 0].reshape(B, height, width, heads * head_dim), ws)
    q = _map_to_windows(q, q.shape[1] // ws, q.shape[2] // ws, ws, heads)
    return (q, *_gather_keys_values(qkv, index))


class _GatherQKV(torch.autograd.Function):
    """`_gather_qkv_plain` with a backward writing the gradients of q, k and v straight into ONE
    zero-initialised gradient of the projection (a strided copy for q, `index_add_` for k and v),
    where autograd's backward of the slices, selects and gather allocates and adds several
    projection-sized zero tensors. The same sums in the same order."""

    @staticmethod
    def forward(ctx, qkv, index, height, width, ws):
        ctx.save_for_backward(index)
        ctx.shape, ctx.height, ctx.width, ctx.ws = qkv.shape, height, width, ws
        return _gather_qkv_plain(qkv, index, height, width, ws)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q, grad_k, grad_v):
        index, = ctx.saved_tensors
        args = (ctx.shape, grad_q, grad_k, grad_v, index, ctx.height, ctx.width, ctx.ws)
        grad = routes.run('gather_kv_grad', routes.key_of(grad_q, grad_k, index, shape=tuple(ctx.shape)), {
            'buffer': lambda: _gather_qkv_grad(*args, through_buffer=True),
            'in_place': lambda: _gather_qkv_grad(*args, through_buffer=False),
        }, grad_q.device)
        return grad, None, None, None, None


def _gather_qkv_grad(shape: torch.Size, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor,
                     index: torch.Tensor, height: int, width: int, ws: int, through_buffer: bool) -> torch.Tensor:
    """The (B, N, 3, heads, head_dim) gradient of `_gather_qkv_plain`'s input: q's gradient copied back
    from the windows, and each token's key/value gradient summed over its copies by `index_add_`, either
    straight into the strided slots or into a contiguous buffer copied in afterwards."""
    B, N, _, heads, head_dim = shape
    nwh, nww = -(-height // ws), -(-width // ws)
    grad = grad_q.new_zeros(shape)
    windows = grad_q.reshape(B, heads, nwh, nww, ws, ws, head_dim).permute(0, 2, 4, 3, 5, 1, 6)
    grad_map = windows.reshape(B, nwh * ws, nww * ws, heads, head_dim)[:, :height, :width]
    grad[:, :height * width, 0].view(B, height, width, heads, head_dim).copy_(grad_map)
    if through_buffer:
        buffer = grad.new_zeros(2, B * heads, N, head_dim)
        for i, grad_kv in enumerate((grad_k, grad_v)):
            buffer[i].index_add_(1, index.view(-1), grad_kv.reshape(B * heads, -1, head_dim))
        grad[:, :, 1:].copy_(buffer.view(2, B, heads, N, head_dim).permute(1, 3, 0, 2, 4))
    else:
        for slot, grad_kv in ((1, grad_k), (2, grad_v)):
            grad[:, :, slot].transpose(1, 2).index_add_(2, index.view(-1), grad_kv.reshape(B, heads, -1, head_dim))
    return grad


@torch.jit.unused
def _gather_qkv_function(qkv: torch.Tensor, index: torch.Tensor, height: int, width: int,
                         ws: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _GatherQKV.apply(qkv, index, height, width, ws)


@register_notrace_function
def gather_qkv(qkv: torch.Tensor, index: torch.Tensor, height: int, width: int,
               ws: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of every window (see `_gather_qkv_plain`); while training in eager
    mode on the CPU, through `_GatherQKV` for its backward (not yet measured on accelerators)."""
    if routes.plain_op(qkv) or not (torch.is_grad_enabled() and qkv.requires_grad):
        return _gather_qkv_plain(qkv, index, height, width, ws)
    return _gather_qkv_function(qkv, index, height, width, ws)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, dropout_p: float,
                     scale: float) -> torch.Tensor:
    """Attention of every window's queries (B, heads*nW, L, D) to its keys and values (B, heads*nW, S, D)
    with an additive bias (heads, nW, L, S), as one 4-D attention call (`attention_with_bias`).

    Heads and windows share the 'heads' axis, so the bias broadcasts over the batch without a copy,
    and SDPA can use its fused kernels (with 5-D inputs it falls back to the unfused math path).
    """
    mask = bias.to(q.dtype).reshape(1, q.shape[1], q.shape[2], -1)
    return attention_with_bias(q, k, v, mask, dropout_p, scale)


@torch.jit.unused
def _linear_as_conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear as a 1x1 conv (oneDNN on the CPU, bias fused) of the tokens viewed as a channels-last column."""
    tokens = x.reshape(1, -1, 1, x.shape[-1]).permute(0, 3, 1, 2)
    out = F.conv2d(tokens, weight[:, :, None, None], bias)
    return out.permute(0, 2, 3, 1).reshape(x.shape[:-1] + (weight.shape[0],))


LINEAR_ROUTES = {'addmm': F.linear, 'conv1x1': _linear_as_conv1x1}


@torch.jit.unused
def _linear_routed(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return routes.apply('linear', LINEAR_ROUTES, *tensors)


@register_notrace_function
def routed_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """F.linear; on the CPU through the faster of addmm (GEMM, then or before it a bias pass) and a
    1x1 conv through oneDNN (bias fused), measured per shape, for inference and training apart."""
    if routes.plain_op(x):
        return F.linear(x, weight, bias)
    return _linear_routed(x, weight, bias)


class RoutedLinear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) through `routed_linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return routed_linear(x, self.weight, self.bias)


class WindowPool(nn.Module):
    """The 'fc' focal pooling: a learned weighted sum over the ws x ws tokens of each window."""

    def __init__(self, ws: int):
        super().__init__()
        self.ws = ws
        self.fc = nn.Linear(ws * ws, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return window_pool(x, self.fc.weight, self.fc.bias, self.ws)


def _pool_einsum(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, ws: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return torch.einsum('bhiwjc,ij->bhwc', x, weight.view(ws, ws)) + bias


@torch.jit.unused
def _pool_strided_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, ws: int) -> torch.Tensor:
    """The same weighted sums as a depth-wise conv of stride ws (one kernel shared by all channels)
    on the map viewed as channels-last NCHW."""
    C = x.shape[-1]
    kernel = weight.view(1, 1, ws, ws).expand(C, 1, ws, ws)
    return F.conv2d(x.permute(0, 3, 1, 2), kernel, bias.expand(C), stride=ws, groups=C).permute(0, 2, 3, 1)


@torch.jit.unused
def _pool_routed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, ws: int) -> torch.Tensor:
    return routes.apply('window_pool', {
        'einsum': lambda x, weight, bias: _pool_einsum(x, weight, bias, ws),
        'strided_conv': lambda x, weight, bias: _pool_strided_conv(x, weight, bias, ws),
    }, x, weight, bias, ws=ws)


@register_notrace_function
def window_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, H/ws, W/ws, C): each window's tokens weighted by the (1, ws*ws) `weight`, summed,
    plus `bias`. On the CPU through the faster of two measured routes (an einsum, a strided depth-wise conv)."""
    if routes.plain_op(x):
        return _pool_einsum(x, weight, bias, ws)
    return _pool_routed(x, weight, bias, ws)
