"""Export: small models of every kind through torch.onnx (checked in onnxruntime) and torch.export;
a train.py checkpoint alone says what to export; Focal's index-table caches stay real tensors through every
tracer and inference_mode."""
import sys

import pytest
import timm
import torch
import torch.nn as nn
from timm.models._features_fx import create_feature_extractor

from van_focal.core.errors import UsageError
from scripts import REPO, TINY_DATA, TINY_RUN
from van_focal.cli.export import TOLERANCE, export, main, read_metadata
from van_focal.models import _focal_tables

VAN_SMALL = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_classes=10)
FOCAL_SMALL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), num_classes=10)
FOCAL_KINDS = {
    'v1': 'focal_tiny_patch4_window7_224',
    'v1_useconv': 'focal_tiny_useconv_patch4_window7_224',
    'v2': 'focalv2_tiny_useconv_patch4_window7_224',
}


def small(name: str, **kwargs) -> nn.Module:
    return timm.create_model(name, **(VAN_SMALL if name.startswith('van') else FOCAL_SMALL), **kwargs).eval()


# One dynamo-exporter and one TorchScript-exporter file per family, each kind of model at least once
# (a dynamo export takes tens of seconds even for these small models).

def test_van_onnx_torchscript_dynamic_batch_and_size(tmp_path):
    differences = export(small('van_b0'), str(tmp_path / 'van.onnx'), (64, 64), dynamic=True, exporter='torchscript')
    assert set(differences) == {'1x3x64x64', '3x3x64x64', '1x3x96x128', '3x3x96x128'}
    assert max(differences.values()) <= TOLERANCE


@pytest.mark.parametrize('name', ['van_b0', FOCAL_KINDS['v2']])
def test_features_only_onnx_dynamo_gives_four_maps(tmp_path, name):
    import onnx
    path = str(tmp_path / 'features.onnx')
    dynamic = name.startswith('van')
    differences = export(small(name, features_only=True), path, (64, 64), dynamic=dynamic)
    assert len(differences) == (4 if dynamic else 2) and max(differences.values()) <= TOLERANCE
    assert len(onnx.load(path).graph.output) == 4


@pytest.mark.parametrize('kind, exporter', [('v1', 'dynamo'), ('v1_useconv', 'torchscript')])
def test_focal_onnx_dynamic_batch(tmp_path, kind, exporter):
    # built for 224 (the pretrained structure), exported at another size
    differences = export(small(FOCAL_KINDS[kind]), str(tmp_path / 'focal.onnx'), (64, 64), exporter=exporter)
    assert set(differences) == {'1x3x64x64', '3x3x64x64'}
    assert max(differences.values()) <= TOLERANCE


def test_van_torch_export_program_dynamic_size(tmp_path):
    differences = export(small('van_b0'), str(tmp_path / 'model.pt2'), (64, 64), dynamic=True)
    assert len(differences) == 4 and max(differences.values()) <= TOLERANCE


def test_focal_dynamic_size_is_refused_with_one_line(tmp_path):
    with pytest.raises(UsageError, match='one input size per file'):
        export(small(FOCAL_KINDS['v1']), str(tmp_path / 'x.onnx'), (64, 64), dynamic=True)


def test_command_line(tmp_path, capsys):
    out = tmp_path / 'van.onnx'
    checkpoint = tmp_path / 'van.pth'  # bare weights: the flags say what they are
    torch.save(small('van_b0').state_dict(), checkpoint)
    main(['--model', 'van_b0', '--checkpoint', str(checkpoint), '--num-classes', '10', '--img-size', '32', '48',
          '--model-kwargs', 'embed_dims=(8,16,24,32)', 'depths=(1,1,1,1)',
          '--out', str(out), '--exporter', 'torchscript', '--dynamic'])
    printed = capsys.readouterr().out
    assert out.exists() and 'input 3x3x32x48' in printed and 'within tolerance' in printed


@pytest.fixture(scope='module')
def small_run(data, tmp_path_factory):
    """model_best.pth.tar of a 1-epoch train.py run of a small VAN (its --model-kwargs in the checkpoint too)."""
    sys.path.insert(0, str(REPO))
    import train
    out = tmp_path_factory.mktemp('runs')
    train.main([str(a) for a in [data, *TINY_RUN, '--epochs', '1', '--model-kwargs', 'embed_dims=(8,16,24,32)',
                                 'depths=(1,1,1,1)', '--output', out, '--experiment', 'run']])
    return out / 'run' / 'model_best.pth.tar'


@pytest.mark.scripts
def test_train_checkpoint_alone_gives_model_classes_size_and_preprocessing(small_run, tmp_path, capsys):
    out = tmp_path / 'run.onnx'
    main(['--checkpoint', str(small_run), '--out', str(out), '--exporter', 'torchscript'])
    printed = capsys.readouterr().out
    assert f'van_b0 from {small_run}, 3 named classes via torch.onnx (torchscript)' in printed
    assert 'expects input 3x32x32, bicubic resize, crop_pct 0.9 (center), mean (0.5, 0.5, 0.5)' in printed
    assert 'input 3x3x32x32' in printed and 'within tolerance' in printed  # trained at 32, not the model's 224
    meta = read_metadata(str(out))  # what a user of the file needs besides the graph
    assert meta['model'] == 'van_b0' and meta['class_names'] == list(TINY_DATA['classes'])
    assert meta['data_config']['input_size'] == [3, 32, 32] and meta['data_config']['interpolation'] == 'bicubic'


def test_no_model_anywhere_is_one_line():
    with pytest.raises(UsageError, match=r'which model\? no --checkpoint of a train\.py run gives one: pass --model'):
        main(['--out', 'x.onnx'])


def test_pt2_carries_the_metadata_too(tmp_path):
    path = str(tmp_path / 'van.pt2')
    export(small('van_b0'), path, (32, 32), meta={'model': 'van_b0', 'class_names': ['a']})
    assert read_metadata(path) == {'model': 'van_b0', 'class_names': ['a']}


# ---------------------------------------------------------------------------------------------
# Caches: after a tracer or inference_mode, the model still runs and trains
# ---------------------------------------------------------------------------------------------

def _clear_table_caches():
    _focal_tables._focal_v1_tables.cache_clear()
    _focal_tables._focal_v2_tables.cache_clear()


def _assert_usable_after(trace, kind='v1'):
    """A fresh model (empty caches) goes through `trace`; then an ordinary forward and a training step,
    which use the tables the tracer cached (a fake or inference tensor among them would fail)."""
    _clear_table_caches()
    cache = _focal_tables._focal_v1_tables if kind == 'v1' else _focal_tables._focal_v2_tables
    model = small(FOCAL_KINDS[kind])
    x = torch.randn(2, 3, 64, 64)
    trace(model, x)
    filled = cache.cache_info()
    assert filled.currsize > 0
    with torch.no_grad():
        model.eval()(x).numpy()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).logsumexp(1).mean().backward()
    optimizer.step()
    assert cache.cache_info().hits > filled.hits and cache.cache_info().currsize == filled.currsize
    assert all(p.grad is not None for p in model.parameters())


def _export(model, x):
    torch.export.export(model, (x,))


def _compile(model, x):
    # backend 'eager': dynamo traces the model on fake tensors (as every backend does), without
    # the minutes aot_eager / inductor would add on this machine
    torch._dynamo.reset()
    torch.compile(model, backend='eager')(x)
    torch._dynamo.reset()


def _fx_trace(model, x):
    create_feature_extractor(model, return_nodes=['head.fc'])(x)


def _inference_mode(model, x):
    with torch.inference_mode():
        model(x)


@pytest.mark.parametrize('trace', [_export, _compile, _fx_trace, _inference_mode])
def test_focal_usable_after(trace):
    _assert_usable_after(trace)


def test_focal_v2_usable_after_export():  # Focal-fast's tables need .item() and torch.unique: never traceable
    _assert_usable_after(_export, 'v2')
