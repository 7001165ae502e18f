"""A small image-classification dataset drawn locally, in the ImageNet folder layout.

Each image is one shape (the class) drawn in a random colour, size, position and rotation over a
random two-colour gradient (dark on light or light on dark), slightly blurred, saved as JPEG. Nothing is downloaded; `make demo` and the tests train on it.

    van-focal-shapes OUT_DIR [--train-per-class 300] [--val-per-class 50] [--size 64]
"""
import argparse
import math
import os
import random
from typing import List, Tuple

from PIL import Image, ImageDraw, ImageFilter

CLASSES = ('circle', 'square', 'triangle', 'star', 'cross', 'ring')


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    if kind == 'square':
        corners = [(math.pi / 4 + k * math.pi / 2) for k in range(4)]
        return [(cx + r * math.cos(a + angle), cy + r * math.sin(a + angle)) for a in corners]
    if kind == 'triangle':
        return [(cx + r * math.cos(a + angle), cy + r * math.sin(a + angle)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
    if kind == 'star':
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.cos(angle + k * math.pi / 5),
                 cy + (r if k % 2 == 0 else r * 0.45) * math.sin(angle + k * math.pi / 5)) for k in range(10)]
    if kind == 'cross':
        w = 0.35
        arm = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in arm]
    raise ValueError(kind)


def _colour(rng: random.Random, low: int = 0, high: int = 256) -> Tuple[int, int, int]:
    return tuple(rng.randrange(low, high) for _ in range(3))


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float,
               colour: Tuple[int, int, int]) -> None:
    if kind == 'circle':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == 'ring':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r * 0.3)))
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=colour)


def draw_image(kind: str, size: int, rng: random.Random) -> Image.Image:
    dark = rng.random() < 0.5  # a dark shape on a light background or the other way round
    background = [_colour(rng, 140, 256) if dark else _colour(rng, 0, 116) for _ in range(2)]
    gradient = Image.linear_gradient('L').resize((size, size)).rotate(rng.uniform(0, 360), expand=False, fillcolor=128)
    img = Image.composite(Image.new('RGB', (size, size), background[0]), Image.new('RGB', (size, size), background[1]),
                          gradient)
    r = rng.uniform(0.22, 0.4) * size
    draw_shape(ImageDraw.Draw(img), kind, rng.uniform(r, size - r), rng.uniform(r, size - r), r,
               rng.uniform(0, 2 * math.pi), _colour(rng, 0, 100) if dark else _colour(rng, 156, 256))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def make_shapes_dataset(root: str, train_per_class: int = 300, val_per_class: int = 50, size: int = 64,
                        seed: int = 0, classes=CLASSES) -> str:
    """Write ROOT/{train,val}/<class>/<n>.jpg and return ROOT. Same seed, same files."""
    rng = random.Random(seed)
    for split, count in (('train', train_per_class), ('val', val_per_class)):
        for kind in classes:
            folder = os.path.join(root, split, kind)
            os.makedirs(folder, exist_ok=True)
            for n in range(count):
                draw_image(kind, size, rng).save(os.path.join(folder, f'{n:05d}.jpg'), quality=rng.randint(60, 95))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root')
    parser.add_argument('--train-per-class', type=int, default=300)
    parser.add_argument('--val-per-class', type=int, default=50)
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    make_shapes_dataset(args.root, args.train_per_class, args.val_per_class, args.size, args.seed)
    total = (args.train_per_class + args.val_per_class) * len(CLASSES)
    print(f'{total} images of {len(CLASSES)} classes in {args.root}/{{train,val}}')


run = main  # the console script `van-focal-shapes`


if __name__ == '__main__':
    run()
