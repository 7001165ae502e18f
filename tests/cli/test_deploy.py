"""Deploy on a CPU: exported files carry their preprocessing and class names, INT8 files are calibrated on a
drawn folder and checked against float, and predict runs them in onnxruntime with the right class names."""
import argparse
import contextlib
import csv
import io

import onnx
import pytest
import timm
import torch

from scripts import TINY_DATA
from timm.data import resolve_data_config

from van_focal.cli import deploy, export, predict
from van_focal.train import run_info
from van_focal.core.errors import UsageError

pytestmark = pytest.mark.scripts

CLASSES = list(TINY_DATA['classes'])
VAN_SMALL = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
FOCAL_SMALL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
FOCAL = 'focal_tiny_useconv_patch4_window7_224'  # the torchscript exporter traces it with a dynamic batch (not v2)


def printed(main, argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([str(a) for a in argv])
    return out.getvalue()


def predict_rows(tmp_path, inputs, *flags):
    path = tmp_path / 'rows.csv'
    predict.main([str(a) for a in [*inputs, *flags, '--workers', '0', '--device', 'cpu', '--results-file', path]])
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A checkpoint as train.py writes it (weights, and the run's args with data_config and class_names), of an
    untrained VAN-B0 for 3 classes at 32x32: no training run, to keep the test short."""
    path = tmp_path_factory.mktemp('run') / 'last.pth.tar'
    data_config = dict(input_size=(3, 32, 32), interpolation='bicubic', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                       crop_pct=0.9, crop_mode='center')
    args = argparse.Namespace(model='van_b0', num_classes=3, img_size=32, model_kwargs={}, class_names=CLASSES,
                              data_config=data_config)
    torch.save({'state_dict': timm.create_model('van_b0', num_classes=3).state_dict(), 'args': args}, path)
    return path


@pytest.fixture(scope='module')
def van(data, checkpoint, tmp_path_factory):
    """van.onnx and van.int8.onnx of the checkpoint, and what the export printed."""
    out = tmp_path_factory.mktemp('van') / 'van.onnx'
    text = printed(export.main, ['--model', 'van_b0', '--checkpoint', checkpoint, '--num-classes', 3, '--img-size', 32,
                                 '--reparam', '--exporter', 'torchscript', '--out', out, '--int8',
                                 '--calibration-data', data / 'train', '--val-data', data / 'val',
                                 '--calibration-images', 16])
    return out, deploy.int8_path(str(out)), text


def test_van_int8_is_quantized_checked_and_carries_its_metadata(van, data):
    float_path, int8_path, text = van
    float_meta, int8_meta = deploy.read_metadata(str(float_path)), deploy.read_metadata(int8_path)
    assert float_meta['model'] == 'van_b0' and float_meta['class_names'] == CLASSES
    assert float_meta['data_config']['input_size'] == [3, 32, 32]
    assert {k: int8_meta[k] for k in float_meta} == float_meta
    how = int8_meta['int8']
    assert how['mode'] == 'static' and how['calibration_images'] == 16 and how['kept_float'] == {}
    check = how['check']
    assert check['images'] == 12 and 0 <= check['agreement'] <= 1 and check['max_logit_diff'] >= check['mean_logit_diff']
    assert 0 <= check['top1_float'] <= 100 and 0 <= check['top1_int8'] <= 100
    assert f"top-1 agreement {100 * check['agreement']:.1f} %" in text and 'kept in float: nothing' in text
    ops = {n.op_type for n in onnx.load(int8_path).graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear', 'Conv'} <= ops


def test_predict_through_onnxruntime_float_and_int8(van, data, checkpoint, tmp_path):
    float_path, int8_path, _ = van
    inputs = [data / 'val']
    eager = predict_rows(tmp_path, inputs, '--checkpoint', checkpoint, '--topk', 3)
    onnx_float = predict_rows(tmp_path, inputs, '--onnx', float_path, '--topk', 3)
    for a, b in zip(eager, onnx_float):  # the same preprocessing and class names as PyTorch
        assert a['file'] == b['file'] and a['label_1'] == b['label_1']
        assert abs(float(a['prob_1']) - float(b['prob_1'])) < 2e-3
    onnx_int8 = predict_rows(tmp_path, inputs, '--checkpoint', int8_path, '--topk', 3)  # found by its suffix
    assert [r['file'] for r in onnx_int8] == [r['file'] for r in eager]
    assert all({r['label_1'], r['label_2'], r['label_3']} == set(CLASSES) for r in onnx_int8)


def test_focal_int8_static_with_and_without_float_attention_and_dynamic(data, tmp_path):
    model = timm.create_model(FOCAL, num_classes=3, **FOCAL_SMALL).eval()
    path = str(tmp_path / 'focal.onnx')
    data_config = dict(resolve_data_config({}, model=model), input_size=(3, 64, 64))
    meta = dict(model=FOCAL, data_config=run_info.plain_data_config(data_config), class_names=CLASSES)
    export.export(model, path, (64, 64), exporter='torchscript', meta=meta)
    args = argparse.Namespace(int8='static', calibration_data=str(data / 'train'), val_data='', calibration_images=12,
                              check_images=100)
    def softmax_quantized(path):  # a QuantizeLinear takes the Softmax's output (DQ -> Softmax -> Q)
        nodes = onnx.load(path).graph.node
        outputs = {o for n in nodes if n.op_type == 'Softmax' for o in n.output}
        return any(n.op_type == 'QuantizeLinear' and set(n.input) & outputs for n in nodes)

    int8_path, how = deploy.export_int8(path, meta, args)
    assert how['kept_float'] == {} and softmax_quantized(int8_path)
    args.int8_float_attention = True
    int8_path, how = deploy.export_int8(path, meta, args)
    assert how['kept_float']['Softmax'] > 0 and how['kept_float']['MatMul of two activations'] > 0
    assert not softmax_quantized(int8_path)
    assert how['check']['images'] == 12 and 'top1_int8' in how['check']  # the 24 - 12 training images left
    rows = predict_rows(tmp_path, [data / 'val'], '--onnx', int8_path)
    assert len(rows) == 12 and {r['label_1'] for r in rows} <= set(CLASSES)

    args.int8, args.calibration_data, args.val_data = 'dynamic', '', str(data / 'val')
    _, how = deploy.export_int8(path, meta, args)
    assert how['mode'] == 'dynamic' and how['check']['images'] == 12 and how['check']['agreement'] >= 0


def test_a_file_without_metadata_names_the_flags_to_pass(data, tmp_path):
    path = tmp_path / 'bare.onnx'
    export.export(timm.create_model('van_b0', num_classes=3, **VAN_SMALL).eval(), str(path), (32, 32),
                  exporter='torchscript')
    image = data / 'val' / 'circle' / '00000.jpg'
    with pytest.raises(UsageError, match=r'lacks the preprocessing and class names .* pass --img-size .*--class-map'):
        predict_rows(tmp_path, [image], '--onnx', path)
    names = tmp_path / 'names.txt'
    names.write_text('\n'.join(CLASSES))
    rows = predict_rows(tmp_path, [image], '--onnx', path, '--img-size', 32, '--mean', 0.5, 0.5, 0.5, '--std', 0.5, 0.5,
                        0.5, '--crop-pct', 1, '--interpolation', 'bilinear', '--class-map', names)
    assert rows[0]['label_1'] in CLASSES


@pytest.mark.parametrize('argv, message', [
    (['--int8'], r'--int8 static calibrates on your images: pass --calibration-data DIR'),
    (['--calibration-data', '{data}'], r'--calibration-data is for --int8'),
    (['--int8', 'dynamic', '--out', 'x.pt2'], r'name --out FILE.onnx'),
    (['--int8', '--calibration-data', '{data}/nowhere'], r'--calibration-data .*nowhere: no such folder'),
])
def test_int8_mistakes_are_one_line_before_exporting(data, tmp_path, argv, message):
    argv = [a.format(data=data) for a in argv]
    out = [] if '--out' in argv else ['--out', str(tmp_path / 'x.onnx')]
    with pytest.raises(UsageError, match=message):
        export.main(['--model', 'van_b0', *out, *argv])
    assert not list(tmp_path.iterdir())


def test_calibration_folder_without_held_out_images(data):
    with pytest.raises(UsageError, match='none is left to check the INT8 model on: pass --val-data DIR'):
        deploy.split_images(str(data / 'val'), '', count=100)
    calibration, check = deploy.split_images(str(data / 'train'), '', count=20)
    assert len(calibration) == 20 and len(check) == 4 and not set(calibration) & set(check)
