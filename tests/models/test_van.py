"""VAN: sizes, FLOPs, and the official checkpoints' logits through every loading path."""
import shutil

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import van_focal
from conftest import golden, relative_error

# Official parameter counts (1000 classes); van_b6 as its only published weights, OpenMMLab's 283.9 M
# (stage-3 width 480; the paper's 384 gives 199_829_416, see tests/models/test_foreign_weights.py).
VAN_PARAMS = {'van_b0': 4_105_800, 'van_b1': 13_861_800, 'van_b2': 26_578_472, 'van_b3': 44_765_608,
              'van_b4': 60_283_176, 'van_b5': 89_967_688, 'van_b6': 283_897_096}
VAN_GMACS = {'van_b0': 0.9, 'van_b1': 2.5, 'van_b2': 5.0, 'van_b3': 9.0, 'van_b4': 12.2}
GOLDEN = 'van_tiny_cfg'


def test_registry_lists_seven():
    assert timm.list_models('van_*') == sorted(VAN_PARAMS)
    assert {m.split('.')[0] for m in timm.list_models('van_*', pretrained=True)} == set(VAN_PARAMS)


@pytest.mark.parametrize('name', sorted(VAN_PARAMS))
def test_parameter_count(name):
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == VAN_PARAMS[name]


@pytest.mark.parametrize('name', sorted(VAN_GMACS))
def test_gmacs_at_224(name):
    with torch.device('meta'):
        model = timm.create_model(name).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 224, 224))
    assert counter.get_total_flops() / 2e9 == pytest.approx(VAN_GMACS[name], rel=0.06)


def test_pretrained_cfg_uses_vit_normalisation():
    cfg = timm.create_model('van_b2').pretrained_cfg
    assert cfg['mean'] == cfg['std'] == (0.5, 0.5, 0.5)
    assert cfg['crop_pct'] == 0.9 and cfg['interpolation'] == 'bicubic'
    assert cfg['hf_hub_id'] == 'Visual-Attention-Network/VAN-Base-original'
    assert cfg['hf_hub_filename'] == 'van_base_828.pth.tar'


def _small(kwargs, **extra):
    return dict(embed_dims=kwargs['embed_dims'], depths=kwargs['depths'], num_classes=kwargs['num_classes'], **extra)


def test_golden_logits_load_checkpoint():
    path, kwargs, x, logits = golden(GOLDEN)
    model = timm.create_model('van_b0', **_small(kwargs)).eval()
    result = timm.models.load_checkpoint(model, str(path), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        assert relative_error(model(x), logits) <= 1e-5


def test_golden_logits_pretrained_file_overlay():
    path, kwargs, x, logits = golden(GOLDEN)
    model = timm.create_model('van_b0', pretrained=True, **_small(kwargs),
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=kwargs['num_classes'])).eval()
    with torch.no_grad():
        assert relative_error(model(x), logits) <= 1e-5


def test_golden_logits_pretrained_from_hub_cache(tmp_path, monkeypatch):
    """The real `pretrained=True` path (HF hub download), served offline from a hub cache we lay out."""
    import huggingface_hub.constants as hub_constants
    path, kwargs, x, logits = golden(GOLDEN)
    repo = tmp_path / 'models--Visual-Attention-Network--VAN-Tiny-original'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text('0' * 40)
    (repo / 'snapshots' / ('0' * 40)).mkdir(parents=True)
    shutil.copy(path, repo / 'snapshots' / ('0' * 40) / 'van_tiny_754.pth.tar')
    monkeypatch.setattr(hub_constants, 'HF_HUB_OFFLINE', True)
    model = timm.create_model('van_b0', pretrained=True, cache_dir=tmp_path, **_small(kwargs),
                              pretrained_cfg_overlay=dict(num_classes=kwargs['num_classes'])).eval()
    with torch.no_grad():
        assert relative_error(model(x), logits) <= 1e-5


def test_checkpoint_written_by_timm_train_loads_with_and_without_ema(tmp_path):
    path, kwargs, x, logits = golden(GOLDEN)
    reference = timm.create_model('van_b0', **_small(kwargs)).eval()
    timm.models.load_checkpoint(reference, str(path))
    other = timm.create_model('van_b0', **_small(kwargs)).state_dict()
    saved = tmp_path / 'checkpoint-1.pth.tar'
    torch.save({'epoch': 1, 'arch': 'van_b0', 'state_dict': other, 'state_dict_ema': reference.state_dict(),
                'version': 2, 'metric': 0.0}, saved)
    for use_ema, expect_golden in ((True, True), (False, False)):
        model = timm.create_model('van_b0', **_small(kwargs)).eval()
        van_focal.load_checkpoint(model, saved, use_ema=use_ema)
        with torch.no_grad():
            assert (relative_error(model(x), logits) <= 1e-5) == expect_golden
