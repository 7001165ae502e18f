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
import timm.layers
from torch.autograd.function import once_differentiable

from timm.models._features_fx import register_notrace_function

from ..core import device as devices
from . import _routes as routes
from ._attention import attention_with_bias
from ._conv_act import linear_gelu


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




@register_notrace_function
def merged_neighbourhood_bias(own: torch.Tensor, ring: Optional[torch.Tensor], merge_plan: torch.Tensor) -> torch.Tensor:
    """(heads, A, cells) bias of a window's queries to its neighbourhood cells (`_focal_tables.neighbourhood_cells`)
    from the official biases to its own tokens (heads, A, ws*ws) and to its ring entries (heads, A, R).

    A token the official code selects twice (two corners' rings overlap) is one cell whose bias is the
    log-sum-exp of the two: e^(s+b1) + e^(s+b2) = e^(s + log(e^b1 + e^b2)), the same softmax and output,
    and the gradients of b1 and b2 (the softmax of the two) are the official ones.
    """
    # the 'never selected' entry (cells only where ws < 2*expand): -1e4, a weight of exactly 0 in float32
    # (e^-10000 underflows), and representable in float16
    unselected = torch.full_like(own[:, :, :1], -1e4)
    entries = torch.cat([own, unselected] if ring is None else [own, ring, unselected], -1)
    if merge_plan.shape[1] == 1:
        return entries[:, :, merge_plan[:, 0]]
    merged = entries[:, :, merge_plan.view(-1)]
    return merged.view(own.shape[0], own.shape[1], merge_plan.shape[0], merge_plan.shape[1]).logsumexp(-1)


def _full_bias(bias: torch.Tensor, mask: Optional[torch.Tensor], heads: int, num_windows: int,
               dtype: torch.dtype) -> torch.Tensor:
    """(1, heads*nW, A, S) additive attention bias from a (heads, A, S) or (heads, nW, A, S) bias and an
    optional (nW, S) mask."""
    if bias.dim() == 3:
        bias = bias.unsqueeze(1)
    if mask is not None:
        bias = bias + mask[None, :, None, :]
    queries, keys = bias.shape[2], bias.shape[3]
    return bias.expand(heads, num_windows, queries, keys).to(dtype).reshape(1, heads * num_windows, queries, keys)


class _WindowAttention(torch.autograd.Function):
    """`focal_window_attention` for training, saving for backward only its inputs: the q/k/v projection
    of the tokens (the keys of every window are re-gathered in backward) and the bias, not the gathered
    keys and values (about 4.5x the projection's keys) nor the attention probabilities. Backward
    recomputes the probabilities (one matmul and a softmax) and sums the gradients of the keys and
    values into the projection's slots (`_gather_qkv_grad`). Plain torch ops: any device.

    The matmuls run in the projection's dtype, the bias cast to it (`_full_bias`), the backward's softmax in
    `softmax_dtype` (None: the same); under autocast, `_window_attention_function` chooses both as autocast
    would and runs this without autocast."""

    @staticmethod
    def forward(ctx, qkv, index, bias, mask, height, width, ws, scale, softmax_dtype):
        q, k, v = _gather_qkv_plain(qkv, index, height, width, ws)
        heads = qkv.shape[3]
        out = attention_with_bias(q, k, v, _full_bias(bias, mask, heads, q.shape[1] // heads, q.dtype), 0., scale)
        ctx.save_for_backward(qkv, index, bias, mask)
        ctx.args = (height, width, ws, scale, softmax_dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        qkv, index, bias, mask = ctx.saved_tensors
        height, width, ws, scale, softmax_dtype = ctx.args
        q, k, v = _gather_qkv_plain(qkv, index, height, width, ws)
        B, heads = qkv.shape[0], qkv.shape[3]
        num_windows = q.shape[1] // heads
        q = q * scale
        probs = torch.matmul(q, k.transpose(-2, -1)).add_(_full_bias(bias, mask, heads, num_windows, q.dtype))
        probs = probs.softmax(-1, dtype=softmax_dtype)
        # (the casts: no-ops unless the softmax runs in float32 under autocast)
        grad_v = torch.matmul(probs.to(q.dtype).transpose(-2, -1), grad_out)
        grad_probs = torch.matmul(grad_out, v.transpose(-2, -1)).to(probs.dtype)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        del probs, grad_probs
        grad_scores_q = grad_scores.to(q.dtype)
        grad_q = torch.matmul(grad_scores_q, k).mul_(scale)
        grad_k = torch.matmul(grad_scores_q.transpose(-2, -1), q)
        del grad_scores_q
        grad_bias = None
        if ctx.needs_input_grad[2]:
            per_window = grad_scores.view(B, heads, num_windows, *grad_scores.shape[2:]).sum(0)
            grad_bias = (per_window.sum(1) if bias.dim() == 3 else per_window).to(bias.dtype)
        del grad_scores
        args = (qkv.shape, grad_q, grad_k, grad_v, index, height, width, ws)
        if routes.plain_op(qkv):
            grad = _gather_qkv_grad(*args, through_buffer=True)
        else:
            grad = routes.run('gather_kv_grad', routes.key_of(grad_q, grad_k, index, shape=tuple(qkv.shape)), {
                'buffer': lambda: _gather_qkv_grad(*args, through_buffer=True),
                'in_place': lambda: _gather_qkv_grad(*args, through_buffer=False),
            }, grad_q.device)
        return grad, None, grad_bias, None, None, None, None, None, None


@torch.jit.unused
def _window_attention_function(qkv: torch.Tensor, index: torch.Tensor, bias: torch.Tensor, mask: Optional[torch.Tensor],
                               height: int, width: int, ws: int, scale: float) -> torch.Tensor:
    device_type = qkv.device.type
    dtype = devices.autocast_dtype(device_type)
    if dtype is None:
        return _WindowAttention.apply(qkv, index, bias, mask, height, width, ws, scale, None)
    # Under autocast, q, k and v in the dtype autocast gives the attention's matmuls (the plain path's scaled_dot_
    # product_attention is on every lower-precision list), the bias cast to it in the Function as on the plain
    # path, and the backward's softmax in the dtype autocast gives a softmax on this device; the cast outside the
    # Function, which runs without autocast: its forward and backward see the dtypes chosen here.
    softmax_dtype = devices.autocast_op_dtype(device_type, dtype, 'softmax', dtype)
    with torch.autocast(device_type, enabled=False):
        return _WindowAttention.apply(qkv.to(dtype), index, bias, mask, height, width, ws, scale, softmax_dtype)


@torch.jit.unused
def _saving_inputs(qkv: torch.Tensor, bias: torch.Tensor, dropout_p: float) -> bool:
    """Whether `_WindowAttention` serves: eager training (autocast or not) without attention dropout, off the NPU
    (whose fused kernel saves only its own statistics, and with autograd's backward)."""
    if routes.capturing_graph() or dropout_p > 0 or not torch.is_grad_enabled():
        return False
    return (qkv.requires_grad or bias.requires_grad) and devices.fused_attention_op(qkv.device) is None


@register_notrace_function
def focal_window_attention(qkv: torch.Tensor, index: torch.Tensor, bias: torch.Tensor, mask: Optional[torch.Tensor],
                           height: int, width: int, ws: int, scale: float, dropout_p: float) -> torch.Tensor:
    """softmax(scale * q k^T + bias + mask) v of every window (B, heads*nW, ws*ws, head_dim): its queries from
    the first height*width tokens of the (B, N, 3, heads, head_dim) projection, its keys and values the
    tokens the (nW, S) `index` names, a (heads, ws*ws, S) or (heads, nW, ws*ws, S) bias and an optional
    (nW, S) mask. While training (no attention dropout, not on the NPU) through `_WindowAttention`,
    which saves the projection instead of the gathered keys and values."""
    if not torch.jit.is_scripting() and _saving_inputs(qkv, bias, dropout_p):
        return _window_attention_function(qkv, index, bias, mask, height, width, ws, scale)
    q, k, v = gather_qkv(qkv, index, height, width, ws)
    heads = qkv.shape[3]
    return attention_with_bias(q, k, v, _full_bias(bias, mask, heads, q.shape[1] // heads, q.dtype), dropout_p, scale)


class _GeluLinear(torch.autograd.Function):
    """F.linear(F.gelu(h), weight, bias) saving h, not gelu(h): backward recomputes the GELU (one
    element-wise pass) where autograd would keep both the GELU's input and its output. The GELU runs in h's
    dtype, the linear in the weight's (under autocast, `_gelu_linear_function` casts them as autocast would)."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return routed_linear(F.gelu(h).to(weight.dtype), weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        h, weight = ctx.saved_tensors
        grad_y = grad_y.reshape(-1, grad_y.shape[-1])
        grad_weight = grad_bias = grad_h = None
        if ctx.needs_input_grad[1]:
            grad_weight = grad_y.t().mm(F.gelu(h).to(weight.dtype).reshape(-1, h.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(0)
        if ctx.needs_input_grad[0]:
            grad_h = torch.ops.aten.gelu_backward(grad_y.mm(weight).view(h.shape).to(h.dtype), h)
        return grad_h, grad_weight, grad_bias


@torch.jit.unused
def _gelu_linear_function(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    device_type = h.device.type
    dtype = devices.autocast_dtype(device_type)
    if dtype is None:
        return _GeluLinear.apply(h, weight, bias)
    # Under autocast, cast as autocast casts the plain path's ops: the linear's weight and bias to its dtype
    # (autocast casts the GELU's output in the linear too), h to the dtype the GELU runs in there (h's own: the
    # GELU is on no autocast list of CPU or CUDA); outside the Function, which runs without autocast.
    gelu_dtype = devices.autocast_op_dtype(device_type, dtype, 'gelu', h.dtype)
    with torch.autocast(device_type, enabled=False):
        return _GeluLinear.apply(h.to(gelu_dtype), weight.to(dtype), None if bias is None else bias.to(dtype))


@register_notrace_function
def gelu_linear(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """F.linear(F.gelu(h), weight, bias); in eager training (autocast or not) through `_GeluLinear`, which
    saves h only."""
    if torch.jit.is_scripting() or routes.capturing_graph() or not torch.is_grad_enabled():
        return routed_linear(F.gelu(h), weight, bias)
    return _gelu_linear_function(h, weight, bias)


class Mlp(timm.layers.Mlp):
    """timm's Mlp (same parameters and keys) with `RoutedLinear` layers; in inference fc1 and the GELU as
    `linear_gelu`, and in training (exact GELU, no dropout between) GELU and fc2 as `gelu_linear`, which saves
    fc1's output only (not also the GELU's)."""

    def __init__(self, in_features: int, hidden_features: int, act_layer=nn.GELU, drop: float = 0.):
        super().__init__(in_features, hidden_features, act_layer=act_layer, drop=drop)
        self.fc1 = RoutedLinear(in_features, hidden_features)
        self.fc2 = RoutedLinear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if not torch.is_grad_enabled():  # inference: fc1 and its GELU in one pass where faster (_conv_act)
                return self.drop2(self.fc2(self.drop1(linear_gelu(self.fc1, self.act, x))))
        x = self.fc1(x)
        exact_gelu = isinstance(self.act, nn.GELU) and self.act.approximate == 'none'
        if not exact_gelu or (self.training and self.drop1.p > 0):
            return self.drop2(self.fc2(self.drop1(self.act(x))))
        return self.drop2(gelu_linear(x, self.fc2.weight, self.fc2.bias))
