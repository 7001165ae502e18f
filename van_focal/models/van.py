""" VAN: Visual Attention Network

Paper: `Visual Attention Network` - https://arxiv.org/abs/2202.09741
Official code and weights: https://github.com/Visual-Attention-Network/VAN-Classification

Laid out as timm's convnets (`stages.N.{downsample,blocks,norm}`, `head.fc`); the official
checkpoint keys (`patch_embed1`, `block1`, `norm1`, `head`), and those of the HF transformers and
OpenMMLab releases, are mapped by `checkpoint_filter_fn` (see `van_layouts`), which also runs on every
`load_state_dict`, so `timm.models.load_checkpoint` takes them as they are.
"""
import copy
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.layers import ClassifierHead, DropPath, LayerNorm2d, calculate_drop_path_rates, get_act_layer
from timm.models import (
    checkpoint_seq, generate_default_cfgs, register_model, reparameterize_model)
from timm.models._features import feature_take_indices

from . import _van_ops
from ._conv_act import conv_gelu, conv_mul
from ._depthwise import DepthwiseConv
from ._helpers import build_model, remap_keys_on_load, unwrap_state_dict, use_tanh_gelu
from ._pointwise import PointwiseConv
from .van_layouts import is_mindspore, to_timm_layout

__all__ = ['VAN']

# timm 0.4.12's ViT default config, which the official weights were trained and evaluated with.
VAN_MEAN = VAN_STD = (0.5, 0.5, 0.5)


def _batchnorm_affine(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(x) == x * scale + shift per channel, in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _conv_on_affine_input(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """A 1x1 conv equal to conv(x * scale + shift)."""
    fused = PointwiseConv(conv.in_channels, conv.out_channels)
    weight = conv.weight[:, :, 0, 0]
    fused.weight.data = (weight * scale[None, :])[:, :, None, None]
    fused.bias.data = conv.bias + weight @ shift
    return fused


def _conv_with_affine_output(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """A copy of conv whose output is conv(x) * scale + shift."""
    fused = copy.deepcopy(conv)
    fused.weight.data = conv.weight * scale[:, None, None, None]
    fused.bias.data = conv.bias * scale + shift
    return fused


class LargeKernelAttention(nn.Module):
    """LKA: 5x5 depth-wise -> 7x7 depth-wise dilated 3 -> 1x1, used as a gate on the input.

    `dilation` > 1 (a stage run at a finer stride, `output_stride`) dilates both depth-wise convs by it.
    """

    def __init__(self, dim: int, dilation: int = 1):
        super().__init__()
        self.conv0 = DepthwiseConv(dim, 5, dilation=dilation)  # local context
        # long-range context (a 19x19 receptive field)
        self.conv_spatial = DepthwiseConv(dim, 7, dilation=3 * dilation)
        self.conv1 = PointwiseConv(dim, dim)  # channel mixing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x
        attn = self.conv0(x)
        attn = self.conv_spatial(attn)
        if torch.jit.is_scripting():
            return u * self.conv1(attn)
        return conv_mul(self.conv1, attn, u)  # u * conv1(attn), in one pass where faster (_conv_act)


class SpatialAttention(nn.Module):
    """1x1 conv, GELU, LKA, 1x1 conv, with the attention's own residual."""

    def __init__(self, dim: int, act_layer: Callable[[], nn.Module] = nn.GELU, dilation: int = 1):
        super().__init__()
        self.proj_1 = PointwiseConv(dim, dim)
        self.activation = act_layer()
        self.spatial_gating_unit = LargeKernelAttention(dim, dilation)
        self.proj_2 = PointwiseConv(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return x + self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x))))
        return x + self.proj_2(self.spatial_gating_unit(conv_gelu(self.proj_1, self.activation, x)))


class ConvMlp(nn.Module):
    """1x1 conv, 3x3 depth-wise conv, GELU, 1x1 conv."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0., act_layer: Callable[[], nn.Module] = nn.GELU,
                 dilation: int = 1):
        super().__init__()
        self.fc1 = PointwiseConv(dim, hidden_dim)
        self.dwconv = DepthwiseConv(hidden_dim, 3, dilation=dilation)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = PointwiseConv(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if torch.jit.is_scripting():
            x = self.act(self.dwconv(x))
        else:
            x = conv_gelu(self.dwconv, self.act, x)  # act(dwconv(x)), in one pass where faster (_conv_act)
        x = self.drop(x)
        x = self.fc2(x)
        return self.drop(x)


class VanBlock(nn.Module):
    """BatchNorm, spatial attention and an MLP, each residual branch scaled per channel (layer scale).

    Args:
        dim: channels.
        mlp_ratio: MLP hidden width over `dim`.
        drop: dropout in the MLP.
        drop_path: stochastic depth rate of both branches.
        layer_scale_init_value: initial layer scale.
        act_layer: the activation (GELU; MindSpore-trained weights want its tanh approximation).
        dilation: of every spatial conv (1; more in a stage that keeps a finer stride, `output_stride`).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4., drop: float = 0., drop_path: float = 0.,
                 layer_scale_init_value: float = 1e-2, act_layer: Callable[[], nn.Module] = nn.GELU,
                 dilation: int = 1):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim, act_layer, dilation)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop=drop, act_layer=act_layer, dilation=dilation)
        self.layer_scale_1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.low_memory = True  # training through `_van_ops` (VAN.set_low_memory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._saves_less(x):
            return self._forward_saving_memory(x)  # training: the same sums, fewer activations kept
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))
        return x

    @torch.jit.unused
    def _saves_less(self, x: torch.Tensor) -> bool:
        return _van_ops.saves_less(self, x)

    @torch.jit.unused
    def _forward_saving_memory(self, x: torch.Tensor) -> torch.Tensor:
        return _van_ops.van_block_saving_memory(self, x)

    @torch.no_grad()
    def fuse(self) -> 'FusedVanBlock':
        """The same block for inference with BatchNorm and layer scale folded into the 1x1 convs."""
        return FusedVanBlock(self)


class FusedVanBlock(nn.Module):
    """VanBlock for inference: 3 fewer passes over memory per branch, same outputs up to float rounding.

    With a = norm1(x) = x * s + t, the attention branch x + ls1 * (a + proj_2(lka(act(proj_1(a)))))
    becomes x * (1 + ls1 * s) + proj_2'(lka(act(proj_1'(x)))), where proj_1' absorbs the BatchNorm and
    proj_2' absorbs ls1 and the residual's shift ls1 * t. The MLP branch folds norm2 into fc1 and ls2 into fc2.
    """

    def __init__(self, block: VanBlock):
        super().__init__()
        scale, shift = _batchnorm_affine(block.norm1)
        ls1, ls2 = block.layer_scale_1, block.layer_scale_2
        attn = block.attn
        self.proj_1 = _conv_on_affine_input(attn.proj_1, scale, shift)
        self.activation = attn.activation
        self.spatial_gating_unit = attn.spatial_gating_unit
        self.proj_2 = _conv_with_affine_output(attn.proj_2, ls1, ls1 * shift)
        self.register_buffer('skip_scale', (1 + ls1 * scale)[:, None, None].detach().clone())

        self.mlp = copy.deepcopy(block.mlp)  # the block itself stays usable
        self.mlp.fc1 = _conv_on_affine_input(block.mlp.fc1, *_batchnorm_affine(block.norm2))
        self.mlp.fc2 = _conv_with_affine_output(block.mlp.fc2, ls2, torch.zeros_like(ls2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            a = self.activation(self.proj_1(x))
        else:
            a = conv_gelu(self.proj_1, self.activation, x)
        x = torch.addcmul(self.proj_2(self.spatial_gating_unit(a)), x, self.skip_scale)
        return x + self.mlp(x)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with 'same'-style padding, then BatchNorm."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, dilation: int = 1):
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=dilation * (kernel_size // 2),
                              dilation=dilation)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        return _conv_with_affine_output(self.proj, *_batchnorm_affine(self.norm))


class VanStage(nn.Module):
    """A patch embedding (7x7 stride 4 first, 3x3 stride 2 after), blocks and a LayerNorm.

    A stage that keeps its input's resolution (`output_stride`) embeds with stride 1 at its input's dilation
    `dilation[0]`, and its blocks dilate by `dilation[1]`, as timm's dilated ResNets and ConvNeXts.
    """

    def __init__(self, in_chs: int, out_chs: int, depth: int, first: bool, stride: int, mlp_ratio: float,
                 drop: float, drop_path_rates: List[float], dilation: Tuple[int, int] = (1, 1),
                 act_layer: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = OverlapPatchEmbed(in_chs, out_chs, kernel_size=7 if first else 3, stride=stride,
                                            dilation=dilation[0])
        self.blocks = nn.Sequential(*[
            VanBlock(out_chs, mlp_ratio=mlp_ratio, drop=drop, drop_path=drop_path_rates[i], act_layer=act_layer,
                     dilation=dilation[1])
            for i in range(depth)])
        self.norm = LayerNorm2d(out_chs, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class VAN(nn.Module):
    """Visual Attention Network: four stages at strides 4, 8, 16 and 32, each an overlapping patch
    embedding, blocks of large-kernel attention and a conv MLP, and a LayerNorm.

    Args:
        in_chans: input channels.
        num_classes: classes of the head (0: no head).
        global_pool: pooling before the head ('avg', 'max', '' ...; timm's ClassifierHead).
        embed_dims: channels per stage.
        depths: blocks per stage.
        mlp_ratios: MLP hidden width over the channels, per stage.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout in the MLPs.
        drop_path_rate: stochastic depth, rising linearly over the blocks.
        act_layer: the activation, a class or timm name (default nn.GELU; 'gelu_tanh' for MindSpore-trained
            weights, which loading such a file also switches to).
        output_stride: 32, or 16 / 8 for dense prediction (DeepLab): the stages past that stride keep their
            input's resolution and dilate their convs instead (the same weights).
        low_memory: training keeps less than half the activations for backward, recomputing the cheap
            element-wise ones (`_van_ops`); False for autograd's own backward (`set_low_memory`).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Tuple[int, ...] = (64, 128, 256, 512),
            depths: Tuple[int, ...] = (3, 4, 6, 3),
            mlp_ratios: Tuple[float, ...] = (8, 8, 4, 4),
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer: Union[str, Callable[[], nn.Module]] = nn.GELU,
            output_stride: int = 32,
            low_memory: bool = True,
    ):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f'output_stride={output_stride}: VAN takes 8, 16 or 32.')
        act_layer = get_act_layer(act_layer) if isinstance(act_layer, str) else act_layer
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.feature_info = []

        dpr = calculate_drop_path_rates(drop_path_rate, depths, stagewise=True)
        stages = []
        prev_chs = in_chans
        net_stride, dilation = 1, 1
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            stride, prev_dilation = 4 if i == 0 else 2, dilation
            if net_stride >= output_stride:  # past output_stride: keep the resolution, dilate instead
                stride, dilation = 1, dilation * stride
            net_stride *= stride
            stages.append(VanStage(prev_chs, dim, depth, first=i == 0, stride=stride, mlp_ratio=mlp_ratios[i],
                                   drop=proj_drop_rate, drop_path_rates=dpr[i], dilation=(prev_dilation, dilation),
                                   act_layer=act_layer))
            prev_chs = dim
            self.feature_info.append(dict(num_chs=dim, reduction=net_stride, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

        self.apply(_init_weights)
        remap_keys_on_load(self, checkpoint_filter_fn)
        self.set_low_memory(low_memory)

    def set_low_memory(self, enable: bool = True):
        """Train through `_van_ops`' functions, which keep less than half the activations for backward and
        recompute the cheap element-wise ones (the same sums), or (False) through autograd's own backward."""
        for module in self.modules():
            if isinstance(module, VanBlock):
                module.low_memory = enable

    @torch.jit.ignore
    def no_weight_decay(self):
        return set()

    def fuse(self) -> 'VAN':
        """Fold every BatchNorm and layer scale into its neighbouring conv, in place, for inference.

        Same as `timm.utils.reparameterize_model(model)` (which works on a copy); outputs stay equal up to
        float rounding. The fused model has no drop path and its BatchNorm statistics are frozen, so it is
        for evaluation and deployment, not training.
        """
        return reparameterize_model(self.eval(), inplace=True)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stages\.0\.downsample',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^stages\.(\d+)\.norm', (99999,)),
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
        """Forward features that returns intermediates (each stage's output, already layer-normed)."""
        assert output_fmt == 'NCHW', 'Output format must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True):
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            prune_head = True
        if prune_head:
            self.head = ClassifierHead(self.num_features, 0, pool_type='avg')
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module):
    # As the official code: fan-out normal for convs, truncated normal for linears.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0, (2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """Map a VAN checkpoint in any published layout (official, HF transformers, OpenMMLab, the MindSpore
    ports; see `van_layouts`), or its `state_dict` entry, to this layout; timm-layout dicts pass as they
    are. MindSpore weights also switch the model's GELUs to the tanh approximation they were trained with."""
    state_dict = unwrap_state_dict(state_dict)
    if is_mindspore(state_dict):
        use_tanh_gelu(model, 'VAN weights of a MindSpore port')
    return to_timm_layout(state_dict)


def _create_van(variant: str, pretrained: bool = False, **kwargs) -> VAN:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    if kwargs.get('features_only'):
        feature_take_indices(len(kwargs['depths']), out_indices)  # the same out-of-range message as Focal's
    return build_model(
        VAN, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs)


def _cfg(top1: str = '', source: str = 'official', **kwargs) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.9, 'interpolation': 'bicubic',
        'mean': VAN_MEAN, 'std': VAN_STD,
        'first_conv': 'stages.0.downsample.proj', 'classifier': 'head.fc',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2202.09741', 'paper_name': 'Visual Attention Network',
        'origin_url': 'https://github.com/Visual-Attention-Network/VAN-Classification',
        'notes': (f'ImageNet-1k top-1 {top1} ({source})',) if top1 else (),
        **kwargs,
    }


def _official(size: str, filename: str, top1: str) -> Dict[str, Any]:
    """The authors' file (timm 0.4.12 layout), as the authors put it on the HF hub."""
    return _cfg(top1, hf_hub_id=f'Visual-Attention-Network/VAN-{size}-original', hf_hub_filename=filename)


def _hf_transformers(size: str, top1: str) -> Dict[str, Any]:
    """transformers' conversion of the official weights (`VanForImageClassification` layout). Its hub
    processor config was copied from ConvNeXt's (ImageNet mean/std, crop 0.875); the weights were
    trained and evaluated with the official preprocessing, which these tags keep."""
    cfg = _cfg(top1, 'official, converted by HF transformers', hf_hub_id=f'Visual-Attention-Network/van-{size}',
               hf_hub_filename='pytorch_model.bin', origin_url='https://huggingface.co/Visual-Attention-Network')
    cfg['notes'] += ("the hub repo's preprocessor_config.json (ConvNeXt's) differs from the training preprocessing",)
    return cfg


_MMCLS = 'https://download.openmmlab.com/mmclassification/v0/van/'


def _openmmlab(filename: str, top1: str = '', **kwargs) -> Dict[str, Any]:
    """OpenMMLab's conversion of the official weights (mmcls 0.x / mmpretrain layout). Their configs
    evaluate with mean = std = 127.5 (as the official ones), resize 248, centre crop 224, bicubic."""
    return _cfg(top1, 'OpenMMLab', url=_MMCLS + filename, crop_pct=224 / 248,
                origin_url='https://github.com/open-mmlab/mmpretrain/tree/main/configs/van', **kwargs)


def _in22k(filename: str) -> Dict[str, Any]:
    """ImageNet-22K (21841 classes) pre-training, published (converted) by OpenMMLab only; no top-1."""
    return _openmmlab(filename, num_classes=21841, notes=('ImageNet-22k pre-trained, 21841 classes (OpenMMLab)',))


default_cfgs = generate_default_cfgs({
    'van_b0.in1k': _official('Tiny', 'van_tiny_754.pth.tar', '75.4'),
    'van_b1.in1k': _official('Small', 'van_small_811.pth.tar', '81.1'),
    'van_b2.in1k': _official('Base', 'van_base_828.pth.tar', '82.8'),
    'van_b3.in1k': _official('Large', 'van_large_839.pth.tar', '83.9'),
    'van_b0.hf_in1k': _hf_transformers('tiny', '75.4'),
    'van_b1.hf_in1k': _hf_transformers('small', '81.1'),
    'van_b2.hf_in1k': _hf_transformers('base', '82.8'),
    'van_b3.hf_in1k': _hf_transformers('large', '83.9'),
    'van_b0.mmcls_in1k': _openmmlab('van-tiny_8xb128_in1k_20220501-385941af.pth', '75.41'),
    'van_b1.mmcls_in1k': _openmmlab('van-small_8xb128_in1k_20220501-17bc91aa.pth', '81.01'),
    'van_b2.mmcls_in1k': _openmmlab('van-base_8xb128_in1k_20220501-6a4cc31b.pth', '82.80'),
    'van_b3.mmcls_in1k': _openmmlab('van-large_8xb128_in1k_20220501-f212ba21.pth', '83.86'),
    'van_b4.mmcls_in1k': _openmmlab('van-b4_3rdparty_in1k_20220909-f4665b92.pth', '84.13'),
    'van_b4.in22k': _in22k('van-b4_3rdparty_in21k_20220909-db926b18.pth'),
    # b5 and b6 exist only as ImageNet-22k weights, which (as timm's other in22k-only models) are the
    # default pretrained_cfg: build with num_classes=1000 for ImageNet-1k.
    'van_b5.in22k': _in22k('van-b5_3rdparty_in21k_20220909-18e904e3.pth'),
    # The B6 file has stage-3 width 480, not the paper's 384: van_b6 follows the file (see van_b6).
    'van_b6.in22k': _in22k('van-b6_3rdparty_in21k_20220909-96c2cb3a.pth'),
})


@register_model
def van_b0(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2))
    return _create_van('van_b0', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def van_b1(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2))
    return _create_van('van_b1', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def van_b2(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3))
    return _create_van('van_b2', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def van_b3(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 5, 27, 3))
    return _create_van('van_b3', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def van_b4(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3))
    return _create_van('van_b4', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def van_b5(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(embed_dims=(96, 192, 480, 768), depths=(3, 3, 24, 3))
    return _create_van('van_b5', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def van_b6(pretrained: bool = False, **kwargs) -> VAN:
    """VAN-B6 as its only published weights are (OpenMMLab's van-b6_3rdparty_in21k, 283.9 M parameters at 1000
    classes): stage widths 96/192/480/768. The paper and the official code give 96/192/384/768 (199.8 M), which
    no published file fits; pass embed_dims=(96, 192, 384, 768) for that model."""
    model_args = dict(embed_dims=(96, 192, 480, 768), depths=(6, 6, 90, 6))
    return _create_van('van_b6', pretrained=pretrained, **dict(model_args, **kwargs))
