"""benchmark.py --roofline: the capture sees every FLOP-counted kernel of a step, in the right class, with
FLOPs that add up; the replay gives finite rates; the results file carries them."""
import json
import math
import sys
import time

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from scripts import REPO, error_of
from van_focal.cli import roofline
from van_focal.models import _routes as routes
from van_focal.cli.args import write_results

sys.path.insert(0, str(REPO))
import benchmark  # noqa: E402

SMALL_FOCAL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
MODELS = {'van_b0': ({}, 64), 'focal_tiny_patch4_window7_224': (SMALL_FOCAL, 224)}


# else measured choices between kernel classes (a 1x1 conv or a linear layer, SDPA or matmuls, ...)
PLAIN_ROUTES = dict(pointwise_conv='onednn', window_pool='einsum', linear='addmm', biased_attention='sdpa')


def _steps(name: str):
    """The model's inference and training steps as benchmark.py builds them (channels_last, batch 2)."""
    kwargs, size = MODELS[name]
    model = timm.create_model(name, num_classes=10, **kwargs).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)

    def infer():
        model.eval()
        with torch.inference_mode(), routes.forced(**PLAIN_ROUTES):
            model(x)

    def train():
        model.train()
        with routes.forced(**PLAIN_ROUTES):
            model(x).logsumexp(1).sum().backward()
    return infer, train


def _total(calls):
    return sum(c.count * c.flops for c in calls)


@pytest.mark.parametrize('name, infer_classes, train_classes', [
    ('van_b0', {'1x1_conv', 'depthwise_conv', 'dense_conv', 'linear'},
     {'1x1_conv', 'depthwise_conv', 'dense_conv', 'linear',
      '1x1_conv_backward', 'depthwise_conv_backward', 'dense_conv_backward', 'linear_backward'}),
    # training saves the q/k/v projection and runs the fused attention forward; its own backward recomputes
    # the probabilities as matmuls (no attention backward kernel)
    ('focal_tiny_patch4_window7_224', {'dense_conv', 'linear', 'attention'},
     {'dense_conv', 'linear', 'attention', 'dense_conv_backward', 'linear_backward'}),
])
def test_capture_classifies_every_counted_kernel_and_misses_no_flop(name, infer_classes, train_classes):
    infer, train = _steps(name)
    for step, expected in ((infer, infer_classes), (train, train_classes)):
        calls = roofline.capture(step)
        assert {c.kernel_class for c in calls} == expected
        with FlopCounterMode(display=False, custom_mapping=roofline.FORMULA_FIXES) as counter:
            step()
        assert _total(calls) == counter.get_total_flops()


def test_inference_flops_match_the_meta_devices_count():
    """The CPU's fused attention, which flop_registry lacks, is counted as the math path the meta device takes."""
    kwargs, size = MODELS['focal_tiny_patch4_window7_224']
    with torch.device('meta'):
        meta_model = timm.create_model('focal_tiny_patch4_window7_224', num_classes=10, **kwargs).eval()
        with FlopCounterMode(display=False) as counter:
            meta_model(torch.empty(2, 3, size, size))
    calls = roofline.capture(_steps('focal_tiny_patch4_window7_224')[0])
    assert any(c.kernel_class == 'attention' for c in calls)
    assert _total(calls) == counter.get_total_flops()


@pytest.mark.parametrize('groups', [1, 4, 16])
def test_conv_backward_counts_each_group_once(groups):
    """A conv's backward (input and weight gradients) costs twice its forward, grouped or not."""
    conv = nn.Conv2d(16, 32, 3, padding=1, groups=groups)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    forward = _total(roofline.capture(lambda: conv(x)))
    assert _total(roofline.capture(lambda: conv(x).sum().backward())) == 3 * forward


def test_replay_rates_are_finite_and_positive():
    van_steps = _steps('van_b0')
    for step in (*van_steps, _steps('focal_tiny_patch4_window7_224')[0]):
        calls = roofline.capture(step)
        start = time.perf_counter()
        step()
        step_seconds = time.perf_counter() - start
        row = roofline.measure(step, torch.device('cpu'), step_seconds=step_seconds, warmup=1, repeats=2)
        if step in van_steps:  # VAN-B0's stages repeat their blocks: repeated shapes are kept once
            assert len(calls) < sum(c.count for c in calls)
        assert row['roofline_distinct_calls'] == len(calls)
        assert row['roofline_step_gflop'] == round(_total(calls) / 1e9, 3)
        # the kernels' share of the step: not bounded by 100 here, where other work may slow the replay
        assert row['roofline_pct'] == pytest.approx(row['roofline_kernel_ms'] / 10 / step_seconds, rel=0.01, abs=0.1)
        assert row['roofline_pct'] > 0 and math.isfinite(row['roofline_gflops_per_sec'])
        assert row['roofline_gflops_per_sec'] > 0 and row['roofline_achieved_gflops_per_sec'] > 0
        shares = [v for k, v in row.items() if k.endswith('_flops_pct')]
        # (a class of a few kFLOP, such as a small head, can round to 0.0 GFLOP/s on a loaded machine)
        assert abs(sum(shares) - 100) < 0.5 and all(v >= 0 for k, v in row.items() if k.endswith('gflops_per_sec'))


def test_fused_attention_backward_replays():
    q, mask = torch.randn(2, 4, 49, 16, requires_grad=True), torch.randn(1, 4, 49, 49)
    calls = roofline.capture(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, mask).sum().backward())
    assert {c.kernel_class for c in calls} == {'attention', 'attention_backward'}
    roofline.replay(calls, torch.device('cpu'), warmup=1, repeats=1)
    assert all(c.seconds > 0 and c.flops > 0 for c in calls)


@pytest.mark.scripts
def test_benchmark_roofline_writes_its_fields(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('VAN_FOCAL_ROUTES', 'default')  # oneDNN's 1x1 convs, in the spawned child too
    results = tmp_path / 'bench.json'
    argv = ['--model', 'van_b0', '--bench', 'both', '--img-size', '64', '-b', '2', '--warmup', '1', '--iters', '1',
            '--repeats', '2', '--device', 'cpu', '--channels-last', '--roofline', '--results-file', str(results)]
    monkeypatch.setattr(sys, 'argv', ['benchmark.py'] + argv)
    benchmark.main()
    infer, train = json.loads(results.read_text())
    for row in (infer, train):
        assert 0 < row['roofline_pct'] and row['roofline_gflops_per_sec'] > 0
        assert row['roofline_1x1_conv_gflops_per_sec'] > 0 and row['roofline_depthwise_conv_flops_pct'] > 0
    assert 'roofline_depthwise_conv_backward_ms' in train and 'roofline_depthwise_conv_backward_ms' not in infer
    # the CPU's sub-grid dilated conv computes a few padded positions more than the meta device's count (2 % at 64²)
    assert infer['roofline_step_gflop'] == pytest.approx(2 * 2 * infer['gmacs'], rel=0.03)
    out = capsys.readouterr().out
    assert 'depth-wise conv (backward)' in out and '% of the' in out


def test_csv_results_hold_every_rows_columns(tmp_path):
    path = tmp_path / 'bench.csv'
    write_results(str(path), [dict(model='a', bench='infer'), dict(model='a', bench='train', roofline_pct=50.)])
    assert path.read_text().splitlines() == ['model,bench,roofline_pct', 'a,infer,', 'a,train,50.0']


@pytest.mark.scripts
def test_roofline_refuses_torchcompile(monkeypatch, capsys):
    def main(argv):
        monkeypatch.setattr(sys, 'argv', ['benchmark.py'] + argv)
        benchmark.main()
    assert '--torchcompile' in error_of(main, ['--roofline', '--torchcompile', '--device', 'cpu'], capsys)
