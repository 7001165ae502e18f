#!/usr/bin/env python3
"""Measure top-1 / top-5 / loss of a model on an image-folder split.

    python validate.py ROOT --model van_b2 --pretrained -b 128
    python validate.py ROOT --model van_b0 --checkpoint output/train/RUN/model_best.pth.tar --use-ema

ROOT holds `--split` (default val/) of class folders, or is itself a folder of class folders.
Preprocessing (resize, crop_pct, mean/std, interpolation) comes from the model's pretrained_cfg
unless a flag overrides it. Flag names follow timm's validate.py.
"""
import van_focal.device  # noqa: F401,I001  (before torch: an installed torch_npu without CANN must not break it)
import argparse
import csv
import json
import logging
import os
import time

import torch
from timm import utils
from timm.data import create_loader, resolve_data_config
from timm.models import create_model
from timm.utils import reparameterize_model
from tqdm import tqdm

import van_focal  # noqa: F401  (registers the models)
from van_focal import device as devices
from van_focal.checkpoint import checkpoint_loading, load_checkpoint
from van_focal.cli import add_model_input_args, check_model_name, parse_args, run_main
from van_focal.data import SPLIT_ALIASES, build_dataset, class_folders, find_split
from van_focal.evaluate import evaluate

_logger = logging.getLogger('validate')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('-c', '--config', default='', metavar='FILE', help='YAML file of flag defaults')
    parser.add_argument('data', metavar='ROOT')
    parser.add_argument('--dataset', default='', help='timm dataset name ("wds/...", "hfds/..."); default: folders')
    parser.add_argument('--split', default='val')
    parser.add_argument('--model', default='van_b0')
    parser.add_argument('--pretrained', action='store_true')
    parser.add_argument('--checkpoint', default='', metavar='PATH')
    parser.add_argument('--use-ema', action='store_true', help="prefer the checkpoint's EMA weights")
    add_model_input_args(parser)
    parser.add_argument('-b', '--batch-size', type=int, default=128)
    parser.add_argument('--workers', '-j', type=int, default=4)
    parser.add_argument('--pin-mem', action='store_true')
    parser.add_argument('--no-prefetcher', action='store_true')
    parser.add_argument('--skip-bad-images', action='store_true')
    parser.add_argument('--device', default=None, help='cuda, npu or cpu (default: the accelerator present)')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--amp-dtype', default='float16', choices=list(devices.AMP_DTYPES))
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--reparam', action='store_true', help='fuse layers for inference (VAN: model.fuse())')
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs)
    parser.add_argument('--results-file', default='', help='write the results here (.csv or .json)')
    return parser


def split_location(root: str, split: str) -> tuple:
    """(root, split) for build_dataset: `root/split`, or `root` itself when it is the folder of class folders."""
    has_split = any(os.path.isdir(os.path.join(root, name)) for name in SPLIT_ALIASES.get(split, (split,)))
    if os.path.isdir(root) and not has_split:
        return os.path.split(os.path.abspath(root))
    return root, split


def write_results(path: str, results: dict) -> None:
    if path.endswith('.json'):
        with open(path, 'w') as f:
            json.dump(results, f, indent=2)
        return
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(results))
        writer.writeheader()
        writer.writerow(results)


def main():
    utils.setup_default_logging()
    args = parse_args(build_parser())
    check_model_name(args.model)
    device = devices.init_device(args)
    root, split = split_location(args.data, args.split) if not args.dataset else (args.data, args.split)
    if args.num_classes is None and not args.dataset and not args.pretrained:
        args.num_classes = len(class_folders(find_split(root, split, '--split')))

    with checkpoint_loading(args.model, args.model):
        model = create_model(args.model, pretrained=args.pretrained, num_classes=args.num_classes, **args.model_kwargs)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, use_ema=args.use_ema, trusted=args.trust_checkpoint)
    if args.reparam:
        model = reparameterize_model(model)
    params = sum(p.numel() for p in model.parameters())
    _logger.info(f'Model {args.model}: {params:,} parameters.')
    data_config = resolve_data_config(vars(args), model=model, verbose=True)
    model.to(device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile)
    autocast = devices.autocast(device, args.amp, devices.amp_dtype(args.amp_dtype))

    dataset = build_dataset(args.dataset, root, split, '--split', is_training=False,
                            skip_bad_images=args.skip_bad_images)
    loader = create_loader(dataset, input_size=data_config['input_size'], batch_size=args.batch_size,
                           is_training=False, use_prefetcher=not args.no_prefetcher, device=device,
                           interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
                           num_workers=args.workers, crop_pct=data_config['crop_pct'], pin_memory=args.pin_mem)

    start = time.time()
    with tqdm(loader, desc=f'{args.model} on {split}', unit='batch') as progress:
        metrics = evaluate(model, progress, device, autocast, channels_last=args.channels_last,
                           move_to_device=args.no_prefetcher,
                           on_batch=lambda top1, top5: progress.set_postfix_str(f'top-1 {top1:.2f}  top-5 {top5:.2f}'))
    devices.synchronize(device)
    seconds = time.time() - start
    skipped = dataset.take_skipped_count() if hasattr(dataset, 'take_skipped_count') else 0

    results = dict(model=args.model, top1=round(metrics['top1'], 3), top5=round(metrics['top5'], 3),
                   loss=round(metrics['loss'], 4), images=metrics['count'],
                   img_per_sec=round(metrics['count'] / seconds, 1), param_count=params,
                   img_size=data_config['input_size'][-1], crop_pct=data_config['crop_pct'],
                   interpolation=data_config['interpolation'], device=str(device), skipped_images=skipped)
    print(f"{args.model}: top-1 {results['top1']:.2f}  top-5 {results['top5']:.2f}  loss {results['loss']:.4f}  "
          f"({results['images']} images, {results['img_per_sec']} img/s)")
    if args.results_file:
        write_results(args.results_file, results)


if __name__ == '__main__':
    run_main(main)
