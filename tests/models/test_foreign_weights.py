"""Weights that survive only in other frameworks' formats, loaded through every door a user knows, giving the
other framework's logits: PaddleViT's Focal v1 (.pdparams), the MindSpore ports' VAN and Focal-fast (.ckpt).
The fixtures were made by the ports' own code in PaddlePaddle and MindSpore (tests/fixtures/make_golden_foreign.py).
Also: the PaddleViT tags, and VAN-B6 / B4 / B5 against OpenMMLab's published 22K files (synthetic, full size)."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

import van_focal  # noqa: F401
from van_focal.core.errors import CheckpointError
from van_focal.models._focal_tables import focal_v2_tables

FIXTURES = Path(__file__).parents[1] / 'fixtures'
# name -> file; the kind of weights each holds
CASES = {
    'focal_v1_paddle_cfg': 'focal_v1_paddle_cfg.pdparams',
    'focal_v1_useconv_paddle_cfg': 'focal_v1_useconv_paddle_cfg.pdparams',
    'van_mindspore_cfg': 'van_mindspore_cfg.ckpt',  # kaierlong/VAN-Ascend: cell_list.N
    'van_mindspore_nolist_cfg': 'van_mindspore_nolist_cfg.ckpt',  # WenHao-L/VAN: N
    'focalv2_mindspore_cfg': 'focalv2_mindspore_cfg.ckpt',
}
TOLERANCE = 2e-6  # float32 rounding; the logits are of order 1
TINY_FOCAL = dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4), mlp_ratio=2.)


@pytest.fixture(autouse=True)
def _untimed_routes(monkeypatch):
    monkeypatch.setenv('VAN_FOCAL_ROUTES', 'default')  # no timing of CPU routes for these one-off shapes


def golden(name: str):
    """(file, model name, model kwargs, input, the framework's logits) of a committed fixture."""
    data = np.load(FIXTURES / f'{name}_golden.npz')
    kwargs = json.loads(str(data['model_kwargs']))
    kwargs.pop('focal_levels', None)  # 2 everywhere, as this package's models
    x = np.random.RandomState(int(data['input_seed'])).standard_normal(tuple(data['input_shape'])).astype(np.float32)
    return FIXTURES / CASES[name], str(data['model']), kwargs, torch.from_numpy(x), torch.from_numpy(data['logits'])


def max_error(model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x) - logits).abs().max())


# One fixture of each layout (the script doors: tests/cli/test_foreign_doors.py).
LAYOUTS = ['focal_v1_paddle_cfg', 'van_mindspore_cfg', 'van_mindspore_nolist_cfg', 'focalv2_mindspore_cfg']


@pytest.mark.parametrize('name', LAYOUTS)
def test_golden_overlay(name):
    """pretrained_cfg_overlay=dict(file=...) gives the framework's logits."""
    path, model_name, kwargs, x, logits = golden(name)
    model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(
        file=str(path), num_classes=kwargs['num_classes']), **kwargs)
    assert max_error(model, x, logits) < TOLERANCE


@pytest.mark.parametrize('name', sorted(CASES))
def test_golden_load_checkpoint(name):
    """timm.models.load_checkpoint (strict) gives the framework's logits."""
    path, model_name, kwargs, x, logits = golden(name)
    model = timm.create_model(model_name, **kwargs)
    timm.models.load_checkpoint(model, str(path), strict=True)
    assert max_error(model, x, logits) < TOLERANCE


def test_paddle_linear_transpose_matters():
    """The square attn.proj fits either way round: only the logits show a missed transpose."""
    path, model_name, kwargs, x, logits = golden('focal_v1_paddle_cfg')
    model = timm.create_model(model_name, **kwargs)
    state_dict = timm.models.load_state_dict(str(path))
    for key in [k for k in state_dict if k.endswith('attn.proj.weight')]:
        state_dict[key] = state_dict[key].t()
    model.load_state_dict(state_dict)
    assert max_error(model, x, logits) > 1e-3


def test_mindspore_weights_use_tanh_gelu():
    """MindSpore's nn.GELU is the tanh approximation: loading its weights switches the model to it; a model built
    with act_layer='gelu_tanh' needs no switch; with exact GELU the logits miss."""
    for name in ('focalv2_mindspore_cfg', 'van_mindspore_cfg'):
        path, model_name, kwargs, x, logits = golden(name)
        model = timm.create_model(model_name, **kwargs)
        assert all(m.approximate == 'none' for m in model.modules() if isinstance(m, nn.GELU))
        timm.models.load_checkpoint(model, str(path))
        gelus = [m for m in model.modules() if isinstance(m, nn.GELU)]
        assert gelus and all(m.approximate == 'tanh' for m in gelus)
    for module in model.modules():
        if isinstance(module, nn.GELU):
            module.approximate = 'none'
    assert max_error(model, x, logits) > 2 * TOLERANCE
    model = timm.create_model(model_name, act_layer='gelu_tanh', **kwargs)
    timm.models.load_checkpoint(model, str(path))
    assert max_error(model, x, logits) < TOLERANCE


def test_focal_fast_uses_the_stored_top_k():
    """The port's top-K tables differ from torch.topk's choice at ties; its logits need its own tables, which
    stay with the weights through a timm-layout state dict."""
    path, model_name, kwargs, x, logits = golden('focalv2_mindspore_cfg')
    model = timm.create_model(model_name, **kwargs)
    timm.models.load_checkpoint(model, str(path))
    attn = model.stages[0].blocks[0].attn
    side = attn.stored_key_size[0]
    recomputed = focal_v2_tables(side, side, attn.ws, attn.topk, torch.device('cpu'))[0]
    assert (recomputed != attn.stored_index).any(1).sum() > 0
    state_dict = model.state_dict()
    assert 'stages.0.blocks.0.attn.stored_key_index_0' in state_dict
    again = timm.create_model(model_name, act_layer='gelu_tanh', **kwargs)
    again.load_state_dict(state_dict)
    assert max_error(again, x, logits) < TOLERANCE
    plain = timm.create_model(model_name, act_layer='gelu_tanh', **kwargs)
    plain.load_state_dict({k: v for k, v in state_dict.items() if 'stored_key_index' not in k})
    assert max_error(plain, x, logits) > 1e-3  # torch.topk's tables: another model


def test_other_model_one_line():
    with pytest.raises(CheckpointError) as error:
        timm.create_model('focal_tiny_patch4_window7_224', pretrained=True, pretrained_cfg_overlay=dict(
            file=str(FIXTURES / CASES['van_mindspore_cfg'])), **TINY_FOCAL)
    text = str(error.value)
    assert len(text.splitlines()) == 1 and 'van_mindspore_cfg.ckpt' in text and 'does not fit' in text, text


# ---------------------------------------------------------------------------------------------
# PaddleViT tags
# ---------------------------------------------------------------------------------------------

PADDLE_TOP1 = {'focal_tiny_patch4_window7_224': '82.03', 'focal_tiny_useconv_patch4_window7_224': '82.70',
               'focal_small_patch4_window7_224': '83.55', 'focal_small_useconv_patch4_window7_224': '83.85',
               'focal_base_patch4_window7_224': '83.98', 'focal_base_useconv_patch4_window7_224': '84.18'}


def test_paddle_tags_name_file_and_top1():
    tags = timm.list_pretrained('focal_*.paddle_in1k')
    assert sorted(t.split('.')[0] for t in tags) == sorted(PADDLE_TOP1)
    for name, top1 in PADDLE_TOP1.items():
        cfg = timm.models.get_pretrained_cfg(f'{name}.paddle_in1k').to_dict()
        assert cfg['url'].endswith(f'#{name}.pdparams') and top1 in cfg['notes'][0]
        assert timm.models.get_pretrained_cfg(name).tag == 'in1k'  # the official tag stays the default


def test_paddle_tag_without_file_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    with pytest.raises(CheckpointError) as error:
        timm.create_model('focal_small_useconv_patch4_window7_224.paddle_in1k', pretrained=True, **TINY_FOCAL)
    text = str(error.value)
    assert len(text.splitlines()) == 1 and len(text.replace(str(tmp_path), '~')) < 600, text
    for needle in ('focal_small_useconv_patch4_window7_224.pdparams', '83.85', 'drive.google.com', 'Baidu',
                   "pretrained_cfg_overlay=dict(file='PATH/focal_small_useconv_patch4_window7_224.pdparams')",
                   str(tmp_path / 'hub' / 'checkpoints')):
        assert needle in text, text


def test_paddle_tag_loads_from_hub_cache(tmp_path, monkeypatch):
    """A .pdparams in torch.hub's cache under the tag's file name just loads (the head, 10 classes here, is new)."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    cached = tmp_path / 'hub' / 'checkpoints' / 'focal_tiny_patch4_window7_224.pdparams'
    cached.parent.mkdir(parents=True)
    cached.write_bytes((FIXTURES / CASES['focal_v1_paddle_cfg']).read_bytes())
    model = timm.create_model('focal_tiny_patch4_window7_224.paddle_in1k', pretrained=True, **TINY_FOCAL,
                              num_classes=10)
    reference = timm.models.load_state_dict(str(cached))
    torch.testing.assert_close(model.stages[1].blocks[0].attn.qkv.weight, reference['layers.1.blocks.0.attn.qkv.weight'])


# ---------------------------------------------------------------------------------------------
# VAN-B4/B5/B6 ImageNet-22K: OpenMMLab's files, at full size
# ---------------------------------------------------------------------------------------------

# OpenMMLab's published parameter counts (mmpretrain configs/van/README.md, 1000-class head) of its 22K files.
OPENMMLAB_PARAMS_M = {'van_b4': 60.28, 'van_b5': 89.97, 'van_b6': 283.9}


def openmmlab_key(key: str) -> str:
    """This package's VAN key under OpenMMLab's name (mmcls 0.x / mmpretrain ImageClassifier)."""
    key = re.sub(r'^stages\.(\d+)\.downsample\.proj\.', lambda m: f'backbone.patch_embed{int(m.group(1)) + 1}.projection.', key)
    key = re.sub(r'^stages\.(\d+)\.downsample\.norm\.', lambda m: f'backbone.patch_embed{int(m.group(1)) + 1}.norm.', key)
    key = re.sub(r'^stages\.(\d+)\.blocks\.', lambda m: f'backbone.blocks{int(m.group(1)) + 1}.', key)
    key = re.sub(r'^stages\.(\d+)\.norm\.', lambda m: f'backbone.norm{int(m.group(1)) + 1}.', key)
    key = key.replace('.spatial_gating_unit.conv0.', '.spatial_gating_unit.DW_conv.')
    return key.replace('.spatial_gating_unit.conv_spatial.', '.spatial_gating_unit.DW_D_conv.')


def test_openmmlab_names_are_openmmlabs():
    """The names `openmmlab_key` gives are those of mmpretrain's own file (the committed tiny fixture)."""
    real = torch.load(FIXTURES / 'van_mmpretrain_cfg.pth', weights_only=True)['state_dict']
    ours = timm.create_model('van_b0', embed_dims=(8, 16, 24, 32), depths=(1, 1, 2, 1), num_classes=10).state_dict()
    assert {openmmlab_key(k) for k in ours} == set(real)


def synthetic_openmmlab_file(path: Path, model: nn.Module) -> Path:
    """An OpenMMLab-layout checkpoint of `model`'s full-size shapes; every tensor a stride-0 view of one
    element, so that the file is under 1 MB while strict loading checks every shape."""
    state_dict = {openmmlab_key(k): torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}
    torch.save({'meta': {'mmcls_version': '0.24.0'}, 'state_dict': state_dict}, path)
    return path


@pytest.fixture(scope='module')
def in22k(tmp_path_factory):
    """name -> (the `name.in22k` model on the meta device, an OpenMMLab-layout file of its shapes), made once."""
    made = {}

    def make(name: str):
        if name not in made:
            with torch.device('meta'):
                model = timm.create_model(f'{name}.in22k')
            made[name] = model, synthetic_openmmlab_file(tmp_path_factory.mktemp(name) / f'{name}_in21k.pth', model)
        return made[name]
    return make


@pytest.mark.filterwarnings('ignore:for .*copying from a non-meta parameter')
@pytest.mark.parametrize('name', sorted(OPENMMLAB_PARAMS_M))
def test_in22k_file_loads_strictly(name, in22k):
    model, path = in22k(name)
    assert model.num_classes == 21841
    head = model.get_classifier()
    params_at_1000 = sum(p.numel() for p in model.parameters()) - (21841 - 1000) * (head.in_features + 1)
    assert round(params_at_1000 / 1e6, 2) == OPENMMLAB_PARAMS_M[name]
    timm.models.load_checkpoint(model, str(path), strict=True)
    if name == 'van_b6':
        assert model.stages[2].downsample.proj.out_channels == 480


@pytest.mark.filterwarnings('ignore:for .*copying from a non-meta parameter')
def test_paper_b6_does_not_fit_the_published_file(in22k):
    """The paper's B6 (stage-3 width 384, 199.8 M parameters) is not what OpenMMLab published."""
    _, path = in22k('van_b6')
    with torch.device('meta'):
        paper = timm.create_model('van_b6', num_classes=21841, embed_dims=(96, 192, 384, 768))
    with pytest.raises(CheckpointError, match='does not fit'):
        van_focal.load_checkpoint(paper, str(path))
