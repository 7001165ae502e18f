#!/usr/bin/env python3
"""Measure top-1 / top-5 / loss of a model on an image-folder split.

    python validate.py ROOT --model van_b2 --pretrained -b 128
    python validate.py ROOT --checkpoint output/train/RUN/model_best.pth.tar --use-ema

ROOT holds `--split` (default val/) of class folders, or is itself a folder of class folders.
A checkpoint written by train.py gives the model, its class count and names, the input size and
the preprocessing; otherwise these come from the model's pretrained_cfg. A flag overrides either.
Flag names follow timm's validate.py.
"""
import van_focal.core.device  # noqa: F401,I001  (before torch: an installed torch_npu without CANN must not break it)
import argparse
import logging
import os
import time

import torch
from timm import utils
from timm.data import create_loader
from timm.layers import set_fast_norm
from timm.utils import reparameterize_model

import van_focal  # noqa: F401  (registers the models)
from van_focal.core import device as devices
from van_focal.train import run_info
from van_focal.core.errors import UsageError
from van_focal.core.progress import Progress
from van_focal.cli.args import (add_data_root_args, add_model_input_args, add_named_dataset_args, check_model_name,
                                data_root, default_workers, defaults_epilog, given_flags, named_dataset_kwargs,
                                parse_args, run_main, write_results)
from van_focal.train.data import SPLIT_ALIASES, build_dataset, class_folders, find_split
from van_focal.train.evaluate import evaluate

_logger = logging.getLogger('validate')
# the defaults that differ from timm's own script, also rendered by the docs (training page)
DOCS_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'docs', 'data')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=defaults_epilog(os.path.join(DOCS_DATA, 'validate_defaults_vs_timm.csv'), 'validate.py'))
    parser.add_argument('-c', '--config', default='', metavar='FILE', help='YAML file of flag defaults')
    add_data_root_args(parser, 'dataset root (with a val/ folder), or a folder of class folders')
    parser.add_argument('--dataset', default='', help='timm dataset name ("wds/...", "hfds/..."); default: folders')
    parser.add_argument('--split', default='val')
    parser.add_argument('--num-samples', type=int, default=None, help='iterable datasets: samples to evaluate')
    add_named_dataset_args(parser)
    parser.add_argument('--model', '-m', default=None, help="default: the checkpoint's, else van_b0")
    parser.add_argument('--pretrained', action='store_true')
    parser.add_argument('--checkpoint', default='', metavar='PATH')
    parser.add_argument('--random-weights', action='store_true',
                        help='evaluate a randomly initialised model (a baseline): no --checkpoint or --pretrained')
    parser.add_argument('--use-ema', action='store_true', help="prefer the checkpoint's EMA weights")
    add_model_input_args(parser)
    parser.add_argument('-b', '--batch-size', type=int, default=128)
    parser.add_argument('--workers', '-j', type=int, default=default_workers(), help='default: 4, at most the usable cores')
    parser.add_argument('--pin-mem', action='store_true')
    parser.add_argument('--no-prefetcher', action='store_true')
    parser.add_argument('--skip-bad-images', action='store_true')
    parser.add_argument('--device', default=None, help='cuda, npu or cpu (default: the accelerator present)')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--amp-dtype', default='float16', choices=list(devices.AMP_DTYPES))
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--reparam', action='store_true', help='fuse layers for inference (VAN: model.fuse())')
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND')
    parser.add_argument('--torchcompile-mode', default=None)
    parser.add_argument('--fast-norm', action='store_true')
    parser.add_argument('--crop-border-pixels', type=int, default=None, help='crop this many pixels off each edge')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs)
    parser.add_argument('--seed', type=int, default=42)
    parser.add_argument('--results-file', default='', help='write the results here (.csv or .json)')
    parser.add_argument('--results-format', default='', choices=['', 'csv', 'json'], help="default: the file's suffix")
    return parser


# Folder names that mark ROOT as a dataset root rather than a folder of class folders.
SPLIT_NAMES = ('train', 'val', 'validation', 'test')


def split_location(root: str, split: str) -> tuple:
    """(root, split) for build_dataset: `root/split`, or `root` itself when it is the folder of class folders."""
    has_split = any(os.path.isdir(os.path.join(root, name)) for name in SPLIT_ALIASES.get(split, (split,)))
    if os.path.isdir(root) and not has_split:
        if any(os.path.isdir(os.path.join(root, name)) for name in SPLIT_NAMES):
            find_split(root, split, '--split')  # a dataset root without this split: says which splits it has
        return os.path.split(os.path.abspath(root))
    return root, split


def resolve_num_classes(args, root: str, split: str, from_checkpoint: bool) -> None:
    """The class count: given, else the class names', else the folders' (not for --pretrained: its own).
    Without class names to match folders by, more folders than classes is an error."""
    if args.num_classes is None and args.class_names:
        args.num_classes = len(args.class_names)
    if args.dataset or (args.num_classes is None and args.pretrained):
        return
    folders = len(class_folders(find_split(root, split, '--split')))
    if args.num_classes is None:
        args.num_classes = folders
    elif folders > args.num_classes and not args.class_names:
        source = 'from the checkpoint' if from_checkpoint else '--num-classes'
        raise UsageError(f'{os.path.join(root, split)} has {folders} class folders, the model {args.num_classes} '
                         f'classes ({source}). Evaluate data of the classes it was trained on.')


def model_weights_given(args) -> None:
    if not (args.checkpoint or args.pretrained or args.random_weights):
        raise UsageError('no weights to evaluate: pass --checkpoint FILE or --pretrained '
                         '(or --random-weights to evaluate a randomly initialised model as a baseline).')




def main(argv=None):
    utils.setup_default_logging()
    parser = build_parser()
    args = parse_args(parser, argv)
    args.data, args.class_names = data_root(args), None
    given = given_flags(parser, argv)
    saved = run_info.settings_from_checkpoint(args, given, root=args.data)
    check_model_name(args.model)
    device = devices.init_device(args)
    utils.random_seed(args.seed)
    if args.fast_norm:
        set_fast_norm()
    root, split = split_location(args.data, args.split) if not args.dataset else (args.data, args.split)
    resolve_num_classes(args, root, split, from_checkpoint='num_classes' in saved and 'num_classes' not in given)
    model_weights_given(args)  # after the data checks: a wrong ROOT is the first thing to say
    model = run_info.rebuild_model(args, saved)
    if args.reparam:
        model = reparameterize_model(model)
    params = sum(p.numel() for p in model.parameters())
    _logger.info(f'Model {args.model}: {params:,} parameters.')
    data_config = run_info.data_config_for(args, model, saved, verbose=True)
    model.to(device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)
    autocast = devices.autocast(device, args.amp, devices.amp_dtype(args.amp_dtype))

    class_to_idx = {name: i for i, name in enumerate(args.class_names)} if args.class_names else None
    dataset = build_dataset(args.dataset, root, split, '--split', is_training=False, class_to_idx=class_to_idx,
                            skip_bad_images=args.skip_bad_images,
                            input_img_mode=run_info.input_img_mode(args, data_config),
                            **named_dataset_kwargs(args, args.num_samples))
    loader = create_loader(dataset, input_size=data_config['input_size'], batch_size=args.batch_size,
                           is_training=False, use_prefetcher=not args.no_prefetcher, device=device,
                           interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
                           num_workers=args.workers, crop_pct=data_config['crop_pct'],
                           crop_mode=data_config['crop_mode'], crop_border_pixels=args.crop_border_pixels,
                           pin_memory=args.pin_mem)

    start = time.time()
    with Progress(loader, desc=f'{args.model} on {split}', unit='batch') as progress:
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
        write_results(args.results_file, results, args.results_format)


if __name__ == '__main__':
    run_main(main)
