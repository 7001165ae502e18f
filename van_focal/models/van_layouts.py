"""The key layouts VAN weights are published in, mapped to this package's timm layout.

- official (VAN-Classification, timm 0.4.12): `patch_embed1`, `block1.0`, `norm1`, `head`;
- HF transformers (`Visual-Attention-Network/van-*` hub repos, `VanForImageClassification`):
  `van.encoder.stages.0.embeddings`, `.layers.0.pre_normomalization`, `attention_scaling`, `classifier`;
- OpenMMLab (mmcls 0.x, mmpretrain, mmsegmentation backbones): `backbone.patch_embed1.projection`,
  `backbone.blocks1.0.attn.spatial_gating_unit.DW_conv`, `head.fc`;
- MindSpore ports (kaierlong/VAN-Ascend; WenHao-L/VAN without the `cell_list.` prefix), as
  `core.foreign_checkpoints` reads their `.ckpt` (normalisation names already PyTorch's): one flat list
  of cells, `cell_list.{3s}` the patch embedding of stage s, `cell_list.{3s+1}.{j}` its block j,
  `cell_list.{3s+2}` its LayerNorm; `mlp.dwconv.dwconv`, `head`. These weights were trained with
  MindSpore's tanh-approximated GELU (`is_mindspore`: the model's checkpoint_filter_fn switches to it).

The layout is recognised from the keys; a dict already in this layout passes unchanged.
"""
import re
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

Rule = Tuple['re.Pattern', Union[str, Callable[['re.Match'], str]]]


def _stage(offset: int, suffix: str) -> Callable[['re.Match'], str]:
    """`prefix{n}` (1-based, as the official and OpenMMLab code number stages) -> `stages.{n-1}{suffix}`."""
    return lambda m: f'stages.{int(m.group(1)) - offset}{suffix.format(*m.groups()[1:])}'


def _rules(*pairs) -> Tuple[Rule, ...]:
    return tuple((re.compile(p), r) for p, r in pairs)


OFFICIAL = _rules(
    (r'^patch_embed(\d)\.', _stage(1, '.downsample.')),
    (r'^block(\d)\.(\d+)\.', _stage(1, '.blocks.{}.')),
    (r'^norm(\d)\.', _stage(1, '.norm.')),
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
    (r'\.mlp\.dwconv\.dwconv\.', '.mlp.dwconv.'),
)

HF_TRANSFORMERS = _rules(
    (r'^(?:van\.)?encoder\.stages\.(\d+)\.embeddings\.convolution\.', r'stages.\1.downsample.proj.'),
    (r'^(?:van\.)?encoder\.stages\.(\d+)\.embeddings\.normalization\.', r'stages.\1.downsample.norm.'),
    (r'^(?:van\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.', r'stages.\1.blocks.\2.'),
    (r'^(?:van\.)?encoder\.stages\.(\d+)\.normalization\.', r'stages.\1.norm.'),
    (r'\.pre_normomalization\.', '.norm1.'),
    (r'\.post_normalization\.', '.norm2.'),
    (r'\.attention\.pre_projection\.conv\.', '.attn.proj_1.'),
    (r'\.attention\.attention_layer\.attention\.depth_wise\.', '.attn.spatial_gating_unit.conv0.'),
    (r'\.attention\.attention_layer\.attention\.depth_wise_dilated\.', '.attn.spatial_gating_unit.conv_spatial.'),
    (r'\.attention\.attention_layer\.attention\.point_wise\.', '.attn.spatial_gating_unit.conv1.'),
    (r'\.attention\.post_projection\.', '.attn.proj_2.'),
    (r'\.attention_scaling\.weight$', '.layer_scale_1'),
    (r'\.mlp_scaling\.weight$', '.layer_scale_2'),
    (r'\.mlp\.in_dense\.', '.mlp.fc1.'),
    (r'\.mlp\.depth_wise\.', '.mlp.dwconv.'),
    (r'\.mlp\.out_dense\.', '.mlp.fc2.'),
    (r'^classifier\.', 'head.fc.'),
)
# transformers' VanModel defines a final LayerNorm that its forward never uses.
HF_TRANSFORMERS_UNUSED = re.compile(r'^(?:van\.)?layernorm\.')

OPENMMLAB = _rules(
    (r'^backbone\.', ''),
    (r'^patch_embed(\d)\.projection\.', _stage(1, '.downsample.proj.')),
    (r'^patch_embed(\d)\.norm\.', _stage(1, '.downsample.norm.')),
    (r'^blocks(\d)\.(\d+)\.', _stage(1, '.blocks.{}.')),
    (r'^norm(\d)\.', _stage(1, '.norm.')),
    (r'\.spatial_gating_unit\.DW_conv\.', '.spatial_gating_unit.conv0.'),
    (r'\.spatial_gating_unit\.DW_D_conv\.', '.spatial_gating_unit.conv_spatial.'),
)



def _mindspore_cell(m: 're.Match') -> str:
    stage, kind = divmod(int(m.group(1)), 3)
    return f"stages.{stage}.{('downsample', 'blocks', 'norm')[kind]}."


MINDSPORE = _rules(
    (r'^(?:cell_list\.)?(\d+)\.', _mindspore_cell),
    (r'\.mlp\.dwconv\.dwconv\.', '.mlp.dwconv.'),
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
)

_SIGNATURES = (
    ('hf_transformers', re.compile(r'^(?:van\.)?encoder\.stages\.\d+\.')),
    ('openmmlab', re.compile(r'^(?:backbone\.)?(?:blocks\d\.\d+\.|patch_embed\d\.projection\.)')),
    ('official', re.compile(r'^(?:patch_embed\d|block\d\.\d+|norm\d)\.')),
    ('mindspore', re.compile(r'^(?:cell_list\.)?\d+\.(?:\d+\.)?(?:proj|norm|norm1|gamma|beta|weight|bias)\b')),
)
LAYOUTS: Dict[str, Tuple[Tuple[Rule, ...], Optional['re.Pattern']]] = {
    'official': (OFFICIAL, None),
    'hf_transformers': (HF_TRANSFORMERS, HF_TRANSFORMERS_UNUSED),
    'openmmlab': (OPENMMLAB, None),
    'mindspore': (MINDSPORE, None),
}


def detect_layout(keys: Sequence[str]) -> str:
    """'official', 'hf_transformers', 'openmmlab', 'mindspore' or 'timm' (this package's own)."""
    for name, signature in _SIGNATURES:
        if any(signature.match(k) for k in keys):
            return name
    return 'timm'


def _rename(key: str, rules: Tuple[Rule, ...]) -> str:
    for pattern, repl in rules:
        key = pattern.sub(repl, key)
    return key


def to_timm_layout(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The same weights under this package's key names, whichever published layout they come in."""
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    layout = detect_layout(list(state_dict))
    if layout == 'timm':
        return state_dict
    rules, unused = LAYOUTS[layout]
    return {_rename(k, rules): v for k, v in state_dict.items() if unused is None or not unused.match(k)}


def is_mindspore(state_dict: Dict[str, Any]) -> bool:
    """Whether these are the MindSpore ports' VAN weights (trained with tanh-approximated GELU)."""
    return detect_layout(list(state_dict)) == 'mindspore'
