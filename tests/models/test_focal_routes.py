"""Focal's measured routes (attention as SDPA or explicit matmuls, window pooling as einsum or a strided
conv, linear layers as addmm or a 1x1 conv, the q/k/v gather's backward through a buffer or in place):
every route gives the official logits, and a training step's gradients equal the plain path's."""
import pytest
import timm
import torch

from conftest import golden, relative_error
from van_focal.models import _routes as routes
from van_focal.models import _focal_ops, _focal_tables
from test_focal import GOLDEN, _small

ATTENTION_ROUTES = ['sdpa', 'matmuls']
POOL_ROUTES = ['einsum', 'strided_conv']
GRAD_ROUTES = ['buffer', 'in_place']
LINEAR_ROUTES = ['addmm', 'conv1x1']
SMALL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), num_classes=10, drop_path_rate=0.)


@pytest.mark.parametrize('route, pool, linear', list(zip(ATTENTION_ROUTES, POOL_ROUTES, LINEAR_ROUTES)))
@pytest.mark.parametrize('fixture', sorted(GOLDEN))
def test_every_route_gives_the_official_logits(fixture, route, pool, linear):
    path, kwargs, x, logits = golden(fixture)
    model = timm.create_model(GOLDEN[fixture], **_small(kwargs)).eval()
    timm.models.load_checkpoint(model, str(path), strict=True)
    with routes.forced(biased_attention=route, window_pool=pool, linear=linear):
        with torch.no_grad():
            assert relative_error(model(x), logits) <= 1e-5
        # with gradients: another route key, and the q/k/v gather's autograd Function
        assert relative_error(model(x).detach(), logits) <= 1e-5


def _gradients(model, x):
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _plain_gather(monkeypatch):
    monkeypatch.setattr(_focal_ops, '_gather_qkv_function', _focal_ops._gather_qkv_plain)


@pytest.mark.parametrize('name, size', [('focal_tiny_patch4_window7_224', 64),
                                        ('focalv2_tiny_useconv_patch4_window7_224', 72)])  # 72: padded windows
def test_training_gradients_equal_the_plain_path(monkeypatch, name, size):
    model = timm.create_model(name, **SMALL).train()
    x = torch.randn(2, 3, size, size)
    with routes.forced(biased_attention='sdpa', window_pool='einsum', linear='addmm'), monkeypatch.context() as plain:
        _plain_gather(plain)
        reference = _gradients(model, x)
    routes.clear()
    combos = zip(ATTENTION_ROUTES, GRAD_ROUTES, POOL_ROUTES, LINEAR_ROUTES)
    for forced in [dict(biased_attention=a, gather_kv_grad=g, window_pool=p, linear=li) for a, g, p, li in combos] + [{}]:
        with routes.forced(**forced):  # {}: measured, every route run several times on the first inputs
            got = _gradients(model, x)
        assert got.keys() == reference.keys()
        for n, g in got.items():
            torch.testing.assert_close(g, reference[n], rtol=1e-4, atol=1e-6, msg=f'{forced}: {n}')
    assert set(routes.chosen()) == {'biased_attention', 'gather_kv_grad', 'window_pool', 'linear'}


def test_gather_backward_adds_repeated_keys():
    """Focal v1's rolled neighbours repeat tokens: their key/value gradients must add up."""
    qkv = torch.randn(2, 14 * 14 + 5, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    index, _ = _focal_tables.focal_v1_tables(14, 14, 7, 3, 3, torch.device('cpu'))
    assert index.unique().numel() < index.numel()
    plain = torch.autograd.grad([t.square().sum() for t in _focal_ops._gather_qkv_plain(qkv, index, 14, 14, 7)], qkv)
    for route in GRAD_ROUTES:
        with routes.forced(gather_kv_grad=route):
            outputs = _focal_ops._GatherQKV.apply(qkv, index, 14, 14, 7)
            ours = torch.autograd.grad([t.square().sum() for t in outputs], qkv)
        torch.testing.assert_close(ours, plain, rtol=0, atol=1e-12)


def test_measured_route_is_cached_per_key():
    routes.clear()
    model = timm.create_model('focal_tiny_patch4_window7_224', **SMALL).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    for op, names in (('biased_attention', ATTENTION_ROUTES), ('window_pool', POOL_ROUTES),
                      ('linear', LINEAR_ROUTES)):
        chosen = routes.chosen()[op]
        assert set(chosen) <= set(names) and sum(chosen.values()) >= 4  # at least one key per stage
