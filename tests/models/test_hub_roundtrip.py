"""timm's hub format, offline: `save_for_hf` into a folder, then `create_model('local-dir:...')` and
`create_model('hf-hub:...')` (from a hub cache on disk) rebuild the same model, logits and pretrained_cfg.

Every registered model, with its own flags (conv embedding, Focal-fast) but reduced depths and widths,
which `save_for_hf` records as the model_args that rebuild it.
"""
import json

import pytest
import timm
import torch
from timm.models import save_for_hf
from timm.data import resolve_model_data_config
from timm.models._hub import filter_pretrained_cfg

import van_focal  # noqa: F401
from offline_hub import add_repo, offline_hub  # noqa: F401  (fixture)

TINY_VAN = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
TINY_FOCAL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
ALL = {name: TINY_VAN if name.startswith('van_') else TINY_FOCAL
       for name in timm.list_models(['van_*', 'focal_*', 'focalv2_*'])}


def comparable(cfg) -> dict:
    """The pretrained_cfg without where the weights came from, as JSON stores it."""
    return json.loads(json.dumps(filter_pretrained_cfg(dict(cfg), remove_source=True, remove_null=True)))


def saved(name, folder, **kwargs):
    model = timm.create_model(name, **ALL[name], **kwargs).eval()
    torch.nn.init.normal_(model.get_classifier().weight)  # not the zero-bias init alone: weights must travel
    save_for_hf(model, folder)
    return model


def assert_same(model, rebuilt):
    x = torch.randn(1, 3, 64, 64)
    assert type(rebuilt) is type(model)
    # the exported cfg describes the exported weights: their number of classes
    assert comparable(rebuilt.pretrained_cfg) == dict(comparable(model.pretrained_cfg), num_classes=model.num_classes)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))


def test_all_sixteen():
    assert len(ALL) == 16


@pytest.mark.parametrize('name', sorted(ALL))
def test_local_dir_round_trip(name, tmp_path):
    model = saved(name, tmp_path / name)
    assert_same(model, timm.create_model(f'local-dir:{tmp_path / name}', pretrained=True))


@pytest.mark.parametrize('name', ['van_b2', 'focal_tiny_patch4_window7_224', 'focalv2_tiny_useconv_patch4_window7_224'])
def test_hf_hub_round_trip_through_a_cache_on_disk(name, tmp_path, offline_hub):  # noqa: F811
    folder = tmp_path / 'export'
    model = saved(name, folder, num_classes=7)
    repo_id = f'someone/{name}-tiny'
    add_repo(offline_hub, repo_id, {f.name: f for f in folder.iterdir()})
    assert_same(model, timm.create_model(f'hf-hub:{repo_id}', pretrained=True))


def test_fine_tuned_at_384_round_trip(tmp_path):
    """A model built for 384 travels with its img_size, so its structure (stage 4's neighbour tables) returns."""
    model = saved('focal_tiny_patch4_window7_224', tmp_path, img_size=384)
    rebuilt = timm.create_model(f'local-dir:{tmp_path}', pretrained=True)
    assert rebuilt.stages[3].blocks[0].attn.relative_position_bias_table_to_neighbors is not None
    assert_same(model, rebuilt)


@pytest.mark.parametrize('name', ['van_b0', 'focal_tiny_patch4_window7_224'])
def test_channel_count_travels(name, tmp_path):
    """A 1-channel model exports input_size (1, H, W) and in_chans 1 (as timm's ConvNeXt), so that timm and
    transformers rebuild it, and their preprocessing, for one channel."""
    model = saved(name, tmp_path, in_chans=1)
    assert model.in_chans == 1
    config = json.loads((tmp_path / 'config.json').read_text())
    assert config['pretrained_cfg']['input_size'][0] == config['model_args']['in_chans'] == 1
    rebuilt = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert rebuilt.in_chans == 1 and resolve_model_data_config(rebuilt)['input_size'][0] == 1
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
