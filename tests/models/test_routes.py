"""Route choice by measurement (van_focal.models._routes) and the routes themselves: every route of every op
gives the plain computation's outputs and gradients, and the official logits."""
import itertools
import time

import pytest
import timm
import torch
import torch.nn as nn
import torch.utils.flop_counter

from conftest import golden, relative_error
from van_focal.models import _routes as routes
from van_focal.models._depthwise import depthwise_conv
from van_focal.models._pointwise import PointwiseConv

CPU = torch.device('cpu')


@pytest.fixture(autouse=True)
def _fresh_choices():
    routes.clear()
    yield
    routes.clear()


def test_the_faster_route_is_chosen_once_per_key_and_kept():
    calls = []

    def route(name, seconds):
        def run():
            calls.append(name)
            time.sleep(seconds)
            return name
        return run

    candidates = {'slow': route('slow', 0.02), 'fast': route('fast', 0.0)}
    assert routes.run('op', ('k', 1), candidates, CPU) == 'fast'
    timed_calls = len(calls)
    assert calls.count('slow') == 1 + routes.TIMED_ROUNDS  # one untimed call, then the timed rounds
    assert routes.run('op', ('k', 1), candidates, CPU) == 'fast'
    assert calls[timed_calls:] == ['fast']  # cached: no more timing
    assert routes.chosen() == {'op': {'fast': 1}}
    assert routes.describe_chosen() == 'op: fast x1'
    with routes.forced(op='slow'):
        assert routes.run('op', ('k', 1), candidates, CPU) == 'slow'
    assert routes.run('op', ('k', 1), candidates, CPU) == 'fast'


def test_the_first_route_is_kept_unless_another_is_clearly_faster():
    def sleeper(seconds):
        return lambda: time.sleep(seconds)
    assert routes.choose('op', 'close', {'first': sleeper(0.02), 'other': sleeper(0.0196)}, CPU) == 'first'
    assert routes.choose('op', 'clear', {'first': sleeper(0.02), 'other': sleeper(0.01)}, CPU) == 'other'


def test_default_setting_takes_the_first_route_untimed(monkeypatch):
    monkeypatch.setenv('VAN_FOCAL_ROUTES', 'default')
    calls = []
    candidates = {'first': lambda: calls.append('first') or 1, 'second': lambda: calls.append('second') or 2}
    assert routes.run('op', 'k', candidates, CPU) == 1
    assert calls == ['first']


def test_keys_tell_layout_grad_and_shape_apart():
    x = torch.randn(2, 4, 5, 5)
    keys = {routes.key_of(x), routes.key_of(x.contiguous(memory_format=torch.channels_last)),
            routes.key_of(x.requires_grad_()), routes.key_of(torch.randn(2, 4, 5, 6)), routes.key_of(x, d=3)}
    assert len(keys) == 5


DW_ROUTES = [dict(zip(('dilated_dw_conv', 'dw_conv_grad_input', 'dw_conv_grad_weight'), combo))
             for combo in itertools.product(('onednn', 'interleaved'), ('onednn', 'flipped_forward'),
                                            ('onednn', 'interleaved'))]


@pytest.mark.parametrize('forced_routes', DW_ROUTES, ids=lambda r: '-'.join(r.values()))
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
def test_every_depthwise_route_is_the_conv(forced_routes, channels_last):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for kernel, dilation, size in ((7, 3, (13, 17)), (7, 3, (7, 7)), (5, 1, (11, 9)), (3, 1, (8, 8))):
        conv = nn.Conv2d(6, 6, kernel, padding=dilation * (kernel // 2), dilation=dilation, groups=6)
        x = torch.randn(3, 6, *size).contiguous(memory_format=memory_format).requires_grad_()
        reference = conv(x)
        grad = torch.randn_like(reference)
        expected = torch.autograd.grad(reference, (x, conv.weight, conv.bias), grad)
        with routes.forced(**forced_routes):
            out = depthwise_conv(x, conv.weight, conv.bias, dilation)
            got = torch.autograd.grad(out, (x, conv.weight, conv.bias), grad)
            with torch.no_grad():
                assert relative_error(depthwise_conv(x, conv.weight, conv.bias, dilation), reference) <= 1e-6
        assert out.shape == reference.shape and relative_error(out, reference) <= 1e-6
        for g, e in zip(got, expected):
            assert g.shape == e.shape and relative_error(g, e) <= 1e-5


@pytest.mark.parametrize('route', ['onednn', 'gemm'])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('bias', [True, False])
def test_every_pointwise_route_is_the_conv(route, channels_last, bias):
    conv = PointwiseConv(6, 10, bias=bias)
    x = torch.randn(3, 6, 5, 7).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x.requires_grad_()
    params = (x, conv.weight) + ((conv.bias,) if bias else ())
    reference = nn.functional.conv2d(x, conv.weight, conv.bias)
    grad = torch.randn_like(reference)
    expected = torch.autograd.grad(reference, params, grad)
    with routes.forced(pointwise_conv=route):
        out = conv(x)
        got = torch.autograd.grad(out, params, grad)
    assert relative_error(out, reference) <= 1e-6
    for g, e in zip(got, expected):
        assert relative_error(g, e) <= 1e-6


@pytest.mark.parametrize('forward_route', ['onednn', 'interleaved'])
@pytest.mark.parametrize('pointwise_route', ['onednn', 'gemm'])
def test_official_logits_through_every_forward_route(forward_route, pointwise_route):
    path, kwargs, x, logits = golden('van_tiny_cfg')
    model = timm.create_model('van_b0', embed_dims=kwargs['embed_dims'], depths=kwargs['depths'],
                              num_classes=kwargs['num_classes'])
    timm.models.load_checkpoint(model, str(path))
    with routes.forced(dilated_dw_conv=forward_route, pointwise_conv=pointwise_route), torch.no_grad():
        assert relative_error(model.eval()(x), logits) <= 1e-5


def test_measured_routes_train_as_the_plain_convs(monkeypatch):
    """A whole VAN training step with measured routes has the gradients of plain convs."""
    torch.manual_seed(0)
    model = timm.create_model('van_b0', embed_dims=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_classes=5)
    x = torch.randn(2, 3, 64, 48).contiguous(memory_format=torch.channels_last)

    def grads():
        model.zero_grad()
        model(x).logsumexp(1).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    measured = grads()
    assert set(routes.chosen()) == {'conv_gelu', 'dilated_dw_conv', 'dw_conv_grad_input', 'dw_conv_grad_weight', 'pointwise_conv',
                                   'pointwise_conv_grads'}
    monkeypatch.setattr(routes, 'capturing_graph', lambda: True)
    for got, expected in zip(measured, grads()):
        # gradients of the biases ahead of a BatchNorm are rounding noise (1e-9): absolute tolerance for those
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_depthwise_routes_under_cpu_autocast():
    conv = nn.Conv2d(4, 4, 7, padding=9, dilation=3, groups=4)
    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = depthwise_conv(x, conv.weight, conv.bias, 3)
        reference = conv(x)
    assert out.dtype == reference.dtype == torch.bfloat16 and relative_error(out.float(), reference.float()) <= 1e-2
    out.float().sum().backward()
    assert x.grad.dtype == conv.weight.grad.dtype == torch.float32


def test_first_use_inside_activation_checkpointing_trains_as_without():
    """Route timers run forward and backward; inside timm's (non-reentrant) checkpointing they must not
    leave tensors in the checkpoint's keeping, or its recomputation would not match."""
    torch.manual_seed(0)
    model = timm.create_model('van_b0', embed_dims=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_classes=5)
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 40, 40)
    model(x).sum().backward()  # first use: every route timed under the checkpoints
    assert routes.chosen()
    checkpointed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(False)
    model(x).sum().backward()
    for got, expected in zip(checkpointed, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_depthwise_double_backward_is_the_convs():
    conv = nn.Conv2d(4, 4, 7, padding=9, dilation=3, groups=4).double()
    x = torch.randn(2, 4, 11, 13, dtype=torch.float64, requires_grad=True)

    def grad_norm(fn):
        g, = torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), (x, conv.weight))

    for got, expected in zip(grad_norm(lambda t: depthwise_conv(t, conv.weight, conv.bias, 3)), grad_norm(conv)):
        torch.testing.assert_close(got, expected)


def test_no_timing_under_autocast_or_a_dispatch_mode():
    conv = PointwiseConv(4, 6)
    x = torch.randn(2, 4, 5, 5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        conv(x)
    assert routes.chosen() == {} and counter.get_total_flops() == 2 * 2 * 4 * 6 * 25


def test_a_cropped_channels_last_map_keeps_its_layout_name():
    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    assert routes.layout(x) == routes.layout(x[:, :, :7, :7]) == 'channels_last'
    assert routes.layout(x.contiguous()) == 'contiguous' and routes.layout(x.contiguous()[:, :, :7, :7]) == 'strided'
