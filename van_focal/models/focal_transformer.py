""" Focal Transformer (v1, v1 with convolutional embedding, Focal-fast v2)

Paper: `Focal Self-attention for Local-Global Interactions in Vision Transformers`
    - https://arxiv.org/abs/2107.00641
Official code and weights: https://github.com/microsoft/Focal-Transformer

Same function as the official code (its checkpoints give its logits), computed differently:
the official code builds each window's keys by rolling, unfolding and concatenating copies of
the key/value maps, and fixes them to one input size at build time. Here a v1 window attends to the
(ws + 2*expand)^2 tokens round it (its own window and the official ring, a ring token the official code
selects twice being one key whose bias is the log-sum-exp of its two) and its pooled windows, gathered
with an index computed once per input size and cached; the relative-position biases and masks are one
additive mask (`_attention`: SDPA or explicit matmuls, whichever is measured faster on the CPU). In
training the attention saves the q/k/v projection for backward, not every window's keys
(`_focal_ops.focal_window_attention`).
The input size only has to be known at run time; the structure (window size per stage, which
stages expand their windows) follows the official rules for `img_size` (default 224).

Official checkpoint keys map as `layers.i.downsample -> stages.(i+1).downsample`, `layers.i -> stages.i`,
`head -> head.fc`; the index buffers the official code stores are dropped and recomputed.
PaddleViT's `.pdparams` (read by `core.foreign_checkpoints`, which transposes Paddle's Linear weights) carry the
official names. The MindSpore port of Focal-fast (`finder4alex/Focal-Transformer-Ascend`, `.ckpt`) names stage 0
`0.blocks.j` / `0.downsample` and stages 1-3 `0.blocks.0.pool_layers.i.*` (how MindSpore names cells appended to a
list); its top-K key tables are kept and used as stored (`FocalFastAttention.store_key_tables`: the port broke
ties differently), and the model switches to the tanh-approximated GELU it was trained with.
"""
import logging
import math
import re
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, calculate_drop_path_rates, get_act_layer
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ._focal_ops import (Mlp, RoutedLinear, WindowPool, focal_window_attention, merged_neighbourhood_bias, pad_to_windows,
                         windows_to_map)
from ._focal_tables import (focal_v1_bias_index, focal_v1_tables, focal_v2_tables, focal_v2_tables_from_index,
                            neighbourhood_merge_plan)
from ._helpers import build_model, remap_keys_on_load, unwrap_state_dict, use_tanh_gelu
from .focal_resize import fit_to_windows

__all__ = ['FocalTransformer']

_logger = logging.getLogger(__name__)


class FocalAttention(nn.Module):
    """Focal self-attention (v1): each ws x ws window attends to its own tokens, the tokens in
    an `expand`-wide ring round it, and a focal_window x focal_window neighbourhood of pooled windows.

    Args:
        dim: channels of the (B, H, W, dim) map.
        num_heads: attention heads.
        ws: window size; the map must be padded to multiples of it.
        expand: width of the ring of fine tokens round each window (0: none).
        focal_window: side of the neighbourhood of pooled windows each window attends to.
        qkv_bias: a bias in the q/k/v projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
    """
    per_size_tables = True  # which keys a window sees is a table computed per input size (`_focal_tables`)

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
        if expand > 0:
            ring = 4 * ws * ws - 4 * (ws - expand) ** 2
            self.relative_position_bias_table_to_neighbors = nn.Parameter(torch.zeros(1, num_heads, ws * ws, ring))
            nn.init.trunc_normal_(self.relative_position_bias_table_to_neighbors, std=.02)
        else:
            self.relative_position_bias_table_to_neighbors = None
        self.relative_position_bias_table_to_windows = nn.ParameterList([
            nn.Parameter(torch.zeros(num_heads, (ws + focal_window - 1) ** 2))])
        nn.init.trunc_normal_(self.relative_position_bias_table_to_windows[0], std=.02)

    def _position_bias(self) -> torch.Tensor:
        """(heads, ws*ws, S) relative-position bias of a window's queries to its keys: the cells of its
        (ws + 2*expand)^2 neighbourhood (own window and ring, a token the official ring selects twice
        merged into one cell), then its focal_window^2 pooled windows."""
        area = self.ws * self.ws
        device = self.relative_position_bias_table.device
        window_index, pooled_index = focal_v1_bias_index(self.ws, self.focal_window, device)
        own = self.relative_position_bias_table[window_index].view(area, area, -1).permute(2, 0, 1)
        ring = None
        if self.relative_position_bias_table_to_neighbors is not None:
            ring = self.relative_position_bias_table_to_neighbors[0]
        parts = [merged_neighbourhood_bias(own, ring, neighbourhood_merge_plan(self.ws, self.expand, own.device))]
        for table in self.relative_position_bias_table_to_windows:
            parts.append(table[:, pooled_index].view(self.num_heads, area, -1))
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
        out = focal_window_attention(qkv, index, self._position_bias(), pad_mask, H, W, ws, self.scale,
                                     self.attn_drop if self.training else 0.)
        return self.proj_drop(self.proj(windows_to_map(out, nwh, nww, ws)))


class FocalFastAttention(nn.Module):
    """Focal-fast (v2): each window attends to the top-K tokens and top-K pooled windows nearest
    its centre, with a relative-position bias predicted from coordinates by a small MLP per level.

    Args:
        dim: channels of the (B, H, W, dim) map.
        num_heads: attention heads.
        ws: window size (the map need not be a multiple of it).
        topk: how many nearest fine tokens, and how many nearest pooled windows, each window attends to.
        qkv_bias: a bias in the q/k/v projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
    """
    per_size_tables = True  # the top-K keys of each window are a table computed per input size (`_focal_tables`)

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
        self.stored_key_size: Optional[Tuple[int, int]] = None  # see store_key_tables

    def store_key_tables(self, index0: torch.Tensor, index1: torch.Tensor) -> None:
        """Attend, at the input size they were made for, to the keys these tables name instead of computing
        the top-K choice: `index0` (num_windows, K0) into the tokens, `index1` (num_windows, K1) into the pooled
        windows, of a square map (as checkpoints store them). Which of equally near tokens make the top K is
        a matter of tie-breaking, and the MindSpore port's choice differs from torch.topk's in most windows;
        its weights give its logits only with its own tables. Kept as the buffers `stored_key_index_0/1`
        (saved with the weights); other input sizes compute their tables as usual."""
        windows = index0.shape[0]
        side = math.isqrt(windows) * self.ws
        if math.isqrt(windows) ** 2 != windows or index1.shape[0] != windows:
            raise ValueError(f'top-K tables of {windows} and {index1.shape[0]} windows: not those of a square map.')
        index0, index1 = index0.detach().long().cpu(), index1.detach().long().cpu()
        device = self.qkv.weight.device
        tables = focal_v2_tables_from_index(side, side, self.ws, index0, index1)
        for name, table in zip(('index', 'unique0', 'inverse0', 'unique1', 'inverse1'), tables):
            self.register_buffer(f'stored_{name}', table.to(device), persistent=False)
        self.register_buffer('stored_key_index_0', index0.to(device))
        self.register_buffer('stored_key_index_1', index1.to(device))
        self.stored_key_size = (side, side)

    @torch.jit.ignore
    def _key_tables(self, H: int, W: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor, torch.Tensor]:
        """The stored tables at the size they were made for (`store_key_tables`), else the computed ones."""
        if self.stored_key_size == (H, W):
            return self.stored_index, self.stored_unique0, self.stored_inverse0, self.stored_unique1, self.stored_inverse1
        return focal_v2_tables(H, W, self.ws, self.topk, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape  # not padded: the keys are the real tokens nearest each window
        ws, heads = self.ws, self.num_heads
        nwh, nww = -(-H // ws), -(-W // ws)
        pooled = self.pool(pad_to_windows(x, ws, centred=True))  # the official v2 pads centred to pool
        tokens = torch.cat([x.reshape(B, H * W, C), pooled.reshape(B, nwh * nww, C)], 1)
        qkv = self.qkv(tokens).view(B, -1, 3, heads, C // heads)
        index, unique0, inverse0, unique1, inverse1 = self._key_tables(H, W, x.device)
        biases = []
        for mlp, (unique, inverse) in zip(self.coord2rpb_all, ((unique0, inverse0), (unique1, inverse1))):
            table = mlp(unique.to(x.dtype))  # (U, heads): the MLP runs once per distinct coordinate
            biases.append(table.t()[:, inverse])  # (heads, nW, ws*ws, K)
        bias = torch.cat(biases, -1)

        out = focal_window_attention(qkv, index, bias, None, H, W, ws, self.scale, self.attn_drop if self.training else 0.)
        out = windows_to_map(out, nwh, nww, ws)[:, :H, :W]
        return self.proj_drop(self.proj(out))


class FocalBlock(nn.Module):
    """Pre-norm transformer block on a (B, H, W, C) map: x + attn(norm1(x)), then x + mlp(norm2(x)).

    Args:
        dim: channels.
        num_heads: attention heads.
        ws: window size.
        expand: ring width of v1's attention (unused by Focal-fast).
        focal_window: pooled neighbourhood of v1's attention (unused by Focal-fast).
        fast: Focal-fast (v2) attention instead of v1's.
        topk: Focal-fast's number of nearest keys per level.
        mlp_ratio: hidden width of the MLP over `dim`.
        qkv_bias: a bias in the q/k/v projection.
        proj_drop: dropout after the attention and MLP projections.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic depth rate of both residual branches.
        act_layer: the MLP's activation.
    """

    def __init__(self, dim: int, num_heads: int, ws: int, expand: int, focal_window: int, fast: bool,
                 topk: int, mlp_ratio: float = 4., qkv_bias: bool = True, proj_drop: float = 0.,
                 attn_drop: float = 0., drop_path: float = 0., act_layer: Callable[[], nn.Module] = nn.GELU):
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
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)

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
    """Focal Transformer: a patch embedding, then four stages of focal self-attention blocks on NHWC maps
    at strides 4, 8, 16 and 32, each stage after the first starting with a 2x downsampling embedding.

    Args:
        img_size: the input size the stages' window sizes are chosen for (as the official code: a stage
            whose map fits in one window uses the map as its window); other sizes run too.
        patch_size: stride of the stem.
        in_chans: input channels.
        num_classes: classes of the head (0: no head).
        global_pool: pooling before the head ('avg', 'max', '' ...; timm's ClassifierHead).
        embed_dim: channels of the first stage, doubled at each later stage.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: window size of the fine-grained attention.
        mlp_ratio: MLP hidden width over the channels.
        qkv_bias: a bias in the q/k/v projections.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after the attention and MLP projections.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth, rising linearly over the blocks.
        focal_levels: levels of focal attention per stage (2, as every official model).
        focal_windows: side of the pooled neighbourhood per stage (v1).
        expand_sizes: width of the fine ring round each window per stage (v1).
        use_conv_embed: overlapping conv patch embeddings (7x7 stem, 3x3 downsampling).
        fast: Focal-fast (v2) attention: top-K nearest tokens and pooled windows.
        focal_topk: Focal-fast's K.
        act_layer: the MLPs' activation, a class or timm name (default nn.GELU; 'gelu_tanh' for weights trained
            with MindSpore, which loading such a file also switches to).
    """

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
            act_layer: Union[str, Callable[[], nn.Module]] = nn.GELU,
    ):
        super().__init__()
        act_layer = get_act_layer(act_layer) if isinstance(act_layer, str) else act_layer
        if any(level != 2 for level in focal_levels):
            raise ValueError(f'focal_levels={focal_levels}: only 2 levels (as every official model) are implemented.')
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
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
                attn_drop=attn_drop_rate, drop_path=dpr[i], act_layer=act_layer))
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


# The MindSpore port: stages 1-3 nested under stage 0's first block, `0.blocks.0.pool_layers.{i}`.
_MINDSPORE_NESTED_STAGE = re.compile(r'^0\.blocks\.0\.pool_layers\.([1-9]\d*)\.(?=blocks\.|downsample\.)')
_MINDSPORE_TABLE = re.compile(r'^(stages\.\d+\.blocks\.\d+\.attn)\.topk_cloest_(indice|coords)_param_([01])$')
_STORED_KEYS = re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.attn\.stored_key_index_0$')


def _from_mindspore(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """The MindSpore port's Focal-fast weights under the official names, its top-K tables as this model's
    `stored_key_index_*` (the coordinate tables, which follow from them, and `window_coords` dropped)."""
    use_tanh_gelu(model, 'Focal-fast weights of the MindSpore port')
    official = {re.sub(r'^0\.', 'layers.0.', _MINDSPORE_NESTED_STAGE.sub(r'layers.\1.', k)): v
                for k, v in state_dict.items()}
    mapped = {}
    for key, value in official.items():
        if key.endswith('.window_coords'):
            continue
        key = _official_key(key)
        table = _MINDSPORE_TABLE.match(key)
        if table and table.group(2) == 'coords':
            continue
        mapped[f'{table.group(1)}.stored_key_index_{table.group(3)}' if table else key] = value
    return mapped


def _store_key_tables(state_dict: Dict[str, Any], model: nn.Module) -> None:
    """Hand the top-K tables a state dict carries (`stored_key_index_0/1`) to the model's attention modules
    before loading, so that strict loading finds their buffers."""
    for key in state_dict:
        found = _STORED_KEYS.match(key)
        other = key[:-1] + '1'
        if not found or other not in state_dict or not hasattr(model, 'stages'):
            continue
        stage, block = int(found.group(1)), int(found.group(2))
        if stage < len(model.stages) and block < len(model.stages[stage].blocks):
            attn = model.stages[stage].blocks[block].attn
            if isinstance(attn, FocalFastAttention):
                attn.store_key_tables(state_dict[key], state_dict[other])


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """Map an official checkpoint (or its `model` entry), PaddleViT's (the same names) or the MindSpore
    port's to this layout, dropping the official index buffers (recomputed here), and fit relative-position
    tables to the model's window sizes (`focal_resize`); timm-layout dicts of the built size pass as they
    are. Keys `layers.N.` of this package's checkpoints from before the stage container was named `stages`
    are renamed. Stored top-K tables (the MindSpore port's, or this model's `stored_key_index_*`) are used."""
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith('0.blocks.0.') for k in state_dict):
        state_dict = _from_mindspore(state_dict, model)
    elif any(k.startswith('layers.0.blocks.0.pool_layers') or k == 'head.weight' for k in state_dict):
        _warn_if_topk_differs(state_dict, model)
        state_dict = {_official_key(k): v for k, v in state_dict.items() if not _OFFICIAL_BUFFERS.search(k)}
    elif any(k.startswith('layers.') for k in state_dict):
        state_dict = {re.sub(r'^layers\.', 'stages.', k): v for k, v in state_dict.items()}
    _store_key_tables(state_dict, model)
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


# PaddleViT's port of the official weights (PaddlePaddle .pdparams), listed in BR-IDL/PaddleViT's
# image_classification/Focal_Transformer/README.md with their top-1 there: model -> (top-1, Google Drive file
# id, Baidu share id, Baidu code). Only a person can download them; the file name (the URL's fragment,
# ignored by the server) is what `pretrained=True` looks for in torch.hub's cache (models/_helpers.py).
_PADDLEVIT = {
    'focal_tiny_patch4_window7_224': ('82.03', '1HzZJbYH_eIo94h0wLUhqTyJ6AYthNKRh', '1JCr2qIA-SZvTqbTO-m2OwA', 'i8c2'),
    'focal_tiny_useconv_patch4_window7_224': ('82.70', '1PS0-gdXHGl95LqH5k5DG62AH6D3i7v0D', '1tVztox4bVJuJEjkD1fLaHQ', 'smrk'),
    'focal_small_patch4_window7_224': ('83.55', '1HnVAYsI_hmiomyS4Ax3ccPE7gk4mlTU8', '1b7uugAY9RhrgTkUwYcvvow', 'dwd8'),
    'focal_small_useconv_patch4_window7_224': ('83.85', '1vcHjYiGNMayoSTPoM8z39XRH6h89TB9V', '174a2aZzCEt3teLuAnIzMtA', 'nr7n'),
    'focal_base_patch4_window7_224': ('83.98', '1bNMegxetWpwZNcmDEC3MHCal6SNXSgWR', '1piBslNhxWR78aQJIdoZjEw', '8akn'),
    'focal_base_useconv_patch4_window7_224': ('84.18', '1-J2gDnKrvZGtasvsAYozrbMXR2LtIJ43', '1GTLfnTlt6I6drPdfSWB1Iw', '5nfi'),
}


def _paddle_cfg(model: str) -> Dict[str, Any]:
    top1, drive, baidu, code = _PADDLEVIT[model]
    return _cfg(
        f'{model}.pdparams', float(top1), url=f'https://drive.google.com/file/d/{drive}/view?usp=sharing#{model}.pdparams',
        origin_url='https://github.com/BR-IDL/PaddleViT/tree/develop/image_classification/Focal_Transformer',
        notes=(f'ImageNet-1k top-1 {top1} (PaddleViT port of the official weights)',
               f'file {model}.pdparams (PaddlePaddle); also on Baidu https://pan.baidu.com/s/{baidu}?pwd={code}'))


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
    **{f'{model}.paddle_in1k': _paddle_cfg(model) for model in _PADDLEVIT},
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
