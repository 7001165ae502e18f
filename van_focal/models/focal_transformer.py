""" Focal Transformer (v1, v1 with convolutional embedding, Focal-fast v2)

Paper: `Focal Self-attention for Local-Global Interactions in Vision Transformers`
    - https://arxiv.org/abs/2107.00641
Official code and weights: https://github.com/microsoft/Focal-Transformer

Same function as the official code (its checkpoints give its logits), computed differently:
the official code builds each window's keys by rolling, unfolding and concatenating copies of
the key/value maps, and fixes them to one input size at build time. Here every window's keys are
one gather from a table of tokens, with an index computed once per input size and cached; the
relative-position biases and masks are one additive mask (`_attention`: SDPA or explicit matmuls,
whichever is measured faster on the CPU).
The input size only has to be known at run time; the structure (window size per stage, which
stages expand their windows) follows the official rules for `img_size` (default 224).

Official checkpoint keys map as `layers.i.downsample -> stages.(i+1).downsample`, `layers.i -> stages.i`,
`head -> head.fc`; the index buffers the official code stores are dropped and recomputed.
"""
import contextlib
import logging
import math
import re
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _disable_current_modes

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, calculate_drop_path_rates
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._features_fx import register_notrace_function

from .. import routes
from ._attention import attention_with_bias
from ._helpers import build_model, remap_keys_on_load, unwrap_state_dict
from .focal_resize import fit_to_windows

__all__ = ['FocalTransformer']

_logger = logging.getLogger(__name__)

# The official code masks unusable pooled keys with -100, not -inf; kept for identical logits.
MASK_VALUE = -100.0


# ---------------------------------------------------------------------------------------------
# Index tables, a function of the input size only: computed once per size and device, cached.
# ---------------------------------------------------------------------------------------------

def _window_partition_index(height: int, width: int, ws: int) -> torch.Tensor:
    """(num_windows, ws*ws) flat indices of the tokens of each window of a (height, width) map."""
    grid = torch.arange(height * width).view(height // ws, ws, width // ws, ws)
    return grid.permute(0, 2, 1, 3).reshape(-1, ws * ws)


def _rolled_neighbour_index(height: int, width: int, ws: int, expand: int) -> torch.Tensor:
    """(num_windows, n) indices of the surrounding tokens of each window, as the official code
    selects them: four maps rolled by +-expand (wrapping round the borders), keeping the tokens
    that fall outside the window, in the official order (duplicates included)."""
    grid = torch.arange(height * width).view(height, width)
    corner_masks = []
    for dy, dx in ((-expand, -expand), (-expand, expand), (expand, -expand), (expand, expand)):
        rolled = torch.roll(grid, shifts=(dy, dx), dims=(0, 1))
        windows = rolled.view(height // ws, ws, width // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws, ws)
        keep = torch.ones(ws, ws, dtype=torch.bool)
        keep[slice(None, -expand) if dy < 0 else slice(expand, None),
             slice(None, -expand) if dx < 0 else slice(expand, None)] = False
        corner_masks.append(windows[:, keep])
    return torch.cat(corner_masks, 1)


def _relative_position_index(q_size: int, k_size: int) -> torch.Tensor:
    """(q_size**2, k_size**2) index into a ((q_size + k_size - 1)**2) relative-position table."""
    q = torch.stack(torch.meshgrid(torch.arange(q_size), torch.arange(q_size), indexing='ij')).flatten(1)
    k = torch.stack(torch.meshgrid(torch.arange(k_size), torch.arange(k_size), indexing='ij')).flatten(1)
    rel = q[:, :, None] - k[:, None, :] + (k_size - 1)
    return rel[0] * (q_size + k_size - 1) + rel[1]


@lru_cache(maxsize=64)
def _focal_v1_tables(height: int, width: int, ws: int, expand: int, focal_window: int,
                     device: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Key index (num_windows, L) into [fine tokens, pooled tokens, one zero-padding token] and the
    additive mask (num_windows, L) of the padded pooled positions, for a padded (height, width) map."""
    nwh, nww = height // ws, width // ws
    fine_tokens, pooled_tokens = height * width, nwh * nww
    parts = [_window_partition_index(height, width, ws)]
    if expand > 0:
        parts.append(_rolled_neighbour_index(height, width, ws, expand))
    # focal_window x focal_window pooled windows centred on each window, zero-padded at the borders
    r = focal_window // 2
    wy, wx = torch.meshgrid(torch.arange(nwh), torch.arange(nww), indexing='ij')
    oy, ox = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing='ij')
    py, px = wy.reshape(-1, 1) + oy.reshape(1, -1), wx.reshape(-1, 1) + ox.reshape(1, -1)
    valid = (py >= 0) & (py < nwh) & (px >= 0) & (px < nww)
    pooled = torch.where(valid, fine_tokens + py * nww + px, fine_tokens + pooled_tokens)
    parts.append(pooled)
    index = torch.cat(parts, 1)
    mask = torch.zeros(index.shape)
    mask[:, -pooled.shape[1]:] = torch.where(valid, 0.0, MASK_VALUE)
    return index.to(device), mask.to(device)


@lru_cache(maxsize=64)
def _focal_v2_tables(height: int, width: int, ws: int, topk: int, device: str) -> Tuple[torch.Tensor, ...]:
    """Focal-fast: the top-K nearest fine tokens and top-K nearest pooled windows of each window
    centre, as a key index (num_windows, K0 + K1) into [fine tokens, pooled tokens], then for each
    of the two levels the query-key coordinate differences of every query in the window,
    deduplicated: unique coordinates (U, 2) and the inverse index (num_windows, ws*ws, K)."""
    nwh, nww = math.ceil(height / ws), math.ceil(width / ws)
    wy, wx = torch.meshgrid(torch.arange(nwh), torch.arange(nww), indexing='ij')
    centres = torch.stack([wy.flatten(), wx.flatten()])
    offsets = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing='ij'), -1).view(-1, 2) - ws // 2
    indices, coords = [], []
    for level, (kh, kw, scale) in enumerate(((height, width, ws), (nwh, nww, 1))):
        q = centres * scale + scale // 2 if scale > 1 else centres
        ky, kx = torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing='ij')
        keys = torch.stack([ky.flatten(), kx.flatten()])
        k = min(topk, keys.shape[1])
        # As the official code: torch.topk of the negated distances, row by row (in chunks, so
        # that detection-sized maps do not need a windows x tokens matrix at once).
        index = torch.cat([
            torch.topk(-torch.sqrt(((q_chunk[:, :, None] - keys[:, None, :]).float() ** 2).sum(0)), k, dim=1)[1]
            for q_chunk in q.split(256, dim=1)])
        rel = (q.t()[:, None, :] - keys.t()[index])  # nW, K, 2
        if level > 0:
            rel = rel * ws
        rel_window = rel.unsqueeze(1) + offsets[None, :, None, :]  # nW, ws*ws, K, 2
        # distinct coordinates, found through a 1-d key (torch.unique over rows is slow)
        low = rel_window.amin((0, 1, 2))
        span = int((rel_window.amax() - low.min()).item()) + 1
        flat = (rel_window[..., 0] - low[0]) * span + (rel_window[..., 1] - low[1])
        unique, inverse = torch.unique(flat, return_inverse=True)
        unique = torch.stack([unique // span + low[0], unique % span + low[1]], 1)
        indices.append(index + (height * width if level > 0 else 0))
        coords += [unique.float().to(device), inverse.to(device)]
    return (torch.cat(indices, 1).to(device), *coords)


@contextlib.contextmanager
def _real_tensors():
    """Build tables as ordinary CPU tensors: also inside a `torch.device('meta')` block, inside
    `torch.inference_mode()` (the cache outlives the block, and training saves them for backward),
    and untraced while torch.export / torch.onnx / torch.compile run the model on fake tensors or
    torch.jit.trace records it (the cache outlives the trace; traced graphs take the tables as constants)."""
    jit_tracing_state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        with _disable_current_modes(), torch.device('cpu'), torch.inference_mode(False):
            yield
    finally:
        torch._C._set_tracing_state(jit_tracing_state)


@register_notrace_function
@torch.jit.ignore
@torch.compiler.assume_constant_result  # torch.compile: no graph break, tables as constants
def focal_v1_tables(height: int, width: int, ws: int, expand: int, focal_window: int,
                    device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    with _real_tensors():
        return _focal_v1_tables(height, width, ws, expand, focal_window, str(device))


@register_notrace_function
@torch.jit.ignore
@torch.compiler.assume_constant_result  # torch.compile: no graph break, tables as constants
def focal_v2_tables(height: int, width: int, ws: int, topk: int,
                    device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    with _real_tensors():
        return _focal_v2_tables(height, width, ws, topk, str(device))


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

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


def _windows_to_map(x: torch.Tensor, nwh: int, nww: int, ws: int) -> torch.Tensor:
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
    if (torch.jit.is_scripting() or not (torch.is_grad_enabled() and qkv.requires_grad) or qkv.device.type != 'cpu'
            or routes.capturing_graph()):
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
    if torch.jit.is_scripting() or x.device.type != 'cpu' or routes.capturing_graph():
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
    if torch.jit.is_scripting() or x.device.type != 'cpu' or routes.capturing_graph():
        return _pool_einsum(x, weight, bias, ws)
    return _pool_routed(x, weight, bias, ws)


class FocalAttention(nn.Module):
    """Focal self-attention (v1): each ws x ws window attends to its own tokens, the tokens in
    an `expand`-wide ring round it, and a focal_window x focal_window neighbourhood of pooled windows."""

    def __init__(self, dim: int, num_heads: int, ws: int, expand: int, focal_window: int,
                 qkv_bias: bool = True, attn_drop: float = 0., proj_drop: float = 0.):
        super().__init__()
        self.num_heads = num_heads
        self.ws = ws
        self.expand = expand
        self.focal_window = focal_window
        self.scale = (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.pool = WindowPool(ws)
        self.qkv = RoutedLinear(dim, dim * 3, bias=qkv_bias)
        self.proj = RoutedLinear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        self.register_buffer('window_bias_index', _relative_position_index(ws, ws), persistent=False)
        if expand > 0:
            ring = 4 * ws * ws - 4 * (ws - expand) ** 2
            self.relative_position_bias_table_to_neighbors = nn.Parameter(torch.zeros(1, num_heads, ws * ws, ring))
            nn.init.trunc_normal_(self.relative_position_bias_table_to_neighbors, std=.02)
        else:
            self.relative_position_bias_table_to_neighbors = None
        self.relative_position_bias_table_to_windows = nn.ParameterList([
            nn.Parameter(torch.zeros(num_heads, (ws + focal_window - 1) ** 2))])
        nn.init.trunc_normal_(self.relative_position_bias_table_to_windows[0], std=.02)
        self.register_buffer('pooled_bias_index', _relative_position_index(ws, focal_window), persistent=False)

    def _position_bias(self) -> torch.Tensor:
        """(heads, ws*ws, L) relative-position bias of a window's queries to its keys."""
        area = self.ws * self.ws
        parts = [self.relative_position_bias_table[self.window_bias_index.view(-1)].view(area, area, -1).permute(2, 0, 1)]
        if self.relative_position_bias_table_to_neighbors is not None:
            parts.append(self.relative_position_bias_table_to_neighbors[0])
        for table in self.relative_position_bias_table_to_windows:
            parts.append(table[:, self.pooled_bias_index.view(-1)].view(self.num_heads, area, -1))
        return torch.cat(parts, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape  # already padded to multiples of ws
        ws, heads = self.ws, self.num_heads
        nwh, nww = H // ws, W // ws
        pooled = self.pool(x)
        # Keys and values of all tokens, pooled windows and one zero-padding token come from one
        # qkv projection. The official code pads with zero keys/values where this has the qkv bias;
        # both carry the -100 mask, so their attention weight (~e^-100) is nil either way.
        tokens = torch.cat([x.reshape(B, H * W, C), pooled.reshape(B, nwh * nww, C), x.new_zeros(B, 1, C)], 1)
        qkv = self.qkv(tokens).view(B, -1, 3, heads, C // heads)
        index, pad_mask = focal_v1_tables(H, W, ws, self.expand, self.focal_window, x.device)
        q, k, v = gather_qkv(qkv, index, H, W, ws)
        bias = self._position_bias().unsqueeze(1) + pad_mask[None, :, None, :]  # (heads, nW, L, S)

        out = window_attention(q, k, v, bias, self.attn_drop if self.training else 0., self.scale)
        return self.proj_drop(self.proj(_windows_to_map(out, nwh, nww, ws)))


class FocalFastAttention(nn.Module):
    """Focal-fast (v2): each window attends to the top-K tokens and top-K pooled windows nearest
    its centre, with a relative-position bias predicted from coordinates by a small MLP per level."""

    def __init__(self, dim: int, num_heads: int, ws: int, topk: int,
                 qkv_bias: bool = True, attn_drop: float = 0., proj_drop: float = 0.):
        super().__init__()
        self.num_heads = num_heads
        self.ws = ws
        self.topk = topk
        self.scale = (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.pool = WindowPool(ws)
        self.qkv = RoutedLinear(dim, dim * 3, bias=qkv_bias)
        self.proj = RoutedLinear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        head_dim = dim // num_heads
        self.coord2rpb_all = nn.ModuleList([
            nn.Sequential(nn.Linear(2, head_dim), nn.ReLU(inplace=True), nn.Linear(head_dim, num_heads))
            for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape  # not padded: the keys are the real tokens nearest each window
        ws, heads = self.ws, self.num_heads
        nwh, nww = -(-H // ws), -(-W // ws)
        pooled = self.pool(pad_to_windows(x, ws, centred=True))  # the official v2 pads centred to pool
        tokens = torch.cat([x.reshape(B, H * W, C), pooled.reshape(B, nwh * nww, C)], 1)
        qkv = self.qkv(tokens).view(B, -1, 3, heads, C // heads)
        index, unique0, inverse0, unique1, inverse1 = focal_v2_tables(H, W, ws, self.topk, x.device)
        q, k, v = gather_qkv(qkv, index, H, W, ws)
        biases = []
        for mlp, (unique, inverse) in zip(self.coord2rpb_all, ((unique0, inverse0), (unique1, inverse1))):
            table = mlp(unique.to(x.dtype))  # (U, heads): the MLP runs once per distinct coordinate
            biases.append(table.t()[:, inverse])  # (heads, nW, ws*ws, K)
        bias = torch.cat(biases, -1)

        out = window_attention(q, k, v, bias, self.attn_drop if self.training else 0., self.scale)
        out = _windows_to_map(out, nwh, nww, ws)[:, :H, :W]
        return self.proj_drop(self.proj(out))


class FocalBlock(nn.Module):
    """Post-residual transformer block on a (B, H, W, C) map: x + attn(norm1(x)), x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, ws: int, expand: int, focal_window: int, fast: bool,
                 topk: int, mlp_ratio: float = 4., qkv_bias: bool = True, proj_drop: float = 0.,
                 attn_drop: float = 0., drop_path: float = 0.):
        super().__init__()
        self.ws = ws
        self.fast = fast
        self.norm1 = nn.LayerNorm(dim)
        if fast:
            self.attn = FocalFastAttention(dim, num_heads, ws, topk, qkv_bias, attn_drop, proj_drop)
        else:
            self.attn = FocalAttention(dim, num_heads, ws, expand, focal_window, qkv_bias, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        for name in ('fc1', 'fc2'):
            linear = getattr(self.mlp, name)
            setattr(self.mlp, name, RoutedLinear(linear.in_features, linear.out_features))

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return self.attn(x)
        H, W = x.shape[1:3]
        return self.attn(pad_to_windows(x, self.ws))[:, :H, :W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Strided conv (patchify, or overlapping with use_conv_embed) and LayerNorm; NCHW or NHWC in, NHWC out."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, use_conv: bool, is_stem: bool, norm: bool = True):
        super().__init__()
        self.is_stem = is_stem
        if use_conv:
            kernel, padding = (7, 2) if is_stem else (3, 1)
            self.proj = nn.Conv2d(in_chs, out_chs, kernel, stride=stride, padding=padding)
        else:
            self.proj = nn.Conv2d(in_chs, out_chs, stride, stride=stride)
        self.norm = nn.LayerNorm(out_chs) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_stem:
            x = x.permute(0, 3, 1, 2)
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class FocalStage(nn.Module):
    def __init__(self, dim: int, out_dim: int, depth: int, downsample: bool, use_conv_embed: bool, **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = PatchEmbed(dim, out_dim, 2, use_conv_embed, is_stem=False) if downsample else nn.Identity()
        drop_paths = block_kwargs.pop('drop_path')
        self.blocks = nn.Sequential(*[FocalBlock(out_dim, drop_path=drop_paths[i], **block_kwargs) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class FocalTransformer(nn.Module):
    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 96,
            depths: Tuple[int, ...] = (2, 2, 6, 2),
            num_heads: Tuple[int, ...] = (3, 6, 12, 24),
            window_size: int = 7,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            focal_levels: Tuple[int, ...] = (2, 2, 2, 2),
            focal_windows: Tuple[int, ...] = (7, 5, 3, 1),
            expand_sizes: Tuple[int, ...] = (3, 3, 3, 3),
            use_conv_embed: bool = False,
            fast: bool = False,
            focal_topk: int = 128,
    ):
        super().__init__()
        if any(level != 2 for level in focal_levels):
            raise ValueError(f'focal_levels={focal_levels}: only 2 levels (as every official model) are implemented.')
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.output_fmt = 'NHWC'
        num_stages = len(depths)
        dims = [embed_dim * 2 ** i for i in range(num_stages)]
        self.num_features = self.head_hidden_size = dims[-1]

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, use_conv_embed, is_stem=True)
        dpr = calculate_drop_path_rates(drop_path_rate, depths, stagewise=True)
        self.stages = nn.Sequential()
        self.feature_info = []
        for i in range(num_stages):
            # As the official code: a stage whose map (at img_size) fits in one window uses the
            # map's size as window and no expansion; this fixes the stage's parameter shapes.
            resolution = min(img_size) // patch_size // 2 ** i
            ws, expand = (resolution, 0) if resolution <= window_size else (window_size, expand_sizes[i])
            self.stages.append(FocalStage(
                dims[max(i - 1, 0)], dims[i], depths[i], downsample=i > 0, use_conv_embed=use_conv_embed,
                num_heads=num_heads[i], ws=ws, expand=expand, focal_window=focal_windows[i], fast=fast,
                topk=focal_topk, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, drop_path=dpr[i]))
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f'stages.{i}'))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt='NHWC')
        self.apply(_init_weights)
        remap_keys_on_load(self, checkpoint_filter_fn)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {n for n, _ in self.named_parameters() if 'relative_position_bias_table' in n}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^patch_embed',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns each stage's output map (NCHW)."""
        assert output_fmt in ('NCHW', 'NHWC'), 'Output format must be NCHW or NHWC.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.patch_embed(x)
        last_idx = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                x_inter = self.norm(x) if norm and feat_idx == last_idx else x
                intermediates.append(x_inter.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else x_inter)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True):
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.norm = nn.Identity()
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            prune_head = True
        if prune_head:
            self.head = ClassifierHead(self.num_features, 0, pool_type='avg', input_fmt='NHWC')
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.patch_embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


_OFFICIAL_BUFFERS = re.compile(
    r'\.(relative_position_index(_\d+)?|valid_ind_rolled|valid_ind_unfold_\d+|window_coords|'
    r'topk_cloest_indice_\d+|topk_cloest_coords_\d+|attn_mask)$')


def _official_key(key: str) -> str:
    key = re.sub(r'^layers\.(\d+)\.downsample\.', lambda m: f'stages.{int(m.group(1)) + 1}.downsample.', key)
    key = re.sub(r'^layers\.', 'stages.', key)
    key = re.sub(r'^head\.(weight|bias)$', r'head.fc.\1', key)
    return re.sub(r'\.pool_layers\.0\.', '.attn.pool.fc.', key)


def _warn_if_topk_differs(state_dict: Dict[str, Any], model: nn.Module) -> None:
    """The official Focal-fast stores its top-K token indices. At 224 every window's 128th and 129th
    nearest tokens are equally far, so which one is kept depends on torch.topk's tie-breaking,
    which may differ between torch versions. Say so when the recomputed choice differs."""
    differing = total = 0
    for key, stored in state_dict.items():
        found = re.match(r'^layers\.(\d+)\.blocks\.(\d+)\.attn\.topk_cloest_indice_0$', key)
        if not found or not hasattr(model, 'stages') or int(found.group(1)) >= len(model.stages):
            continue
        attn = model.stages[int(found.group(1))].blocks[int(found.group(2))].attn
        pool = state_dict.get(key.replace('attn.topk_cloest_indice_0', 'pool_layers.0.weight'))
        if not hasattr(attn, 'topk') or pool is None or pool.shape[-1] != attn.ws * attn.ws:
            continue  # another window size: the stored choice is not comparable
        side = math.isqrt(stored.shape[0]) * attn.ws
        ours = focal_v2_tables(side, side, attn.ws, attn.topk, torch.device('cpu'))[0][:, :stored.shape[1]]
        if ours.shape != stored.shape:
            continue
        same = (ours.sort(1).values == stored.long().sort(1).values).all(1)
        differing, total = differing + int((~same).sum()), total + same.numel()
    if differing:
        _logger.warning(f'Focal-fast: in {differing} of {total} windows the top-K key tokens recomputed here differ '
                        'from the ones stored in the checkpoint (torch.topk tie-breaking); logits may differ slightly '
                        'from the official code run with this checkpoint.')


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """Map an official checkpoint (or its `model` entry) to this layout, dropping the official
    index buffers (recomputed here), and fit relative-position tables to the model's window sizes
    (`focal_resize`); timm-layout dicts of the built size pass as they are. Keys `layers.N.` of
    this package's checkpoints from before the stage container was named `stages` are renamed."""
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith('layers.0.blocks.0.pool_layers') or k == 'head.weight' for k in state_dict):
        _warn_if_topk_differs(state_dict, model)
        state_dict = {_official_key(k): v for k, v in state_dict.items() if not _OFFICIAL_BUFFERS.search(k)}
    elif any(k.startswith('layers.') for k in state_dict):
        state_dict = {re.sub(r'^layers\.', 'stages.', k): v for k, v in state_dict.items()}
    return fit_to_windows(state_dict, model)


def _create_focal(variant: str, pretrained: bool = False, **kwargs) -> FocalTransformer:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model(
        FocalTransformer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs)


_WEIGHTS = 'https://projects4jw.blob.core.windows.net/model/focal-transformer/imagenet1k/'


def _cfg(filename: str, top1: float, **kwargs) -> Dict[str, Any]:
    return {
        'url': _WEIGHTS + filename,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head.fc',
        'license': 'mit', 'paper_ids': 'arXiv:2107.00641',
        'paper_name': 'Focal Self-attention for Local-Global Interactions in Vision Transformers',
        'origin_url': 'https://github.com/microsoft/Focal-Transformer',
        'notes': (f'ImageNet-1k top-1 {top1} (official)',),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'focal_tiny_patch4_window7_224.in1k': _cfg('focal-tiny-is224-ws7.pth', 82.2),
    'focal_small_patch4_window7_224.in1k': _cfg('focal-small-is224-ws7.pth', 83.6),
    'focal_base_patch4_window7_224.in1k': _cfg('focal-base-is224-ws7.pth', 84.0),
    'focal_tiny_useconv_patch4_window7_224.in1k': _cfg('focal-tiny-useconv-is224-ws7.pth', 82.7),
    'focal_small_useconv_patch4_window7_224.in1k': _cfg('focal-small-useconv-is224-ws7.pth', 83.8),
    'focal_base_useconv_patch4_window7_224.in1k': _cfg('focal-base-useconv-is224-ws7.pth', 84.2),
    'focalv2_tiny_useconv_patch4_window7_224.in1k': _cfg('focalv2-tiny-useconv-is224-ws7.pth', 82.4),
    'focalv2_small_useconv_patch4_window7_224.in1k': _cfg('focalv2-small-useconv-is224-ws7.pth', 83.6),
    'focalv2_base_useconv_patch4_window7_224.in1k': _cfg('focalv2-base-useconv-is224-ws7.pth', 84.0),
})

_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)
_BASE = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)
_CONV = dict(use_conv_embed=True)
_FAST = dict(use_conv_embed=True, fast=True)


def _build(variant: str, pretrained: bool, model_args: Dict[str, Any], kwargs: Dict[str, Any]) -> FocalTransformer:
    return _create_focal(variant, pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def focal_tiny_patch4_window7_224(pretrained: bool = False, **kwargs) -> FocalTransformer:
    return _build('focal_tiny_patch4_window7_224', pretrained, _TINY, kwargs)


@register_model
def focal_small_patch4_window7_224(pretrained: bool = False, **kwargs) -> FocalTransformer:
    return _build('focal_small_patch4_window7_224', pretrained, _SMALL, kwargs)


@register_model
def focal_base_patch4_window7_224(pretrained: bool = False, **kwargs) -> FocalTransformer:
    return _build('focal_base_patch4_window7_224', pretrained, _BASE, kwargs)


@register_model
def focal_tiny_useconv_patch4_window7_224(pretrained: bool = False, **kwargs) -> FocalTransformer:
    return _build('focal_tiny_useconv_patch4_window7_224', pretrained, dict(_TINY, **_CONV), kwargs)


@register_model
def focal_small_useconv_patch4_window7_224(pretrained: bool = False, **kwargs) -> FocalTransformer:
    return _build('focal_small_useconv_patch4_window7_224', pretrained, dict(_SMALL, **_CONV), kwargs)


@register_model
def focal_base_useconv_patch4_window7_224(pretrained: bool = False, **kwargs) -> FocalTransformer:
    return _build('focal_base_useconv_patch4_window7_224', pretrained, dict(_BASE, **_CONV), kwargs)


@register_model
def focalv2_tiny_useconv_patch4_window7_224(pretrained: bool = False, **kwargs) -> FocalTransformer:
    return _build('focalv2_tiny_useconv_patch4_window7_224', pretrained, dict(_TINY, **_FAST), kwargs)


@register_model
def focalv2_small_useconv_patch4_window7_224(pretrained: bool = False, **kwargs) -> FocalTransformer:
    return _build('focalv2_small_useconv_patch4_window7_224', pretrained, dict(_SMALL, **_FAST), kwargs)


@register_model
def focalv2_base_useconv_patch4_window7_224(pretrained: bool = False, **kwargs) -> FocalTransformer:
    return _build('focalv2_base_useconv_patch4_window7_224', pretrained, dict(_BASE, **_FAST), kwargs)
