"""Focal Transformer weights into a model built for another `img_size` or `window_size`.

The structure follows the official rules for the size the model is built with: a stage whose map
fits in one window uses the map's size as window and does not attend to the ring of tokens round
it. So, e.g., 224 weights loaded into a 384 model lack stage 4's neighbour tables, and a window of
12 instead of 7 changes the shape of every relative-position table and window-pooling weight.
`fit_to_windows` adapts a state dict to the model:

- relative-position tables (window to window, window to pooled windows) are resized bicubically
  (timm's `resize_rel_pos_bias_table_levit`, as Swin-style fine-tuning does);
- neighbour tables the checkpoint lacks, or holds for another window, start as the official code
  starts them (truncated normal, std 0.02); those the model has no use for are dropped;
- window-pooling weights (one per token of a window) are resized the same way, keeping their sum.

One log line says what was adapted. A state dict that fits the model passes unchanged.
"""
import logging
import re
from typing import Any, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resize_rel_pos_bias_table_levit

_logger = logging.getLogger(__name__)

_TABLE = re.compile(r'^stages\.(\d+)\.blocks\.\d+\.attn\.(relative_position_bias_table|'
                    r'relative_position_bias_table_to_windows\.\d+|relative_position_bias_table_to_neighbors|'
                    r'pool\.fc\.weight)$')


def _resize_square(table: torch.Tensor, length: int) -> torch.Tensor:
    """(heads, S*S) table of a square grid -> (heads, length) by bicubic interpolation."""
    return resize_rel_pos_bias_table_levit(table.t(), (length, table.shape[0])).t()


def _resize_pool_weight(weight: torch.Tensor, area: int) -> torch.Tensor:
    """(1, ws*ws) pooling weights -> (1, area), interpolated on the window grid, same total weight."""
    src, dst = round(weight.shape[1] ** 0.5), round(area ** 0.5)
    grid = F.interpolate(weight.float().view(1, 1, src, src), size=(dst, dst), mode='bicubic', align_corners=False)
    grid = grid * (weight.sum() / grid.sum()) if float(grid.sum()) != 0.0 else grid
    return grid.view(1, area).to(weight.dtype)


def _official_neighbour_init(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    return nn.init.trunc_normal_(torch.empty(shape, dtype=dtype), std=.02)


def _stages(keys: List[str]) -> str:
    found = sorted({int(_TABLE.match(k).group(1)) for k in keys})
    return f"stage{'s' if len(found) > 1 else ''} {', '.join(map(str, found))}"


def fit_to_windows(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """`state_dict` (in this package's layout) with its window-dependent tables fitted to `model`."""
    if not any(_TABLE.match(k) for k in state_dict):
        return state_dict
    own = model.state_dict()
    out, resized, pools, initialised, dropped = {}, [], [], [], []
    for key, value in state_dict.items():
        found = _TABLE.match(key)
        if found is None or (key in own and own[key].shape == value.shape):
            out[key] = value
        elif key not in own:
            if found.group(2).endswith('to_neighbors'):
                dropped.append(key)
            else:
                out[key] = value  # left for strict loading to report
        elif found.group(2).endswith('to_neighbors'):
            out[key] = _official_neighbour_init(own[key].shape, value.dtype)
            initialised.append(key)
        elif found.group(2) == 'pool.fc.weight':
            out[key] = _resize_pool_weight(value, own[key].shape[1])
            pools.append(key)
        elif found.group(2) == 'relative_position_bias_table':
            out[key] = resize_rel_pos_bias_table_levit(value, tuple(own[key].shape))
            resized.append(key)
        else:
            out[key] = _resize_square(value, own[key].shape[1])
            resized.append(key)
    for key, target in own.items():
        found = _TABLE.match(key)
        # only where the checkpoint holds that attention at all (partial state dicts stay partial)
        if found and key.endswith('to_neighbors') and key not in state_dict \
                and key.replace('_to_neighbors', '') in state_dict:
            out[key] = _official_neighbour_init(target.shape, target.dtype)
            initialised.append(key)
    if resized or pools or initialised or dropped:
        parts = []
        if resized:
            parts.append(f'{len(resized)} relative-position tables resized ({_stages(resized)})')
        if pools:
            parts.append(f'{len(pools)} window-pooling weights resized ({_stages(pools)})')
        if initialised:
            parts.append(f'{len(initialised)} neighbour tables initialised as the official code does, '
                         f'truncated normal std 0.02 ({_stages(initialised)})')
        if dropped:
            parts.append(f'{len(dropped)} neighbour tables this model does not use dropped ({_stages(dropped)})')
        _logger.info(f"Focal: checkpoint fitted to this model's window sizes: {'; '.join(parts)}.")
    return out
