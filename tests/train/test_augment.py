"""The recipes' RandAugment never raises on current Pillow, and keeping 0 bits gives Pillow < 13's black image."""
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform

from scripts import REPO
from van_focal.train.augment import _timm_posterize, posterize
from van_focal.cli.args import parse_args

sys.path.insert(0, str(REPO))
import train  # noqa: E402

IMAGES_PER_TRANSFORM = 20_000
SIZE = 16  # the op's failure does not depend on the size; small images keep this fast


def test_zero_bits_is_a_black_image_as_in_pillow_12():
    # Pillow 12.3 ImageOps.posterize(img, 0): mask ~255 keeps no bit, so every L / RGB pixel becomes 0.
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    black = posterize(rgb, 0)
    assert black.mode == 'RGB' and black.size == (7, 5) and not np.asarray(black).any()
    assert not np.asarray(posterize(rgb.convert('L'), 0)).any()
    for bits in range(1, 9):
        assert np.array_equal(np.asarray(posterize(rgb, bits)), np.asarray(ImageOps.posterize(rgb, bits)))


def test_timm_uses_the_fixed_op():
    assert auto_augment.NAME_TO_OP['PosterizeIncreasing'] is posterize
    op = auto_augment.AugmentOp('PosterizeIncreasing', prob=1.0, magnitude=10)
    assert not np.asarray(op(Image.new('RGB', (4, 4), (200, 100, 50)))).any()


def _train_transform_settings(config: Path) -> tuple:
    args = parse_args(train.build_parser(), ['ROOT', '--config', str(config)])
    return (('scale', tuple(args.scale)), ('ratio', tuple(args.ratio)), ('hflip', args.hflip), ('vflip', args.vflip),
            ('color_jitter', args.color_jitter), ('auto_augment', args.aa), ('interpolation', args.train_interpolation),
            ('re_prob', args.reprob), ('re_mode', args.remode), ('re_count', args.recount))


CONFIGS = sorted((REPO / 'configs').glob('*.yaml'))
# Configs with equal train-transform flags share one transform: each config's transform sees every image.
TRANSFORMS = {}
for _config in CONFIGS:
    TRANSFORMS.setdefault(_train_transform_settings(_config), []).append(_config.stem)


@pytest.mark.parametrize('settings', list(TRANSFORMS), ids=[v[0] + (f'+{len(v) - 1}' if len(v) > 1 else '') for v in TRANSFORMS.values()])
def test_config_train_transform_never_raises(settings):
    transform = create_transform(input_size=(3, SIZE, SIZE), is_training=True, **dict(settings))
    zero_bit_images = _count_zero_bit_requests(transform)
    random.seed(0)
    np.random.seed(0)  # RandAugment picks its ops with numpy
    torch.manual_seed(0)
    pool = [Image.fromarray(a) for a in np.random.default_rng(0).integers(0, 256, (64, SIZE + 8, SIZE, 3), np.uint8)]
    for i in range(IMAGES_PER_TRANSFORM):
        zero_bit_images.image = i
        out = transform(pool[i % len(pool)])
        assert out.shape == (3, SIZE, SIZE)
    if dict(settings)['auto_augment']:
        # Each of these images raised with timm's op on Pillow 13: the draws reached the case.
        print(f'{dict(settings)["auto_augment"]}: timm\'s op raised on {len(zero_bit_images.hits)} of '
              f'{IMAGES_PER_TRANSFORM} images, ours on none')
        assert zero_bit_images.hits


def _count_zero_bit_requests(transform):
    """Record which images timm's own posterize op raises on, calling it beside ours with the same draws."""
    recorder = type('Recorder', (), {'image': None, 'hits': set()})()
    for t in transform.transforms:
        for op in getattr(t, 'ops', []):
            if op.aug_fn is posterize:
                op.aug_fn = _recording(op.aug_fn, recorder)
    return recorder


def _recording(fn, recorder):
    def wrapped(img, bits, **kwargs):
        try:
            _timm_posterize(img, bits, **kwargs)
        except ValueError:
            recorder.hits.add(recorder.image)
        return fn(img, bits, **kwargs)
    return wrapped
