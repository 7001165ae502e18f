"""VAN's block saving fewer activations for backward (issue #21, `van_focal.models._van_ops`): the same
outputs and gradients as autograd's path through the plain block, and fewer bytes saved."""
import pytest
import timm
import torch
import torch.nn as nn

from conftest import relative_error
from van_focal.core.saved_memory import saved_for_backward
from van_focal.models import _van_ops

SMALL = dict(embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), mlp_ratios=(8, 8, 4, 4), num_classes=5)


def _model(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model('van_b0', **{**SMALL, **kwargs})
    with torch.no_grad():  # layer scales and BatchNorm away from their initial values: a wrong term would show
        for name, p in model.named_parameters():
            if 'layer_scale' in name or 'norm' in name:
                p.uniform_(0.5, 1.5)
    return model


def _run(model, x, plain: bool, monkeypatch, seed: int = 1, autocast: bool = False):
    """(output, {name: gradient}, input gradient, bytes saved for backward) of one forward and backward."""
    with monkeypatch.context() as m:
        if plain:
            m.setattr(_van_ops, 'saves_less', lambda block, x: False)
        model.zero_grad(set_to_none=True)
        x = x.detach().clone().requires_grad_(True)
        torch.manual_seed(seed)  # the same drop-path draws on both paths
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out, saved = saved_for_backward(lambda: model(x), model.parameters())
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters()}, x.grad, saved


def _assert_same_gradients(ours, plain, rtol, floor=1e-2):
    out, grads, x_grad, _ = ours
    plain_out, plain_grads, plain_x_grad, _ = plain
    assert relative_error(out.float(), plain_out.float()) <= rtol
    assert relative_error(x_grad.float(), plain_x_grad.float()) <= rtol
    # a bias followed by a conv and BatchNorm (the downsampling convs', the stage norms') has a true gradient of 0:
    # both paths give rounding noise there, so each error is relative to at least `floor` of the largest gradient
    floor = floor * max(float(g.abs().max()) for g in plain_grads.values())
    for name, g in plain_grads.items():
        assert float((grads[name] - g).abs().max()) <= rtol * max(float(g.abs().max()), floor), name


@pytest.mark.parametrize('layout', [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('act_layer,drop_path_rate', [('gelu', 0.), ('gelu', 0.3), ('gelu_tanh', 0.)])
def test_gradients_match_the_plain_block(layout, act_layer, drop_path_rate, monkeypatch):
    model = _model(act_layer=act_layer, drop_path_rate=drop_path_rate).train().to(memory_format=layout)
    x = torch.randn(2, 3, 64, 48).contiguous(memory_format=layout)
    ours, plain = _run(model, x, False, monkeypatch), _run(model, x, True, monkeypatch)
    _assert_same_gradients(ours, plain, rtol=1e-4)  # float32 sums in another order
    assert ours[3] < 0.6 * plain[3]


def test_every_draw_of_drop_path_matches(monkeypatch):
    """Stochastic depth drops whole branches per image: over many draws, every pattern of kept and dropped
    branches gives autograd's gradients."""
    model = _model(drop_path_rate=0.5, depths=(1, 1, 1, 1)).train()
    x = torch.randn(4, 3, 32, 32)
    for seed in range(12):
        _assert_same_gradients(_run(model, x, False, monkeypatch, seed), _run(model, x, True, monkeypatch, seed), 1e-4)


def test_eval_mode_input_gradients_match(monkeypatch):
    """BatchNorm on running statistics, gradients for the input only (saliency, adversarial examples)."""
    model = _model().eval().requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    ours, plain = _run(model, x, False, monkeypatch), _run(model, x, True, monkeypatch)
    assert relative_error(ours[2], plain[2]) <= 1e-4
    assert ours[3] < plain[3]


def test_bfloat16_autocast_matches_and_saves_less(monkeypatch):
    """Under autocast the functions cast as autocast casts the convs: the plain path's values within bfloat16's
    rounding, and still fewer bytes saved."""
    model = _model().train()
    x = torch.randn(2, 3, 64, 64)
    ours, plain = _run(model, x, False, monkeypatch, autocast=True), _run(model, x, True, monkeypatch, autocast=True)
    assert ours[0].dtype == plain[0].dtype
    _assert_same_gradients(ours, plain, rtol=5e-2, floor=1e-2)
    assert ours[3] < 0.6 * plain[3]


def test_plain_block_where_the_saving_path_does_not_serve():
    """MLP dropout in training, other activations, no gradients, graph capture: the plain block."""
    x = torch.randn(1, 3, 32, 32)
    model = _model(proj_drop_rate=0.1).train()
    assert not _van_ops.saves_less(model.stages[0].blocks[0], x)
    assert _van_ops.saves_less(model.eval().stages[0].blocks[0], x)  # dropout is off in eval
    assert not _van_ops.saves_less(_model(act_layer='relu').stages[0].blocks[0], x)
    with torch.no_grad():
        assert not _van_ops.saves_less(model.stages[0].blocks[0], x)
    frozen = _model().requires_grad_(False)
    assert not _van_ops.saves_less(frozen.stages[0].blocks[0], x)
    assert not _van_ops.saves_less(_model(low_memory=False).train().stages[0].blocks[0], x)
    model = _model().train()
    model.set_low_memory(False)
    assert not any(_van_ops.saves_less(block, x) for block in model.stages[0].blocks)
    model.set_low_memory(True)
    assert all(_van_ops.saves_less(block, x) for block in model.stages[0].blocks)


def test_double_backward_matches_the_plain_block(monkeypatch):
    """The functions' backward is made of differentiable ops: a gradient penalty gets autograd's values."""
    model = _model().train()
    x = torch.randn(2, 3, 64, 64)

    def penalty(plain: bool):
        with monkeypatch.context() as m:
            if plain:
                m.setattr(_van_ops, 'saves_less', lambda block, x: False)
            model.zero_grad(set_to_none=True)
            xg = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model(xg).pow(2).sum(), xg, create_graph=True)
            g.pow(2).sum().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    ours, plain = penalty(False), penalty(True)
    floor = 1e-3 * max(float(g.abs().max()) for g in plain.values())
    for name, g in plain.items():
        assert float((ours[name] - g).abs().max()) <= 1e-3 * max(float(g.abs().max()), floor), name
