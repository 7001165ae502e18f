"""Weights loaded into a model built for another img_size or window size (fine-tuning at 384)."""
import logging

import pytest
import timm
import torch

import van_focal  # noqa: F401
from conftest import golden, relative_error

FOCAL_GOLDEN = {
    'focal_v1_cfg': 'focal_tiny_patch4_window7_224',
    'focal_v1_useconv_cfg': 'focal_tiny_useconv_patch4_window7_224',
    'focal_v2_useconv_cfg': 'focalv2_tiny_useconv_patch4_window7_224',
}
TINY_VAN = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
TINY_FOCAL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
ALL = {name: TINY_VAN if name.startswith('van_') else TINY_FOCAL
       for name in timm.list_models(['van_*', 'focal_*', 'focalv2_*'])}
FITTED = 'checkpoint fitted to'


def small(kwargs):
    return {k: kwargs[k] for k in ('embed_dim', 'depths', 'num_heads', 'num_classes')}


def fitted_lines(caplog):
    return [r.getMessage() for r in caplog.records if FITTED in r.getMessage()]


@pytest.mark.parametrize('fixture', FOCAL_GOLDEN)
def test_focal_224_weights_fine_tune_at_384(fixture, caplog):
    """As train.py builds it (`--model-kwargs img_size=384 --initial-checkpoint FILE`): the official 224
    checkpoint loads strictly; at 384 stage 4 attends to its neighbours too (v1), a table the file lacks."""
    path, kwargs, _, _ = golden(fixture)
    name = FOCAL_GOLDEN[fixture]
    with caplog.at_level(logging.INFO):
        model = timm.create_model(name, img_size=384, checkpoint_path=str(path), **small(kwargs))
    lines = fitted_lines(caplog)
    reference = timm.create_model(name, checkpoint_path=str(path), **small(kwargs)).state_dict()
    ours = model.state_dict()
    new = sorted(set(ours) - set(reference))
    if 'v2' in fixture:  # Focal-fast has no size-dependent parameters: nothing to adapt, nothing new to run
        assert new == [] and lines == [] and all(torch.equal(ours[k], v) for k, v in reference.items())
        return
    assert new == ['stages.3.blocks.0.attn.relative_position_bias_table_to_neighbors']
    assert len(lines) == 1 and '1 neighbour tables initialised' in lines[0] and 'stage 3' in lines[0]
    table = ours[new[0]]
    assert 0.01 < float(table.std()) < 0.03 and abs(float(table.mean())) < 0.01  # truncated normal, std 0.02
    assert all(torch.equal(ours[k], v) for k, v in reference.items())
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 3, 384, 384))).all()


@pytest.mark.parametrize('fixture', ['focal_v1_cfg', 'focal_v2_useconv_cfg'])
def test_focal_another_window_size(fixture, caplog):
    """window_size=12 at 384: every relative-position table and pooling weight is resized, the neighbour
    tables (whose shape follows the window) start afresh, as the official code starts them."""
    path, kwargs, _, _ = golden(fixture)
    with caplog.at_level(logging.INFO):
        model = timm.create_model(FOCAL_GOLDEN[fixture], img_size=384, window_size=12, **small(kwargs))
        timm.models.load_checkpoint(model, str(path), strict=True)
    lines = fitted_lines(caplog)
    assert len(lines) == 1 and 'window-pooling weights resized' in lines[0], lines
    attn = model.stages[0].blocks[0].attn
    assert attn.pool.fc.weight.shape == (1, 144)
    official = torch.load(path, weights_only=True)['model']['layers.0.blocks.0.pool_layers.0.weight']
    assert float(attn.pool.fc.weight.detach().sum()) == pytest.approx(float(official.sum()), rel=1e-5)
    if fixture == 'focal_v1_cfg':
        assert 'relative-position tables resized' in lines[0] and 'neighbour tables initialised' in lines[0]
        assert attn.relative_position_bias_table.shape == (23 * 23, attn.num_heads)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 3, 192, 192))).all()


@pytest.mark.parametrize('fixture', FOCAL_GOLDEN)
def test_built_size_unchanged(fixture, caplog):
    path, kwargs, x, logits = golden(fixture)
    with caplog.at_level(logging.INFO):
        model = timm.create_model(FOCAL_GOLDEN[fixture], checkpoint_path=str(path), **small(kwargs)).eval()
    assert fitted_lines(caplog) == []
    with torch.no_grad():
        assert relative_error(model(x), logits) <= 1e-5


def test_van_224_weights_at_384():
    """VAN has no size-dependent parameters: the same weights run at 384 (`--img-size 384`)."""
    path, kwargs, _, _ = golden('van_tiny_cfg')
    model = timm.create_model('van_b0', checkpoint_path=str(path), embed_dims=kwargs['embed_dims'],
                              depths=kwargs['depths'], num_classes=kwargs['num_classes']).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 384, 384))).all()


@pytest.mark.parametrize('name', sorted(ALL))
def test_every_model_loads_its_224_weights_at_384(name, caplog):
    size_kwargs = {} if name.startswith('van_') else dict(img_size=384)
    weights = timm.create_model(name, **ALL[name]).state_dict()
    model = timm.create_model(name, **ALL[name], **size_kwargs).eval()
    with caplog.at_level(logging.INFO):
        model.load_state_dict(weights, strict=True)
    assert len(fitted_lines(caplog)) == (1 if name.startswith('focal_') else 0)
