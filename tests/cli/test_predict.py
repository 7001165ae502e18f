"""`van-focal-predict`: image files and folders in, top-k class names and probabilities out; a messy folder (a
file that is no image, a file named twice) still gives the results of its good images."""
import csv
import json
import logging
import shutil
import sys

import pytest
import timm
import torch
from timm.data import ImageNetInfo

from scripts import REPO, TINY_DATA, error_of
from van_focal.cli import predict
from van_focal.cli.args import run_main

sys.path.insert(0, str(REPO))

CLASSES = list(TINY_DATA['classes'])


@pytest.mark.scripts
def test_files_and_folders_to_csv_json_and_table(data, checkpoint, tmp_path, capsys):
    inputs = [data / 'val' / 'circle', data / 'val' / 'square' / '00001.jpg']
    common = [*inputs, '--checkpoint', checkpoint, '--device', 'cpu', '--workers', '0']
    predict.main([str(a) for a in [*common, '--results-file', tmp_path / 'top.csv', '--topk', '2']])
    with open(tmp_path / 'top.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['file'] for r in rows] == [str(p) for p in sorted((data / 'val' / 'circle').iterdir())] + [str(inputs[1])]
    assert list(rows[0]) == ['file', 'label_1', 'prob_1', 'label_2', 'prob_2']
    for row in rows:
        assert {row['label_1'], row['label_2']} <= set(CLASSES) and row['label_1'] != row['label_2']
        assert 1 >= float(row['prob_1']) >= float(row['prob_2']) >= 0

    predict.main([str(a) for a in [*common, '--results-file', tmp_path / 'top.json']])
    assert capsys.readouterr().out.splitlines() == [f"5 results written to {tmp_path / 'top.csv'} (CSV).",
                                                    f"5 results written to {tmp_path / 'top.json'} (JSON)."]
    rows = json.loads((tmp_path / 'top.json').read_text())
    assert len(rows) == 5 and {r['label_1'] for r in rows} <= set(CLASSES)
    for row in rows:  # top-k is capped at the 3 classes, and they share all the probability
        assert 'label_4' not in row and abs(row['prob_1'] + row['prob_2'] + row['prob_3'] - 1) < 1e-3

    predict.main([str(a) for a in common])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[-1].startswith(f'{inputs[1]}: ') and '%' in lines[-1]


def test_imagenet_heads_get_imagenet_names():
    model = timm.create_model('van_b0', embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))  # 1000 classes
    names = predict.class_names(model, None)
    assert names == ImageNetInfo('imagenet-1k').label_descriptions() and names[0].startswith('tench')
    small = timm.create_model('van_b0', embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_classes=3)
    assert predict.class_names(small, None) == ['0', '1', '2']
    assert predict.class_names(small, CLASSES) == CLASSES


@pytest.mark.scripts
def test_pretrained_weights_from_a_local_file_name_imagenet_classes(data, tmp_path, capsys):
    kwargs = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
    weights = tmp_path / 'in1k.pth'
    torch.save(timm.create_model('van_b0', **kwargs).state_dict(), weights)
    predict.main([str(data / 'val' / 'circle' / '00000.jpg'), '--model', 'van_b0',
                  '--pretrained', '--device', 'cpu', '--workers', '0', '--topk', '3', '--model-kwargs',
                  f"pretrained_cfg_overlay={{'file': '{weights}'}}", 'embed_dims=(8,16,24,32)', 'depths=(1,1,1,1)'])
    line = capsys.readouterr().out.strip()
    descriptions = ImageNetInfo('imagenet-1k').label_descriptions()
    labels = [part.rsplit(' ', 1)[0] for part in line.split(': ', 1)[1].split('  ')]
    assert len(labels) == 3 and all(label in descriptions for label in labels)


@pytest.mark.scripts
@pytest.mark.parametrize('argv, expected', [
    (['{data}/val/circle'], 'no weights to predict with'),
    (['{data}/nope.jpg', '--checkpoint', '{checkpoint}'], 'nope.jpg: no such file or folder'),
    (['{empty}', '--checkpoint', '{checkpoint}'], 'no image files'),
    (['{data}/val/circle', '--checkpoint', '{checkpoint}', '--class-map', '{two}'], '2 class names for a model of 3'),
])
def test_mistakes(data, checkpoint, tmp_path, capsys, argv, expected):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'two.txt').write_text('a\nb\n')
    paths = dict(data=data, checkpoint=checkpoint, empty=tmp_path / 'empty', two=tmp_path / 'two.txt')
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: predict.main([a.format(**paths) for a in argv] + ['--device', 'cpu', '--workers', '0']))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err and expected in err


PREDICT = ['--device', 'cpu', '--workers', '0']


def messy_folder(data, root):
    """Six good images and one HTML page saved as .jpg."""
    root.mkdir()
    for name in ('circle', 'square'):
        for image in sorted((data / 'val' / name).iterdir())[:3]:
            shutil.copy(image, root / f'{name}_{image.name}')
    (root / 'page.jpg').write_text('<!doctype html><html><body>Not found</body></html>\n')
    return root


@pytest.mark.scripts
def test_bad_file_is_skipped_and_counted_a_file_named_twice_once(data, checkpoint, tmp_path, capsys, caplog):
    folder = messy_folder(data, tmp_path / 'messy')
    results = tmp_path / 'top.csv'
    caplog.set_level(logging.WARNING)
    predict.main([str(a) for a in [folder, folder / 'circle_00000.jpg', tmp_path / '.' / 'messy' / 'square_00001.jpg',
                                   '--checkpoint', checkpoint, '--results-file', results, *PREDICT]])
    with open(results) as f:
        files = [row['file'] for row in csv.DictReader(f)]
    assert files == sorted(str(p) for p in folder.iterdir() if p.name != 'page.jpg')  # each once, in order
    assert caplog.messages[0] == '2 of the 9 image paths name a file already given: each file is classified once.'
    assert caplog.messages[1].startswith(f'Skipped {folder / "page.jpg"}: not a readable image (')
    assert caplog.messages[-1] == 'Skipped 1 of 7 files: not readable images (named above).'
    assert capsys.readouterr().out == f'6 results written to {results} (CSV).\n'


@pytest.mark.scripts
def test_no_skip_bad_images_stops_at_the_file_and_nothing_readable_is_an_error(data, checkpoint, tmp_path, capsys):
    folder = messy_folder(data, tmp_path / 'messy')
    err = error_of(predict.main, [folder, '--checkpoint', checkpoint, '--no-skip-bad-images', *PREDICT], capsys)
    assert f'{folder / "page.jpg"}: cannot decode this image' in err and '--no-skip-bad-images' in err
    err = error_of(predict.main, [folder / 'page.jpg', '--checkpoint', checkpoint, *PREDICT], capsys)
    assert 'none of the 1 files is a readable image' in err
