"""Focal Transformer's index tables: which tokens each window attends to, as a function of the input
size only (not of the weights), and where each query-key pair reads its relative-position bias, as a
function of the window sizes; computed once per size and device and cached. None is a module buffer, so a
model built on the meta device (transformers, `timm.create_model(..., device='meta')`) has nothing to
recompute after `to_empty()`.

The tables are built as ordinary CPU tensors outside every tracer and dispatch mode (`_real_tensors`),
so that the cache serves eager runs, `torch.device('meta')` construction, inference mode, torch.export,
ONNX export, torch.compile (tables as constants) and torch.jit.trace alike.
"""
import contextlib
import math
from functools import lru_cache
from typing import Tuple

import torch
from torch.utils._python_dispatch import _disable_current_modes

from timm.models._features_fx import register_notrace_function

# The official code masks unusable pooled keys with -100, not -inf; kept for identical logits.
MASK_VALUE = -100.0


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


def relative_position_index(q_size: int, k_size: int) -> torch.Tensor:
    """(q_size**2, k_size**2) index into a ((q_size + k_size - 1)**2) relative-position table."""
    q = torch.stack(torch.meshgrid(torch.arange(q_size), torch.arange(q_size), indexing='ij')).flatten(1)
    k = torch.stack(torch.meshgrid(torch.arange(k_size), torch.arange(k_size), indexing='ij')).flatten(1)
    rel = q[:, :, None] - k[:, None, :] + (k_size - 1)
    return rel[0] * (q_size + k_size - 1) + rel[1]


@lru_cache(maxsize=None)
def neighbourhood_cells(ws: int, expand: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where the official keys of a window lie in its (ws + 2*expand)^2 neighbourhood (flat cell indices;
    the neighbourhood wraps round the map's borders as the official rolls do): its own ws*ws tokens, then
    the ring tokens in the official order, four corner selections of `_rolled_neighbour_index`, where
    some cells appear twice (ws=7, expand=3: 132 ring entries on 120 cells). Independent of the input size."""
    n = ws + 2 * expand
    a, b = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing='ij')
    own = ((a + expand) * n + b + expand).flatten()
    if expand == 0:
        return own, own[:0]
    ring = []
    for dy, dx in ((-expand, -expand), (-expand, expand), (expand, -expand), (expand, expand)):
        keep = torch.ones(ws, ws, dtype=torch.bool)
        keep[slice(None, -expand) if dy < 0 else slice(expand, None),
             slice(None, -expand) if dx < 0 else slice(expand, None)] = False
        ring.append(((a - dy + expand) * n + b - dx + expand)[keep])  # the token rolled to (a, b)
    return own, torch.cat(ring)


def _static_for_dynamo(*tables: torch.Tensor):
    """The tables, each marked static for torch.compile, as `torch._dynamo.mark_static` marks a tensor outside a
    compile (inside one, where dynamo calls the functions below, mark_static would specialise a traced size).

    Dynamo registers the result of an `assume_constant_result` function under the function's name, so all the
    tables one function returns (one per stage and input size) reach it under one name, and its automatic
    dynamic shapes go by name: the second table of another shape, in the same graph or in the next model
    compiled in the process, got symbolic sizes. A constant has no guards, so reading such a size broke the
    graph, and resuming after the break loaded the constant by that name, which is the function (`'function'
    object has no attribute 'shape'`). Marked static, each table is the constant it is."""
    for table in tables:
        table._dynamo_static_indices = set(range(table.dim()))
    return tables if len(tables) > 1 else tables[0]


@lru_cache(maxsize=None)
def _neighbourhood_merge_plan(ws: int, expand: int, device: str) -> torch.Tensor:
    """(cells, m): the entries of [own window, ring, one 'never selected' entry] that each neighbourhood
    cell stands for, padded with the last entry (m: the most entries of one cell; 2 for ws=7, expand=3)."""
    own, ring = neighbourhood_cells(ws, expand)
    cells = torch.cat([own, ring]).tolist()
    entries = [[] for _ in range((ws + 2 * expand) ** 2)]
    for entry, cell in enumerate(cells):
        entries[cell].append(entry)
    m = max(len(e) for e in entries)
    return _static_for_dynamo(torch.tensor([e + [len(cells)] * (m - len(e)) for e in entries]).to(device))


@lru_cache(maxsize=64)
def _bias_index(ws: int, focal_window: int, device: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return _static_for_dynamo(relative_position_index(ws, ws).view(-1).to(device),
                              relative_position_index(ws, focal_window).view(-1).to(device))


@lru_cache(maxsize=64)
def _focal_v1_tables(height: int, width: int, ws: int, expand: int, focal_window: int,
                     device: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Key index (num_windows, L) into [fine tokens, pooled tokens, one zero-padding token] and the
    additive mask (num_windows, L) of the padded pooled positions, for a padded (height, width) map:
    each window's (ws + 2*expand)^2 neighbourhood of fine tokens (wrapping round the borders, see
    `neighbourhood_cells`), then its focal_window^2 pooled windows."""
    nwh, nww = height // ws, width // ws
    fine_tokens, pooled_tokens = height * width, nwh * nww
    n = ws + 2 * expand
    rows = (torch.arange(nwh)[:, None] * ws + torch.arange(n) - expand) % height
    cols = (torch.arange(nww)[:, None] * ws + torch.arange(n) - expand) % width
    neighbourhood = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(nwh * nww, n * n)
    # focal_window x focal_window pooled windows centred on each window, zero-padded at the borders
    r = focal_window // 2
    wy, wx = torch.meshgrid(torch.arange(nwh), torch.arange(nww), indexing='ij')
    oy, ox = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing='ij')
    py, px = wy.reshape(-1, 1) + oy.reshape(1, -1), wx.reshape(-1, 1) + ox.reshape(1, -1)
    valid = (py >= 0) & (py < nwh) & (px >= 0) & (px < nww)
    pooled = torch.where(valid, fine_tokens + py * nww + px, fine_tokens + pooled_tokens)
    index = torch.cat([neighbourhood, pooled], 1)
    mask = torch.zeros(index.shape)
    mask[:, -pooled.shape[1]:] = torch.where(valid, 0.0, MASK_VALUE)
    return _static_for_dynamo(index.to(device), mask.to(device))


def _focal_v2_topk(height: int, width: int, ws: int, topk: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Focal-fast's choice of keys: the top-K nearest fine tokens (num_windows, K0) and the top-K nearest
    pooled windows (num_windows, K1) of each window centre, as the official code chooses them."""
    nwh, nww = math.ceil(height / ws), math.ceil(width / ws)
    wy, wx = torch.meshgrid(torch.arange(nwh), torch.arange(nww), indexing='ij')
    centres = torch.stack([wy.flatten(), wx.flatten()])
    indices = []
    for kh, kw, scale in ((height, width, ws), (nwh, nww, 1)):
        q = centres * scale + scale // 2 if scale > 1 else centres
        ky, kx = torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing='ij')
        keys = torch.stack([ky.flatten(), kx.flatten()])
        k = min(topk, keys.shape[1])
        # As the official code: torch.topk of the negated distances, row by row (in chunks, so
        # that detection-sized maps do not need a windows x tokens matrix at once).
        indices.append(torch.cat([
            torch.topk(-torch.sqrt(((q_chunk[:, :, None] - keys[:, None, :]).float() ** 2).sum(0)), k, dim=1)[1]
            for q_chunk in q.split(256, dim=1)]))
    return indices[0], indices[1]


def focal_v2_tables_from_index(height: int, width: int, ws: int, index0: torch.Tensor,
                               index1: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The tables of `focal_v2_tables` for a given choice of keys: `index0` (num_windows, K0) into the
    height x width tokens, `index1` (num_windows, K1) into the pooled windows (CPU tensors)."""
    nwh, nww = math.ceil(height / ws), math.ceil(width / ws)
    wy, wx = torch.meshgrid(torch.arange(nwh), torch.arange(nww), indexing='ij')
    centres = torch.stack([wy.flatten(), wx.flatten()])
    offsets = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing='ij'), -1).view(-1, 2) - ws // 2
    indices, coords = [], []
    for level, (index, (kh, kw, scale)) in enumerate(zip((index0, index1), ((height, width, ws), (nwh, nww, 1)))):
        q = centres * scale + scale // 2 if scale > 1 else centres
        ky, kx = torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing='ij')
        keys = torch.stack([ky.flatten(), kx.flatten()])
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
        coords += [unique.float(), inverse]
    return (torch.cat(indices, 1), *coords)


@lru_cache(maxsize=64)
def _focal_v2_tables(height: int, width: int, ws: int, topk: int, device: str) -> Tuple[torch.Tensor, ...]:
    """Focal-fast: the top-K nearest fine tokens and top-K nearest pooled windows of each window
    centre, as a key index (num_windows, K0 + K1) into [fine tokens, pooled tokens], then for each
    of the two levels the query-key coordinate differences of every query in the window,
    deduplicated: unique coordinates (U, 2) and the inverse index (num_windows, ws*ws, K)."""
    tables = focal_v2_tables_from_index(height, width, ws, *_focal_v2_topk(height, width, ws, topk))
    return _static_for_dynamo(*(t.to(device) for t in tables))


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


@register_notrace_function
@torch.jit.ignore
@torch.compiler.assume_constant_result  # torch.compile: no graph break, tables as constants
def focal_v1_bias_index(ws: int, focal_window: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of a window's query-key pairs into Focal v1's relative-position tables: (ws*ws)**2 into
    the window's own ((2*ws - 1)**2) table, ws*ws * focal_window**2 into the pooled windows' one."""
    with _real_tensors():
        return _bias_index(ws, focal_window, str(device))


@register_notrace_function
@torch.jit.ignore
@torch.compiler.assume_constant_result  # torch.compile: no graph break, tables as constants
def neighbourhood_merge_plan(ws: int, expand: int, device: torch.device) -> torch.Tensor:
    with _real_tensors():
        return _neighbourhood_merge_plan(ws, expand, str(device))
