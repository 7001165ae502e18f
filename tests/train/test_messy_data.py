"""Real folders and command lines are messy: odd image modes and sizes and stray files train; what cannot
work stops with one line naming the file or flag."""
import shutil
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from scripts import TINY_RUN, train_fails
import train
from van_focal.train.data import build_dataset, convert_image


def _rgb(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def messy_images() -> dict:
    """File name -> image of each kind that turns up in real datasets (ImageNet has CMYK, grayscale, PNG...)."""
    rgb = _rgb(20, 24)
    palette = rgb.convert('P', palette=Image.Palette.ADAPTIVE, colors=16)
    gray16 = Image.fromarray((np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 130))
    return {'gray.jpg': rgb.convert('L'), 'cmyk.jpg': rgb.convert('CMYK'), 'palette.png': palette,
            'palette_transparent.png': (palette, dict(transparency=0)), 'rgba.png': rgb.convert('RGBA'),
            'gray_alpha.png': rgb.convert('LA'), 'bilevel.png': rgb.convert('1'), 'gray16.png': gray16,
            'one_pixel.png': _rgb(1, 1), 'two_by_three.jpg': _rgb(2, 3), 'upper_case.JPEG': rgb}


@pytest.fixture(scope='module')
def messy(data, tmp_path_factory):
    root = tmp_path_factory.mktemp('messy') / 'data'
    shutil.copytree(data, root)
    for name, image in messy_images().items():
        image, options = image if isinstance(image, tuple) else (image, {})
        image.save(root / 'train' / 'circle' / name, **options)
    for folder in (root, root / 'train', root / 'train' / 'circle', root / 'val'):
        (folder / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1')
        (folder / 'README.txt').write_text('where these images came from\n')
    for split in ('train', 'val'):  # Jupyter's hidden folder, with a stray image copy inside
        (root / split / '.ipynb_checkpoints').mkdir()
        (root / split / '.ipynb_checkpoints' / 'notes-checkpoint.ipynb').write_text('{}')
        _rgb(8, 8).save(root / split / '.ipynb_checkpoints' / 'copy.jpg')
    return root


def test_odd_modes_convert_to_what_they_show():
    images = messy_images()
    for name, image in images.items():
        image = image[0] if isinstance(image, tuple) else image
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # e.g. Pillow's palette-transparency warning, once per image
            converted = convert_image(image, 'RGB')
        assert converted.mode == 'RGB' and converted.size == image.size, name
    gray16 = np.asarray(images['gray16.png'])
    scaled = np.asarray(convert_image(images['gray16.png'], 'RGB'))[..., 0]
    assert np.array_equal(scaled, (gray16 >> 8).astype(np.uint8))  # Pillow's convert clips these to 255
    assert np.array_equal(np.asarray(convert_image(images['cmyk.jpg'], 'RGB')), np.asarray(images['cmyk.jpg'].convert('RGB')))


@pytest.mark.scripts
def test_messy_folder_trains(messy, tmp_path, capsys, monkeypatch):
    dataset = build_dataset('', str(messy), 'train', '--train-split', is_training=True)
    assert dataset.reader.class_to_idx == {'circle': 0, 'square': 1, 'triangle': 2}  # no '.ipynb_checkpoints'
    assert len(dataset) == 24 + len(messy_images())
    for index in range(len(dataset)):
        image, _ = dataset[index]
        assert image.mode == 'RGB'
    monkeypatch.setattr('sys.argv', ['train.py', str(messy), *TINY_RUN, '--epochs', '1', '-b', '5', '--val-split', '',
                                     '--output', str(tmp_path), '--experiment', 'messy'])
    train.main()
    assert 'Train: 0 [   6/7]' in capsys.readouterr().err
    assert (tmp_path / 'messy' / 'last.pth.tar').exists()


@pytest.mark.scripts
def test_web_page_saved_as_jpg_stops_naming_the_file(data, tmp_path, capsys, monkeypatch):
    root = tmp_path / 'data'
    shutil.copytree(data, root)
    bad = root / 'train' / 'square' / 'scraped.jpg'
    bad.write_text('<html><body>403 Forbidden</body></html>')
    err = train_fails([root, '--val-split', '', '--output', tmp_path], capsys, monkeypatch)
    assert f'{bad}: cannot decode this image (cannot identify image file' in err


@pytest.mark.scripts
def test_val_class_missing_from_train(data, tmp_path, capsys, monkeypatch):
    root = tmp_path / 'data'
    shutil.copytree(data, root)
    (root / 'val' / 'zebra').mkdir()
    _rgb(8, 8).save(root / 'val' / 'zebra' / 'z.jpg')
    err = train_fails([root], capsys, monkeypatch)
    assert f'{root}/val has class folders that the training split lacks: zebra' in err


@pytest.mark.scripts
@pytest.mark.parametrize('argv, expected', [
    (['-b', '0'], '-b/--batch-size 0: must be at least 1'),
    (['-vb', '-4'], '-vb/--validation-batch-size -4: must be at least 1'),
    (['--lr', '-0.001'], '--lr -0.001: must be zero or more'),
    (['--lr-base', '-1'], '--lr-base -1.0: must be zero or more'),
    (['--workers', '-1'], '--workers -1: must be zero or more'),
    (['--num-classes', '2'], '--num-classes 2 is less than the 3 class folders in '),
    (['--resume', 'auto'], '--resume auto needs --experiment NAME'),
])
def test_flags_that_cannot_work(data, argv, expected, capsys, monkeypatch):
    assert expected in train_fails([data, *argv], capsys, monkeypatch)


@pytest.mark.scripts
def test_resume_missing_file_or_other_model(data, tmp_path, capsys, monkeypatch):
    missing = tmp_path / 'nope' / 'last.pth.tar'
    assert f'{missing}: no such checkpoint file' in train_fails([data, '--resume', missing], capsys, monkeypatch)
    other = tmp_path / 'van_b1.pth.tar'
    torch.save({'state_dict': timm.create_model('van_b1', num_classes=3).state_dict(), 'epoch': 0, 'version': 2}, other)
    err = train_fails([data, '--resume', other], capsys, monkeypatch, epochs=2)
    assert f'{other} does not fit van_b0' in err and 'Is it a checkpoint of another model' in err
