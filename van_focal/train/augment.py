"""RandAugment / AutoAugment that cannot crash on current Pillow.

The recipes' `rand-m9-mstd0.5-inc1` draws `PosterizeIncreasing` with a noisy magnitude; at the top
of its range timm asks to keep 0 bits. Pillow < 13 returned a black image for that (its lookup
table masks every bit away), which is what the papers trained with; Pillow 13 raises
`ValueError: bits must be between or equal to 1 and 8` (for about 1 image in 600:
tests/test_augment.py prints the count).
`patch_timm_posterize()` (run on `import van_focal`) gives timm's posterize op back the old meaning,
for every RandAugment / AutoAugment / AugMix transform created afterwards, ours or timm's train.py.
"""
from PIL import Image
from timm.data import auto_augment

_timm_posterize = auto_augment.posterize


def posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize op; keeping 0 bits gives a black image, as Pillow < 13 did for L and RGB images."""
    if bits_to_keep <= 0 and img.mode in ('L', 'RGB'):
        return img.point(lambda _: 0)
    return _timm_posterize(img, bits_to_keep, **kwargs)


def patch_timm_posterize() -> None:
    """Point timm's posterize ops (module function and op table) at `posterize`; idempotent."""
    auto_augment.posterize = posterize
    for name, op in auto_augment.NAME_TO_OP.items():
        if op is _timm_posterize:
            auto_augment.NAME_TO_OP[name] = posterize
