"""Focal Transformer: sizes, official logits, any input resolution."""
import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import van_focal
from conftest import golden, relative_error

# Official parameter counts (1000 classes) and GFLOPs (MACs) at 224.
FOCAL = {
    'focal_tiny_patch4_window7_224': (28_880_000, 4.9),
    'focal_small_patch4_window7_224': (51_140_000, 9.4),
    'focal_base_patch4_window7_224': (89_820_000, 16.4),
    'focal_tiny_useconv_patch4_window7_224': (30_830_000, None),
    'focal_small_useconv_patch4_window7_224': (53_090_000, None),
    'focal_base_useconv_patch4_window7_224': (93_270_000, None),
    'focalv2_tiny_useconv_patch4_window7_224': (30_220_000, 5.0),
    'focalv2_small_useconv_patch4_window7_224': (51_530_000, 9.4),
    'focalv2_base_useconv_patch4_window7_224': (91_190_000, 16.4),
}
# golden fixture -> the registered model whose structure it has
GOLDEN = {
    'focal_v1_cfg': 'focal_tiny_patch4_window7_224',
    'focal_v1_useconv_cfg': 'focal_tiny_useconv_patch4_window7_224',
    'focal_v2_useconv_cfg': 'focalv2_tiny_useconv_patch4_window7_224',
}
SMALL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))


def test_registry_lists_nine():
    assert sorted(timm.list_models(['focal_*', 'focalv2_*'])) == sorted(FOCAL)
    assert len(timm.list_models(['focal_*', 'focalv2_*'], pretrained=True)) == 9 + 6  # official, PaddleViT's


@pytest.mark.parametrize('name', sorted(FOCAL))
def test_parameter_count_and_flops(name):
    params, gmacs = FOCAL[name]
    with torch.device('meta'):
        model = timm.create_model(name).eval()
        assert round(sum(p.numel() for p in model.parameters()), -4) == params
        if gmacs:
            with FlopCounterMode(display=False) as counter:
                model(torch.empty(1, 3, 224, 224))
            assert counter.get_total_flops() / 2e9 == pytest.approx(gmacs, rel=0.08)


def test_pretrained_cfg():
    cfg = timm.create_model('focalv2_small_useconv_patch4_window7_224', **SMALL).pretrained_cfg
    assert cfg['url'].endswith('/focal-transformer/imagenet1k/focalv2-small-useconv-is224-ws7.pth')
    assert cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bicubic'
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['std'] == timm.data.IMAGENET_DEFAULT_STD


def _small(kwargs):
    return {k: kwargs[k] for k in ('embed_dim', 'depths', 'num_heads', 'num_classes')}


@pytest.mark.parametrize('fixture', sorted(GOLDEN))
def test_golden_logits_load_checkpoint(fixture):
    path, kwargs, x, logits = golden(fixture)
    model = timm.create_model(GOLDEN[fixture], **_small(kwargs)).eval()
    result = timm.models.load_checkpoint(model, str(path), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        assert relative_error(model(x), logits) <= 1e-5


@pytest.mark.parametrize('fixture', sorted(GOLDEN))
def test_golden_logits_pretrained_file_overlay(fixture):
    path, kwargs, x, logits = golden(fixture)
    model = timm.create_model(GOLDEN[fixture], pretrained=True, **_small(kwargs),
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=kwargs['num_classes'])).eval()
    with torch.no_grad():
        assert relative_error(model(x), logits) <= 1e-5


def test_golden_logits_pretrained_from_url_cache(tmp_path, monkeypatch):
    """The real `pretrained=True` path (URL download), served from torch.hub's cache we fill."""
    path, kwargs, x, logits = golden('focal_v2_useconv_cfg')
    name = GOLDEN['focal_v2_useconv_cfg']
    url = timm.create_model(name, **SMALL).pretrained_cfg['url']
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    (tmp_path / 'hub' / 'checkpoints' / url.rsplit('/', 1)[1]).write_bytes(path.read_bytes())
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    model = timm.create_model(name, pretrained=True, **_small(kwargs),
                              pretrained_cfg_overlay=dict(num_classes=kwargs['num_classes'])).eval()
    with torch.no_grad():
        assert relative_error(model(x), logits) <= 1e-5


def test_official_training_config_is_allowed_other_objects_are_not(tmp_path):
    path, kwargs, _, _ = golden('focal_v1_cfg')
    checkpoint = torch.load(path, weights_only=True)  # holds a yacs CfgNode: allowed without yacs
    assert checkpoint['config']['MODEL']['NAME'] == 'focal_v1_cfg'
    checkpoint['scheduler'] = torch.optim.lr_scheduler.ConstantLR  # any other pickled object is refused
    risky = tmp_path / 'risky.pth'
    torch.save(checkpoint, risky)
    model = timm.create_model(GOLDEN['focal_v1_cfg'], **_small(kwargs))
    with pytest.raises(van_focal.CheckpointError, match='pickled Python objects.*ConstantLR.*trusted=True'):
        van_focal.load_checkpoint(model, risky)
    van_focal.load_checkpoint(model, risky, trusted=True)


def test_official_buffers_are_recomputed_not_required():
    path, kwargs, x, logits = golden('focal_v2_useconv_cfg')
    state_dict = torch.load(path, weights_only=True)['model']
    weights_only = {k: v for k, v in state_dict.items() if 'topk_cloest' not in k and 'window_coords' not in k}
    model = timm.create_model(GOLDEN['focal_v2_useconv_cfg'], **_small(kwargs)).eval()
    model.load_state_dict(weights_only, strict=True)
    with torch.no_grad():
        assert relative_error(model(x), logits) <= 1e-5


def test_wrong_architecture_is_one_clear_error():
    path, kwargs, _, _ = golden('focal_v1_cfg')
    model = timm.create_model('focal_tiny_useconv_patch4_window7_224', **_small(kwargs))
    with pytest.raises(van_focal.CheckpointError, match=r'does not fit focal_tiny_useconv_patch4_window7_224: .*of other shape') as error:
        van_focal.load_checkpoint(model, path)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize('name', sorted(GOLDEN.values()))
@pytest.mark.parametrize('size', [(224, 224), (256, 256), (384, 384), (320, 480), (800, 1216), (61, 83)])
def test_any_resolution(name, size):
    model = timm.create_model(name, **SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
        feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128]


def test_index_tables_are_cached_per_size():
    from van_focal.models._focal_tables import _focal_v1_tables
    model = timm.create_model('focal_tiny_patch4_window7_224', **SMALL).eval()
    _focal_v1_tables.cache_clear()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(1, 3, 224, 224))
    assert _focal_v1_tables.cache_info().misses == 4  # one per stage, then only hits


def test_differing_stored_topk_indices_are_reported(caplog):
    path, kwargs, x, logits = golden('focal_v2_useconv_cfg')
    state_dict = torch.load(path, weights_only=True)['model']
    model = timm.create_model(GOLDEN['focal_v2_useconv_cfg'], **_small(kwargs)).eval()
    with caplog.at_level('WARNING'):
        model.load_state_dict(state_dict)
    assert 'top-K' not in caplog.text  # the fixture's indices were computed by this torch's topk
    key = 'layers.0.blocks.0.attn.topk_cloest_indice_0'
    state_dict[key] = state_dict[key].clone()
    state_dict[key][0, -1] = state_dict[key][0, -1] + 1000  # another token for one window
    with caplog.at_level('WARNING'):
        model.load_state_dict(state_dict)
    assert 'in 1 of' in caplog.text and 'top-K' in caplog.text


@pytest.mark.parametrize('name', ['focal_tiny_patch4_window7_224', 'focalv2_tiny_useconv_patch4_window7_224'])
def test_trains_after_an_inference_mode_forward(name):
    """The cached index tables made under inference_mode (validation) must serve training afterwards."""
    model = timm.create_model(name, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), num_classes=3)
    x = torch.randn(1, 3, 72, 88)
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).sum().backward()
