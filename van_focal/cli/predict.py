"""Classify images: top-k class names and probabilities, like timm's inference.py.

    van-focal-predict photo.jpg more_photos/ --checkpoint output/train/RUN/model_best.pth.tar
    van-focal-predict photos/ --model van_b2 --pretrained --topk 3 --results-file top3.csv

Inputs are image files or folders (searched recursively). A checkpoint written by train.py gives
the model, input size, preprocessing and class names; a 1000-class model gets timm's ImageNet-1k
class names; `--class-map FILE` (one name a line, in index order) overrides either. An exported
FILE.onnx (`--onnx FILE.onnx`, or `--checkpoint FILE.onnx`) runs in onnxruntime on the CPU with the
preprocessing and class names its metadata carries (van-focal-export writes them). Results are a
table on stdout, or `--results-file` as CSV or JSON.
"""
import argparse
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from PIL import Image
from timm import utils
from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset

from ..core import device as devices
from ..core.errors import UsageError
from ..train import run_info
from ..train.data import IMAGE_EXTENSIONS, convert_image
from .args import (add_model_input_args, check_model_name, default_workers, given_flags, parse_args, run_main,
                   write_results)

_logger = logging.getLogger('predict')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='van-focal-predict', description=__doc__.splitlines()[0])
    parser.add_argument('-c', '--config', default='', metavar='FILE', help='YAML file of flag defaults')
    parser.add_argument('inputs', nargs='+', metavar='IMAGE_OR_FOLDER')
    parser.add_argument('--model', '-m', default=None, help="default: the checkpoint's")
    parser.add_argument('--pretrained', action='store_true')
    parser.add_argument('--checkpoint', default='', metavar='PATH', help='train.py checkpoint, weights, or FILE.onnx')
    parser.add_argument('--onnx', default='', metavar='FILE.onnx',
                        help='run this exported file in onnxruntime (CPU), with the preprocessing and class names it carries')
    parser.add_argument('--use-ema', action='store_true', help="prefer the checkpoint's EMA weights")
    add_model_input_args(parser)
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs)
    parser.add_argument('--topk', type=int, default=5)
    parser.add_argument('-b', '--batch-size', type=int, default=32)
    parser.add_argument('--workers', '-j', type=int, default=default_workers(2), help='default: 2, at most the usable cores')
    parser.add_argument('--skip-bad-images', action=argparse.BooleanOptionalAction, default=True,
                        help='warn about each file that is no readable image and go on (default); '
                             '--no-skip-bad-images stops at the first')
    parser.add_argument('--device', default=None, help='cuda, npu or cpu (default: the accelerator present)')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--amp-dtype', default='float16', choices=list(devices.AMP_DTYPES))
    parser.add_argument('--results-file', default='', help='write the results here (.csv or .json)')
    parser.add_argument('--results-format', default='', choices=['', 'csv', 'json'], help="default: the file's suffix")
    return parser


def image_files(inputs: List[str]) -> List[str]:
    """The image files among `inputs` and inside the folders among them, in a stable order, each once (a file
    given twice, or also inside a folder given, by any spelling of its path: the first spelling is kept)."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                           if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
            if not found:
                raise UsageError(f'{path}: no image files ({"/".join(IMAGE_EXTENSIONS)}) in this folder.')
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise UsageError(f'{path}: no such file or folder.')
    seen, unique = set(), []
    for f in files:
        if os.path.realpath(f) not in seen:
            seen.add(os.path.realpath(f))
            unique.append(f)
    if len(unique) < len(files):
        _logger.warning(f'{len(files) - len(unique)} of the {len(files)} image paths name a file already given: '
                        'each file is classified once.')
    return unique


def class_names(model: nn.Module, names: Optional[List[str]]) -> List[str]:
    """Names of the model's classes: given ones, else timm's ImageNet names for ImageNet-sized heads, else indices."""
    if names:
        if len(names) != model.num_classes:
            raise UsageError(f'{len(names)} class names for a model of {model.num_classes} classes: '
                             'give a --class-map with one name per class.')
        return list(names)
    subset = infer_imagenet_subset(model)
    if subset:
        return ImageNetInfo(subset).label_descriptions()
    return [str(i) for i in range(model.num_classes)]


class ImageFiles(torch.utils.data.Dataset):
    """(index, image tensor) per file; (index, the decoding error) for a file that is no readable image."""

    def __init__(self, files: List[str], transform, mode: str):
        self.files, self.transform, self.mode = files, transform, mode

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        try:
            with Image.open(self.files[index]) as img:
                return index, self.transform(convert_image(img, self.mode))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            return index, str(e)


def _collate(items):
    """Good images stacked with their indices; bad ones as (index, error) pairs."""
    good = [(i, x) for i, x in items if isinstance(x, torch.Tensor)]
    bad = [(i, x) for i, x in items if not isinstance(x, torch.Tensor)]
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, bad


def predict(model: nn.Module, files: List[str], data_config: Dict, names: List[str], topk: int, args,
            device: torch.device) -> Tuple[List[Dict], List[str]]:
    """One row per readable file: `file`, then `label_i` / `prob_i` for the top-k classes (probabilities in
    [0, 1]); and the files skipped as unreadable (`args.skip_bad_images`; otherwise the first one stops)."""
    transform = create_transform(**{k: data_config[k] for k in ('input_size', 'interpolation', 'mean', 'std',
                                                                'crop_pct', 'crop_mode')})
    dataset = ImageFiles(files, transform, run_info.input_img_mode(args, data_config))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                                         collate_fn=_collate)
    autocast = devices.autocast(device, args.amp, devices.amp_dtype(args.amp_dtype))
    topk = min(topk, len(names))
    rows, skipped = [], []
    with torch.inference_mode():
        for indices, batch, bad in loader:
            for index, error in bad:
                if not args.skip_bad_images:
                    raise UsageError(f'{files[index]}: cannot decode this image ({error}). Replace or remove it, '
                                     'or leave out --no-skip-bad-images to skip unreadable files.')
                _logger.warning(f'Skipped {files[index]}: not a readable image ({error}).')
                skipped.append(files[index])
            if batch is None:
                continue
            with autocast():
                logits = model(batch.to(device))
            probs, top = logits.float().softmax(-1).topk(topk)
            for index, probs_row, top_row in zip(indices, probs.tolist(), top.tolist()):
                row = dict(file=files[index])
                for rank, (p, i) in enumerate(zip(probs_row, top_row), 1):
                    row[f'label_{rank}'], row[f'prob_{rank}'] = names[i], round(p, 4)
                rows.append(row)
    return rows, skipped


def print_table(rows: List[Dict], topk: int) -> None:
    for row in rows:
        best = '  '.join(f"{row[f'label_{k}']} {100 * row[f'prob_{k}']:.1f}%" for k in range(1, topk + 1)
                         if f'label_{k}' in row)
        print(f"{row['file']}: {best}")


def main(argv=None):
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.onnx or args.checkpoint.endswith('.onnx'):  # onnxruntime, as the file's metadata says
        from .deploy import predict_onnx
        return predict_onnx(args, given_flags(parser, argv))
    if not (args.checkpoint or args.pretrained):
        raise UsageError('no weights to predict with: pass --checkpoint FILE or --model NAME --pretrained.')
    saved = run_info.settings_from_checkpoint(args, given_flags(parser, argv))
    check_model_name(args.model)
    files = image_files(args.inputs)
    device = devices.init_device(args)
    model = run_info.rebuild_model(args, saved).to(device).eval()
    data_config = run_info.data_config_for(args, model, saved)
    classify(model, files, data_config, class_names(model, args.class_names), args, device)


def classify(model, files: List[str], data_config: Dict, names: List[str], args, device: torch.device) -> None:
    """Classify `files` and print the table, or write --results-file: the same for a PyTorch model and an
    onnxruntime session (`deploy.predict_onnx`)."""
    rows, skipped = predict(model, files, data_config, names, args.topk, args, device)
    if skipped and not rows:
        raise UsageError(f'none of the {len(files)} files is a readable image (each is named above).')
    if skipped:
        _logger.warning(f'Skipped {len(skipped)} of {len(files)} files: not readable images (named above).')
    if args.results_file:
        write_results(args.results_file, rows, args.results_format)
        kind = 'JSON' if (args.results_format or os.path.splitext(args.results_file)[1][1:]) == 'json' else 'CSV'
        print(f'{len(rows)} results written to {os.path.abspath(args.results_file)} ({kind}).')
    else:
        print_table(rows, args.topk)


def run() -> None:
    """The console script `van-focal-predict`: a user's mistake ends in one line and exit status 2."""
    run_main(main)


if __name__ == '__main__':
    run()
