"""Image-folder datasets (`ROOT/<split>/<class>/<image>`) that report what is wrong with the data.

Real folders are messy: grayscale, CMYK, palette, RGBA and 16-bit images are converted to what they
show (16-bit samples scaled to 8 bits, not clipped; alpha dropped, as timm does); hidden folders such
as `.ipynb_checkpoints/` are no classes, and files that are no images (`.DS_Store`, `README.txt`) are
ignored.

Other `--dataset` kinds (`wds/...`, `hfds/...`, `torch/...`) go to timm's `create_dataset` unchanged.
"""
import logging
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image
from timm.data import ImageDataset, create_dataset
from timm.data.readers.img_extensions import get_img_extensions

from ..core.errors import BadImageError, UsageError

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = tuple(sorted(get_img_extensions()))
SPLIT_ALIASES = {'val': ('val', 'validation'), 'validation': ('validation', 'val')}



def find_split(root: str, split: str, flag: str) -> str:
    """The folder of `split` under `root` (timm's aliases val/validation), or a UsageError."""
    if not os.path.isdir(root):
        raise UsageError(f'data root {root}: no such folder. Give the folder that holds {split}/<class>/<images>.')
    for name in SPLIT_ALIASES.get(split, (split,)):
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    raise UsageError(f'data root {root} has no {split}/ folder (it has: {", ".join(found[:8]) or "nothing"}). '
                     f'Choose the split with {flag}.')


def class_folders(split_dir: str) -> List[str]:
    """The class folder names of a split (hidden folders are none), refusing empty ones (they would shift the labels)."""
    classes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))
                     and not d.startswith('.'))
    if not classes:
        raise UsageError(f'{split_dir}: no class folders. Expected {split_dir}/<class>/<images>.')
    for name in classes:
        folder = os.path.join(split_dir, name)
        if not any(os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for _, _, fs in os.walk(folder) for f in fs):
            raise UsageError(f'{folder}: empty class folder (no {"/".join(IMAGE_EXTENSIONS)} files). '
                             'Add its images or remove the folder.')
    return classes


def check_num_classes(num_classes: Optional[int], classes: List[str], split_dir: str) -> int:
    """`--num-classes`, or the number of class folders when not given; refuses fewer classes than folders."""
    if num_classes is None:
        return len(classes)
    if num_classes < len(classes):
        raise UsageError(f'--num-classes {num_classes} is less than the {len(classes)} class folders in {split_dir}: '
                         f'labels up to {len(classes) - 1} would not fit. Drop --num-classes or remove folders.')
    return num_classes


def convert_image(img: Image.Image, mode: str) -> Image.Image:
    """`img` in `mode`, keeping what it shows: 16-bit samples scaled to 8 bits (convert() would clip them
    to white), palette transparency through RGBA (without the warning convert() gives)."""
    if img.mode.startswith('I;16') or img.mode == 'I':
        img = Image.fromarray((np.asarray(img, dtype=np.int64).clip(0, 65535) >> 8).astype(np.uint8))
    elif img.mode == 'P' and 'transparency' in img.info:
        img = img.convert('RGBA')
    return img.convert(mode)


class CheckedImageDataset(ImageDataset):
    """timm's ImageDataset that names an image it cannot decode, instead of silently taking the next one.

    With `skip_bad_images` the file is skipped with a warning and counted in `skipped` (shared
    with DataLoader workers); otherwise loading stops with a BadImageError naming the file.
    """

    def __init__(self, root: str, skip_bad_images: bool = False, **kwargs):
        super().__init__(root, **kwargs)
        self.skip_bad_images = skip_bad_images
        self.skipped = torch.zeros((), dtype=torch.int64).share_memory_()

    def _decode(self, path: str) -> Image.Image:
        with Image.open(path) as img:
            return convert_image(img, self.input_img_mode or 'RGB')  # decodes every pixel: truncation shows here

    def __getitem__(self, index):
        samples = self.reader.samples
        for _ in range(len(samples)):
            path, target = samples[index]
            try:
                img = self._decode(path)
                break
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                if not self.skip_bad_images:
                    raise BadImageError(f'{path}: cannot decode this image ({e}). Replace or delete the file, '
                                        'or pass --skip-bad-images to skip unreadable files.') from None
                self.skipped += 1
                _logger.warning(f'Skipped unreadable image {path} ({e}).')
                index = (index + 1) % len(samples)
        else:
            raise UsageError(f'{self.reader.root}: no image could be decoded.')
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def take_skipped_count(self) -> int:
        """Images skipped since the last call."""
        count = int(self.skipped.item())
        self.skipped.zero_()
        return count


def build_dataset(name: str, root: str, split: str, flag: str, is_training: bool,
                  class_to_idx: Optional[Dict[str, int]] = None, skip_bad_images: bool = False, **kwargs):
    """An image-folder split checked as above, or timm's `create_dataset` for any other `--dataset`."""
    if name:
        return create_dataset(name, root=root, split=split, is_training=is_training, **kwargs)
    split_dir = find_split(root, split, flag)
    classes = class_folders(split_dir)
    if class_to_idx is None:
        class_to_idx = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in classes if c not in class_to_idx]
    if unknown:
        raise UsageError(f'{split_dir} has class folders that the training split lacks: {", ".join(unknown[:5])}. '
                         'Their labels would be wrong: add them to the training split or remove them.')
    mode = kwargs.get('input_img_mode') or 'RGB'
    return CheckedImageDataset(split_dir, skip_bad_images=skip_bad_images, class_map=class_to_idx,
                               input_img_mode=mode)
