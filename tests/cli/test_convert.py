"""`python -m van_focal.convert`: weights in any layout read here, out as timm-layout safetensors or a
save_for_hf folder with a model card; the result loads strictly and gives the source's logits."""
import json
import sys
from pathlib import Path

import pytest
import timm
from safetensors import safe_open

import van_focal  # noqa: F401
from van_focal.cli import convert

sys.path.insert(0, str(Path(__file__).parents[1]))
from scripts import error_of  # noqa: E402
from models.test_foreign_weights import TOLERANCE, golden, max_error  # noqa: E402


@pytest.fixture(autouse=True)
def _untimed_routes(monkeypatch):
    monkeypatch.setenv('VAN_FOCAL_ROUTES', 'default')


def test_mindspore_focal_fast_to_safetensors(tmp_path):
    """The port's top-K tables and its tanh-GELU travel with the converted weights."""
    path, model_name, kwargs, x, logits = golden('focalv2_mindspore_cfg')
    out = tmp_path / 'focalv2.safetensors'
    convert.main([str(path), str(out), '--model', model_name, '--model-kwargs',
                  *[f'{k}={v}' for k, v in kwargs.items()]])
    with safe_open(str(out), 'pt') as f:
        metadata = f.metadata()
        assert 'stages.0.blocks.0.attn.stored_key_index_0' in f.keys()
    assert json.loads(metadata['model_args'])['act_layer'] == 'gelu_tanh' and metadata['source'] == path.name
    model = timm.create_model(model_name, act_layer='gelu_tanh', **kwargs)
    timm.models.load_checkpoint(model, str(out), strict=True)
    assert max_error(model, x, logits) < TOLERANCE


def test_paddle_focal_to_hub_folder(tmp_path):
    """A save_for_hf folder: config.json, model.safetensors and a model card; `local-dir:` rebuilds the model."""
    path, model_name, kwargs, x, logits = golden('focal_v1_paddle_cfg')
    folder = tmp_path / 'hub'
    convert.convert(str(path), str(folder), f'{model_name}.paddle_in1k', model_kwargs=kwargs)
    assert {'config.json', 'model.safetensors', 'README.md'} <= {p.name for p in folder.iterdir()}
    card = (folder / 'README.md').read_text()
    for needle in (model_name, path.name, 'top-1 82.03', 'bicubic', 'crop_pct', 'mit', 'PaddleViT'):
        assert needle in card, needle
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert max_error(model, x, logits) < TOLERANCE


def test_mindspore_van_card_says_tanh_gelu(tmp_path):
    path, model_name, kwargs, x, logits = golden('van_mindspore_cfg')
    folder = tmp_path / 'hub'
    convert.convert(str(path), str(folder), model_name, model_kwargs=kwargs, top1='83.02 (MindSpore port)',
                    license='apache-2.0')
    assert json.loads((folder / 'config.json').read_text())['model_args']['act_layer'] == 'gelu_tanh'
    card = (folder / 'README.md').read_text()
    assert 'gelu_tanh' in card and '83.02 (MindSpore port)' in card and 'license: apache-2.0' in card
    assert '(official)' not in card  # van_b0's tag is of other weights
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert max_error(model, x, logits) < TOLERANCE


def test_wrong_model_one_line(tmp_path, capsys):
    path = golden('van_mindspore_cfg')[0]
    message = error_of(convert.main, [path, tmp_path / 'out.safetensors', '--model', 'van_b0'], capsys)
    assert 'van_mindspore_cfg.ckpt does not fit' in message
    message = error_of(convert.main, [tmp_path / 'missing.ckpt', tmp_path / 'o.safetensors', '--model', 'van_b0'], capsys)
    assert 'missing.ckpt: no such file' in message


def test_python_m_entry_point():
    """`python -m van_focal.convert` (the shim) and the console script van-focal-convert run the same tool."""
    import van_focal.convert as shim
    assert shim.run is convert.run and convert.build_parser().prog == 'van-focal-convert'
