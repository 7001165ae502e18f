"""Focal attention over each window's neighbourhood (issue #21): the official keys, logits and gradients."""
import pytest
import timm
import torch
import torch.nn.functional as F

from conftest import FIXTURES, golden, relative_error
from van_focal.core import device as devices
from van_focal.core.saved_memory import saved_for_backward
from van_focal.models import _focal_ops, _focal_tables

GOLDEN = {
    'focal_v1_cfg': 'focal_tiny_patch4_window7_224',
    'focal_v1_useconv_cfg': 'focal_tiny_useconv_patch4_window7_224',
    'focal_v2_useconv_cfg': 'focalv2_tiny_useconv_patch4_window7_224',
}
SIZES = [(224, 224), (256, 256), (384, 384), (320, 480)]


@pytest.mark.parametrize('ws,expand', [(7, 3), (7, 1), (5, 2), (4, 3), (7, 6)])
def test_neighbourhood_cells_are_the_official_keys(ws, expand):
    """Own window, then the rolled ring in the official order, duplicates and wrap-around included."""
    own, ring = _focal_tables.neighbourhood_cells(ws, expand)
    for height, width in ((ws, ws), (ws, 2 * ws), (3 * ws, ws), (8 * ws, 8 * ws)):
        index, _ = _focal_tables._focal_v1_tables(height, width, ws, expand, 1, 'cpu')
        cells = index[:, :(ws + 2 * expand) ** 2]
        assert torch.equal(cells[:, own], _focal_tables._window_partition_index(height, width, ws))
        assert torch.equal(cells[:, ring], _focal_tables._rolled_neighbour_index(height, width, ws, expand))


@pytest.mark.parametrize('ws,expand', [(7, 3), (5, 2), (4, 3), (7, 0)])
def test_merged_bias_is_the_sum_over_a_cells_entries(ws, expand):
    own_cells, ring_cells = _focal_tables.neighbourhood_cells(ws, expand)
    own, ring = torch.randn(2, ws * ws, ws * ws), torch.randn(2, ws * ws, len(ring_cells))
    entries = torch.cat([own, ring], -1).exp()
    expected = torch.zeros(2, ws * ws, (ws + 2 * expand) ** 2).index_add(-1, torch.cat([own_cells, ring_cells]), entries)
    plan = _focal_tables.neighbourhood_merge_plan(ws, expand, torch.device('cpu'))
    merged = _focal_ops.merged_neighbourhood_bias(own, ring if expand else None, plan)
    torch.testing.assert_close(merged.exp(), expected, rtol=1e-5, atol=0)


def _golden_model(fixture):
    path, kwargs, x, logits = golden(fixture)
    model = timm.create_model(GOLDEN[fixture], drop_path_rate=0.,
                              **{k: kwargs[k] for k in ('embed_dim', 'depths', 'num_heads', 'num_classes')})
    timm.models.load_checkpoint(model, str(path), strict=True)
    return model, x, logits


@pytest.mark.parametrize('fixture', sorted(GOLDEN))
def test_golden_logits_at_every_size_inference_and_training(fixture):
    """Official logits at 224 (the official code fixes its size at build time), and at other sizes the logits of
    the gather over the official selection before #21 (tests/fixtures/make_golden_sizes.py); in eval mode and
    through the training path (`_WindowAttention`, `gelu_linear`)."""
    model, x, logits = _golden_model(fixture)
    others = torch.load(FIXTURES / f'{fixture}_sizes_golden.pt')
    for h, w in SIZES:
        if (h, w) != (224, 224):
            x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
            logits = others[f'{h}x{w}']
        with torch.no_grad():
            assert relative_error(model.eval()(x), logits) <= 1e-5, (h, w)
        if (h, w) in ((224, 224), (320, 480)):
            assert relative_error(model.train()(x).detach(), logits) <= 1e-5, (h, w)


def _plain(monkeypatch):
    """Attention and MLP through autograd's own backward (the path taken with dropout, on the NPU, when compiled)."""
    monkeypatch.setattr(_focal_ops, '_saving_inputs', lambda *args: False)
    monkeypatch.setattr(_focal_ops, '_gelu_linear_function', lambda h, w, b: _focal_ops.routed_linear(F.gelu(h), w, b))


@pytest.mark.parametrize('name', sorted(set(GOLDEN.values())))
@pytest.mark.parametrize('size', [(112, 112), (96, 160)])  # wrap-around in one-window stages too
def test_gradients_match_the_plain_path(name, size, monkeypatch):
    torch.manual_seed(0)
    model = timm.create_model(name, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), num_classes=5,
                              drop_path_rate=0.).train()
    with torch.no_grad():  # non-trivial biases: a wrong merge or mask would show
        for n, p in model.named_parameters():
            if 'relative_position' in n:
                p.normal_()
    x = torch.randn(1, 3, *size)

    def grads():
        model.zero_grad(set_to_none=True)
        out, saved = saved_for_backward(lambda: model(x), model.parameters())
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters()}, saved

    out, ours, saved = grads()
    with monkeypatch.context() as m:
        _plain(m)
        plain_out, plain, plain_saved = grads()
    assert relative_error(out, plain_out) <= 1e-5
    for n, g in plain.items():
        assert relative_error(ours[n], g) <= 1e-4, n  # float32 sums in another order
    assert saved < 0.9 * plain_saved  # tiny models: the per-batch biases weigh more than at full size


def test_attention_dropout_takes_the_plain_path():
    model = timm.create_model('focal_tiny_patch4_window7_224', embed_dim=16, depths=(1, 1, 1, 1),
                              num_heads=(1, 1, 1, 1), num_classes=3, attn_drop_rate=0.5).train()
    model(torch.randn(1, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if 'head' not in n or p.requires_grad)


@pytest.mark.parametrize('name,float32_softmax', [('focal_tiny_patch4_window7_224', False),
                                                   ('focalv2_tiny_useconv_patch4_window7_224', False),
                                                   ('focal_tiny_patch4_window7_224', True)])
def test_autocast_bfloat16_saves_memory_and_matches_the_plain_path(name, float32_softmax, monkeypatch):
    """Under autocast the input-saving attention and GELU-linear serve too (inputs cast as autocast casts the plain
    path's ops, outside their autograd Functions): the plain path's logits and gradients within bfloat16 rounding,
    fewer bytes saved for backward. With float32_softmax, the backward's softmax in float32, as where autocast
    keeps softmax in float32 (CUDA)."""
    if float32_softmax:
        probe = devices.autocast_op_dtype
        monkeypatch.setattr(devices, 'autocast_op_dtype',
                            lambda *args: torch.float32 if args[2] == 'softmax' else probe(*args))
    torch.manual_seed(0)
    model = timm.create_model(name, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), num_classes=5,
                              drop_path_rate=0.).train()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if 'relative_position' in n:
                p.normal_()
    x = torch.randn(1, 3, 112, 112)

    def grads():
        model.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out, saved = saved_for_backward(lambda: model(xg), model.parameters())
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), xg.grad, torch.cat([p.grad.flatten() for p in model.parameters()]), saved

    out, x_grad, param_grads, saved = grads()
    with monkeypatch.context() as m:
        _plain(m)
        plain_out, plain_x_grad, plain_param_grads, plain_saved = grads()
    assert out.dtype == plain_out.dtype == torch.bfloat16
    assert relative_error(out, plain_out) <= 1e-2
    # the backward's matmuls and softmax in bfloat16 where the plain path's CPU attention computes in float32:
    # both paths are this far from the float32 gradients
    assert relative_error(x_grad, plain_x_grad) <= 3e-2
    assert relative_error(param_grads, plain_param_grads) <= 3e-2
    assert saved < 0.9 * plain_saved
