"""A conv and the element-wise op after it in one oneDNN pass (`van_focal.models._conv_act`): the values of
the separate ops, and the separate ops wherever the fused one does not apply."""
import pytest
import torch
import torch.nn as nn

from conftest import relative_error
from van_focal.models import _conv_act, _routes as routes
from van_focal.models._depthwise import DepthwiseConv
from van_focal.models._pointwise import PointwiseConv

LAYOUTS = [torch.contiguous_format, torch.channels_last]
CONVS = {'dw3': lambda: DepthwiseConv(16, 3), 'dw7_dilated3': lambda: DepthwiseConv(16, 7, dilation=3),
         'dw5_dilated2': lambda: DepthwiseConv(16, 5, dilation=2), 'pointwise': lambda: PointwiseConv(16, 24)}


def _fused_calls(monkeypatch) -> list:
    calls = []
    for name in ('_convolution_pointwise',):
        op = getattr(torch.ops.mkldnn, name)
        monkeypatch.setattr(_conv_act.torch.ops.mkldnn, name, _Counting(op, calls), raising=False)
    return calls


class _Counting:
    def __init__(self, op, calls):
        self.op, self.calls = op, calls
        self.binary = lambda *args: (calls.append('binary'), op.binary(*args))[1]

    def __call__(self, *args):
        self.calls.append('unary')
        return self.op(*args)


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('conv', sorted(CONVS))
@pytest.mark.parametrize('act', [nn.GELU(), nn.GELU(approximate='tanh')], ids=['erf', 'tanh'])
def test_conv_gelu_is_the_separate_ops(layout, conv, act, monkeypatch):
    torch.manual_seed(0)
    conv = CONVS[conv]()
    x = torch.randn(2, 16, 13, 11).contiguous(memory_format=layout)
    calls = _fused_calls(monkeypatch)
    with torch.inference_mode(), routes.forced(conv_gelu='onednn_fused'):
        out = _conv_act.conv_gelu(conv, act, x)
        expected = act(conv(x))
    assert calls == ['unary']
    assert out.shape == expected.shape and relative_error(out, expected) <= 1e-6


@pytest.mark.parametrize('layout', LAYOUTS)
def test_conv_mul_is_the_gate(layout, monkeypatch):
    torch.manual_seed(0)
    conv = PointwiseConv(16, 16)
    x, u = (torch.randn(2, 16, 9, 7).contiguous(memory_format=layout) for _ in range(2))
    calls = _fused_calls(monkeypatch)
    with torch.inference_mode(), routes.forced(conv_mul='onednn_fused'):
        out = _conv_act.conv_mul(conv, x, u)
    assert calls == ['binary'] and relative_error(out, u * conv(x).detach()) <= 1e-6


def test_linear_gelu_on_tokens(monkeypatch):
    torch.manual_seed(0)
    fc, act = nn.Linear(16, 40), nn.GELU()
    x = torch.randn(3, 50, 16)
    calls = _fused_calls(monkeypatch)
    with torch.inference_mode(), routes.forced(linear_gelu='onednn_fused'):
        out = _conv_act.linear_gelu(fc, act, x)
        expected = act(fc(x))
    assert calls == ['unary'] and out.shape == (3, 50, 40) and out.is_contiguous()
    assert relative_error(out, expected) <= 1e-6


def test_bfloat16_is_the_separate_ops():
    torch.manual_seed(0)
    conv = DepthwiseConv(16, 3).to(torch.bfloat16)
    x = torch.randn(2, 16, 12, 12, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), routes.forced(conv_gelu='onednn_fused'):
        out = _conv_act.conv_gelu(conv, nn.GELU(), x)
    assert out.dtype == torch.bfloat16 and relative_error(out.float(), nn.GELU()(conv(x)).float()) <= 2e-2


def test_separate_ops_where_fusion_does_not_apply(monkeypatch):
    """Gradients, other activations, autocast and graph capture: no fused call."""
    conv, x = DepthwiseConv(16, 3), torch.randn(1, 16, 8, 8)
    calls = _fused_calls(monkeypatch)
    with routes.forced(conv_gelu='onednn_fused', conv_mul='onednn_fused', linear_gelu='onednn_fused'):
        _conv_act.conv_gelu(conv, nn.GELU(), x).sum().backward()  # the weight needs a gradient
        assert conv.weight.grad is not None
        with torch.no_grad():
            _conv_act.conv_gelu(conv, nn.ReLU(), x)
            with torch.autocast('cpu', dtype=torch.bfloat16):
                assert _conv_act.conv_gelu(conv, nn.GELU(), x).dtype == torch.bfloat16
            monkeypatch.setattr(routes, 'capturing_graph', lambda: True)
            _conv_act.conv_gelu(conv, nn.GELU(), x)
            _conv_act.linear_gelu(nn.Linear(16, 4), nn.GELU(), torch.randn(2, 16))
    assert calls == []


def test_measured_choice_is_one_of_the_two():
    conv, x = PointwiseConv(16, 24), torch.randn(2, 16, 10, 10)
    routes.clear()
    with torch.inference_mode():
        _conv_act.conv_gelu(conv, nn.GELU(), x)
    assert set(routes.chosen()['conv_gelu']) <= {'separate', 'onednn_fused'}
