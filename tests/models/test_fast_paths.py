"""The speed paths change no output: VAN's fused inference model, the interleaved dilated conv,
channels_last; and benchmark.py reports what it promises."""
import json
import sys

import pytest
import timm
import torch
import torch.nn as nn

from conftest import golden, relative_error
from scripts import REPO
from van_focal.models._depthwise import depthwise_conv, interleaved_dilated_conv

sys.path.insert(0, str(REPO))
import benchmark  # noqa: E402


def _randomise_norms_and_layer_scales(model):
    """Trained-looking BatchNorm statistics and layer scales, so that folding them is really tested."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
        for name, param in model.named_parameters():
            if 'layer_scale' in name:
                param.normal_(0.02, 0.05)


@pytest.mark.parametrize('channels_last', [False, True])
def test_fuse_changes_no_output(channels_last):
    model = timm.create_model('van_b1', num_classes=10).eval()
    _randomise_norms_and_layer_scales(model)
    x = torch.randn(2, 3, 96, 80)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = model(x)
        fused = timm.utils.reparameterize_model(model)
        assert relative_error(fused(x), reference) <= 1e-5
        assert relative_error(model(x), reference) == 0  # reparameterize_model worked on a copy
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert model.fuse() is model and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_fused_model_keeps_the_official_logits():
    path, kwargs, x, logits = golden('van_tiny_cfg')
    model = timm.create_model('van_b0', embed_dims=kwargs['embed_dims'], depths=kwargs['depths'],
                              num_classes=kwargs['num_classes'])
    timm.models.load_checkpoint(model, str(path))
    with torch.no_grad():
        assert relative_error(model.fuse()(x), logits) <= 1e-5


@pytest.mark.parametrize('size', [(7, 7), (14, 14), (56, 56), (13, 17)])
@pytest.mark.parametrize('channels_last', [False, True])
def test_interleaved_dilated_conv_is_the_dilated_conv(size, channels_last):
    conv = nn.Conv2d(8, 8, 7, padding=9, dilation=3, groups=8)
    x = torch.randn(2, 8, *size, requires_grad=True)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    reference = conv(x)
    out = interleaved_dilated_conv(x, conv.weight, conv.bias, 3)
    assert out.shape == reference.shape and relative_error(out, reference) <= 1e-6
    grads = torch.autograd.grad(out.sum(), (x, conv.weight))
    reference_grads = torch.autograd.grad(reference.sum(), (x, conv.weight))
    for g, r in zip(grads, reference_grads):
        assert relative_error(g, r) <= 1e-5
    assert relative_error(depthwise_conv(x, conv.weight, conv.bias, 3), reference) <= 1e-6


@pytest.mark.scripts
def test_benchmark_reports_every_field(tmp_path, monkeypatch, capsys):
    results = tmp_path / 'bench.json'
    argv = ['--model', 'van_b0', '--bench', 'both', '--img-size', '64', '-b', '2', '--warmup', '1', '--iters', '1',
            '--repeats', '2', '--device', 'cpu', '--fuse', '--channels-last', '--results-file', str(results)]
    monkeypatch.setattr(sys, 'argv', ['benchmark.py'] + argv)
    benchmark.main()
    rows = json.loads(results.read_text())
    assert [(r['model'], r['bench']) for r in rows] == [('van_b0', 'infer'), ('van_b0', 'train')]
    for row in rows:
        assert row['img_per_sec'] > 0 and row['latency_ms'] > 0 and row['peak_memory_mb'] > 0
        assert row['param_count'] == 4_105_800 and 0.05 < row['gmacs'] < 0.1  # 0.86 GMACs at 224, /12.25 at 64
    assert rows[0]['fuse'] and not rows[1]['fuse']
    assert 'dilated_dw_conv: ' in rows[0]['routes'] and 'dw_conv_grad_weight: ' in rows[1]['routes']
    assert 'dw_conv_grad_weight' not in rows[0]['routes']  # each mode's own picks
    out = capsys.readouterr().out
    assert 'van_b0' in out and 'routes picked: ' in out and 'dilated_dw_conv: ' in out


def test_benchmark_wildcard_lists_the_models():
    assert benchmark.model_names('focalv2_*') == ['focalv2_base_useconv_patch4_window7_224',
                                                  'focalv2_small_useconv_patch4_window7_224',
                                                  'focalv2_tiny_useconv_patch4_window7_224']
    assert len(benchmark.model_names('focal_*,focalv2_*,van_b0')) == 10
