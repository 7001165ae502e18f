#!/usr/bin/env python3
"""Train VAN / Focal Transformer (or any timm model) on an image-folder dataset such as ImageNet.

    python train.py ROOT --config configs/van_b0.yaml [flags]          # one process
    bash distributed_train.sh 8 ROOT --config configs/van_b2.yaml      # 8 processes (torchrun)

ROOT holds train/<class>/<images> and val/<class>/<images>. Flags keep timm's train.py names;
`--config` sets their defaults, the command line overrides it. The parts come from timm's
library: datasets and loaders, RandAugment / random erasing / mixup / cutmix, losses,
optimizers, schedulers, EMA, AMP loss scaling and checkpoint saving.
"""
import van_focal.core.device  # noqa: F401,I001  (before torch: an installed torch_npu without CANN must not break it)
import argparse
import logging
import os
import time
from collections import OrderedDict
from contextlib import nullcontext
from datetime import datetime

import torch
import torch.nn as nn
import yaml
from timm import utils
from timm.data import FastCollateMixup, Mixup, create_loader, resolve_data_config
from timm.layers import convert_sync_batchnorm, set_fast_norm
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import create_model, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import ClassificationTask, load_task_ema_checkpoint, resume_task_checkpoint

import van_focal  # noqa: F401  (registers the models)
from van_focal.core import device as devices
from van_focal.train import finetune, run_checks, run_info
from van_focal.core.checkpoint import checkpoint_loading
from van_focal.core.errors import UsageError
from van_focal.core.progress import RunEta, format_duration
from van_focal.cli.args import (add_data_root_args, add_model_input_args, add_named_dataset_args, check_model_name,
                                data_root, default_workers, defaults_epilog, given_flags, named_dataset_kwargs,
                                parse_args, run_main)
from van_focal.train.data import build_dataset, check_num_classes, class_folders, find_split
from van_focal.train.evaluate import evaluate
from van_focal.train.preemption import StopSignals, restartable_init_method, skipping_sampler
from van_focal.train.slurm import prepare_srun_environment
from van_focal.train.meters import LossMeter
from van_focal.train.steps import (AtomicCheckpointSaver, check_finite, check_training_flags, plot_summary,
                                   resolve_resume_auto, resume_within_epoch, seed_epoch)

_logger = logging.getLogger('train')
# the defaults that differ from timm's own script, also rendered by the docs (training page)
DOCS_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'docs', 'data')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=defaults_epilog(os.path.join(DOCS_DATA, 'defaults_vs_timm.csv'), 'train.py'))
    parser.add_argument('-c', '--config', default='', metavar='FILE', help='YAML file of flag defaults')
    add_data_root_args(parser, 'dataset root (with train/ and val/ folders)')

    group = parser.add_argument_group('Dataset')
    group.add_argument('--dataset', default='', help='timm dataset name ("wds/...", "hfds/..."); default: folders')
    group.add_argument('--train-split', default='train')
    group.add_argument('--val-split', default='val', help='empty: no validation')
    group.add_argument('--skip-bad-images', action='store_true', help='skip and count undecodable images')
    group.add_argument('--train-num-samples', type=int, default=None, help='iterable datasets: samples per epoch')
    group.add_argument('--val-num-samples', type=int, default=None)
    add_named_dataset_args(group)
    group.add_argument('--workers', '-j', type=int, default=default_workers(), help='default: 4, at most the usable cores')
    group.add_argument('--worker-seeding', default='all')
    group.add_argument('--pin-mem', action='store_true')
    group.add_argument('--no-prefetcher', action='store_true')

    group = parser.add_argument_group('Model')
    group.add_argument('--model', default='van_b0')
    group.add_argument('--pretrained', action='store_true')
    group.add_argument('--pretrained-path', default=None, metavar='PATH',
                       help='load this file as the pretrained weights (head re-initialised if the class count differs)')
    group.add_argument('--initial-checkpoint', default='', metavar='PATH')
    group.add_argument('--resume', default='', metavar='PATH',
                       help='continue this run (model, optimizer, EMA, epoch, position in the epoch); '
                            '"auto": the --experiment folder\'s last.pth.tar if there is one')
    group.add_argument('--no-resume-opt', action='store_true')
    add_model_input_args(group)
    group.add_argument('-b', '--batch-size', type=int, default=128, help='per process')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None)
    group.add_argument('--grad-accum-steps', type=int, default=1)
    group.add_argument('--grad-checkpointing', action='store_true')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs)
    group.add_argument('--head-init-scale', type=float, default=None)
    group.add_argument('--head-init-bias', type=float, default=None)
    group.add_argument('--fast-norm', action='store_true')

    group = parser.add_argument_group('Optimizer')
    group.add_argument('--opt', default='adamw')
    group.add_argument('--opt-eps', type=float, default=None)
    group.add_argument('--opt-betas', type=float, nargs='+', default=None)
    group.add_argument('--momentum', type=float, default=0.9)
    group.add_argument('--weight-decay', type=float, default=0.05)
    group.add_argument('--clip-grad', type=float, default=None)
    group.add_argument('--clip-mode', default='norm', choices=['norm', 'value', 'agc'])
    group.add_argument('--layer-decay', type=float, default=None)
    group.add_argument('--layer-decay-min-scale', type=float, default=0)
    group.add_argument('--layer-decay-no-opt-scale', type=float, default=None)
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=utils.ParseKwargs)

    group = parser.add_argument_group('Learning rate schedule')
    group.add_argument('--sched', default='cosine')
    group.add_argument('--sched-on-updates', action='store_true', help='step the schedule every update')
    group.add_argument('--lr', type=float, default=None, help='default: --lr-base scaled to the global batch')
    group.add_argument('--lr-base', type=float, default=1e-3)
    group.add_argument('--lr-base-size', type=int, default=1024)
    group.add_argument('--lr-base-scale', default='linear', choices=['linear', 'sqrt'])
    group.add_argument('--warmup-lr', type=float, default=1e-6)
    group.add_argument('--min-lr', type=float, default=1e-6)
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='PCT')
    group.add_argument('--lr-noise-pct', type=float, default=0.67)
    group.add_argument('--lr-noise-std', type=float, default=1.0)
    group.add_argument('--lr-cycle-mul', type=float, default=1.0)
    group.add_argument('--lr-cycle-decay', type=float, default=0.5)
    group.add_argument('--lr-cycle-limit', type=int, default=1)
    group.add_argument('--lr-k-decay', type=float, default=1.0)
    group.add_argument('--epochs', type=int, default=300)
    group.add_argument('--start-epoch', type=int, default=None, help='start here, also over the epoch resumed')
    group.add_argument('--decay-milestones', type=int, nargs='+', default=[90, 180, 270])
    group.add_argument('--patience-epochs', type=int, default=10)
    group.add_argument('--warmup-epochs', type=int, default=5)
    group.add_argument('--warmup-prefix', action='store_true')
    group.add_argument('--cooldown-epochs', type=int, default=0)
    group.add_argument('--decay-epochs', type=float, default=90)
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1)

    group = parser.add_argument_group('Augmentation and regularisation')
    group.add_argument('--no-aug', action='store_true', help='no training augmentation (overrides the flags below)')
    group.add_argument('--train-crop-mode', default=None)
    group.add_argument('--aa', default=None, help='e.g. rand-m9-mstd0.5-inc1')
    group.add_argument('--aug-repeats', type=float, default=0, help='repeated augmentation (distributed only)')
    group.add_argument('--bce-loss', action='store_true')
    group.add_argument('--bce-sum', action='store_true')
    group.add_argument('--bce-target-thresh', type=float, default=None)
    group.add_argument('--bce-pos-weight', type=float, default=None)
    group.add_argument('--reprob', type=float, default=0.)
    group.add_argument('--remode', default='pixel')
    group.add_argument('--recount', type=int, default=1)
    group.add_argument('--color-jitter', type=float, default=0.4)
    group.add_argument('--color-jitter-prob', type=float, default=None)
    group.add_argument('--grayscale-prob', type=float, default=None)
    group.add_argument('--gaussian-blur-prob', type=float, default=None)
    group.add_argument('--scale', type=float, nargs=2, default=[0.08, 1.0])
    group.add_argument('--ratio', type=float, nargs=2, default=[3. / 4., 4. / 3.])
    group.add_argument('--hflip', type=float, default=0.5)
    group.add_argument('--vflip', type=float, default=0.)
    group.add_argument('--train-interpolation', default='random')
    group.add_argument('--mixup', type=float, default=0.)
    group.add_argument('--cutmix', type=float, default=0.)
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    group.add_argument('--mixup-prob', type=float, default=1.)
    group.add_argument('--mixup-switch-prob', type=float, default=0.5)
    group.add_argument('--mixup-mode', default='batch', choices=['batch', 'pair', 'elem'])
    group.add_argument('--mixup-off-epoch', type=int, default=0)
    group.add_argument('--smoothing', type=float, default=0.1)
    group.add_argument('--drop', type=float, default=0.)
    group.add_argument('--drop-path', type=float, default=None)
    group.add_argument('--model-ema', action='store_true')
    group.add_argument('--model-ema-decay', type=float, default=0.9998)
    group.add_argument('--model-ema-warmup', action='store_true')

    group = parser.add_argument_group('Device and run')
    group.add_argument('--device', default=None, help='cuda, npu or cpu (default: the accelerator present)')
    group.add_argument('--amp', action='store_true', help='mixed precision')
    group.add_argument('--amp-dtype', default='float16', choices=list(devices.AMP_DTYPES))
    group.add_argument('--channels-last', action='store_true')
    group.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND')
    group.add_argument('--torchcompile-mode', default=None)
    group.add_argument('--sync-bn', action='store_true')
    group.add_argument('--local_rank', '--local-rank', type=int, default=0, help='set by torch.distributed.launch')
    group.add_argument('--dist-bn', default='reduce', choices=['reduce', 'broadcast', ''])
    group.add_argument('--seed', type=int, default=42)
    group.add_argument('--output', default='', help='parent folder of the run folders (default: ./output/train)')
    group.add_argument('--experiment', default='', help='run folder name (default: date-model-size)')
    group.add_argument('--checkpoint-hist', type=int, default=10)
    group.add_argument('--recovery-interval', type=int, default=0, help='also write last.pth.tar every N updates, resumable at that update')
    group.add_argument('--eval-metric', default='top1')
    group.add_argument('--log-interval', type=int, default=50)
    group.add_argument('--log-wandb', action='store_true')
    return parser


def build_loaders(args, data_config, device):
    common = dict(distributed=args.distributed, device=device, use_prefetcher=not args.no_prefetcher,
                  pin_memory=args.pin_mem, mean=data_config['mean'], std=data_config['std'],
                  num_workers=args.workers, persistent_workers=False)  # fresh workers per epoch: seeded per epoch
    class_to_idx = {name: i for i, name in enumerate(args.class_names)} if args.class_map else None
    dataset_train = build_dataset(args.dataset, args.data, args.train_split, '--train-split', is_training=True,
                                  class_to_idx=class_to_idx, skip_bad_images=args.skip_bad_images,
                                  batch_size=args.batch_size, seed=args.seed, input_img_mode=args.input_img_mode,
                                  **named_dataset_kwargs(args, args.train_num_samples))
    mixup_args = dict(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                      prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                      label_smoothing=args.smoothing, num_classes=args.num_classes)
    mixup_active = not args.no_aug and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None)
    collate_mixup = FastCollateMixup(**mixup_args) if mixup_active and not args.no_prefetcher else None
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        collate_fn=collate_mixup, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        auto_augment=args.aa, no_aug=args.no_aug, train_crop_mode=args.train_crop_mode,
        num_aug_repeats=args.aug_repeats, color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob,
        gaussian_blur_prob=args.gaussian_blur_prob, worker_seeding=args.worker_seeding,
        interpolation=(not args.no_aug and args.train_interpolation) or data_config['interpolation'], **common)
    loader_train.mixup_fn = Mixup(**mixup_args) if mixup_active and args.no_prefetcher else None

    loader_eval = None
    if args.val_split:
        dataset_eval = build_dataset(args.dataset, args.data, args.val_split, '--val-split', is_training=False,
                                     class_to_idx=getattr(getattr(dataset_train, 'reader', None), 'class_to_idx', None),
                                     skip_bad_images=args.skip_bad_images, batch_size=args.batch_size,
                                     input_img_mode=args.input_img_mode,
                                     **named_dataset_kwargs(args, args.val_num_samples))
        loader_eval = create_loader(
            dataset_eval, input_size=data_config['input_size'], batch_size=args.validation_batch_size or args.batch_size,
            is_training=False, interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'],
            crop_mode=data_config['crop_mode'], **common)
    return loader_train, loader_eval, mixup_active


def train_one_epoch(epoch, task, loader, optimizer, args, device, lr_scheduler, autocast, loss_scaler, output_dir,
                    stop, saver=None, position=None, run_eta=None):
    """One epoch, or its rest after `position`; on an agreed stop signal, `stop.position` says where it ended."""
    model = task.get_trainable_module()
    model.train()
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if getattr(loader, 'mixup_enabled', False):
            loader.mixup_enabled = False
        if loader.mixup_fn is not None:
            loader.mixup_fn.mixup_enabled = False
    accum = args.grad_accum_steps
    start_batch = position['batches_done'] if position else 0
    num_batches = start_batch + len(loader)
    updates_per_epoch = (num_batches + accum - 1) // accum
    num_updates = start_update = epoch * updates_per_epoch + (start_batch + accum - 1) // accum
    losses = LossMeter(position['loss_sum'], position['loss_count']) if position else LossMeter()
    data_time = utils.AverageMeter()
    start = data_start = time.time()
    samples = 0
    optimizer.zero_grad()
    for batch_idx, (input, target) in enumerate(loader, start_batch):
        last_batch = batch_idx == num_batches - 1
        need_update = last_batch or (batch_idx + 1) % accum == 0
        if args.no_prefetcher:
            input, target = input.to(device), target.to(device)
            if loader.mixup_fn is not None:
                input, target = loader.mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        data_time.update(time.time() - data_start)

        with task.no_sync() if args.distributed and not need_update else nullcontext():
            with autocast():
                loss = task(input, target)['loss']
            losses.update(loss, input.shape[0], batch_idx)
            clip_params = task.get_clip_parameters(exclude_head='agc' in args.clip_mode) if args.clip_grad else None
            if loss_scaler is not None:
                loss_scaler(loss / accum, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=clip_params, need_update=need_update)
            else:
                (loss / accum).backward()
                if need_update:
                    if args.clip_grad:
                        utils.dispatch_clip_grad(clip_params, value=args.clip_grad, mode=args.clip_mode)
                    optimizer.step()
        samples += input.shape[0] * args.world_size
        if not need_update:
            data_start = time.time()
            continue

        num_updates += 1
        optimizer.zero_grad()
        task.update_ema(step=num_updates)
        lr_scheduler.step_update(num_updates=num_updates)  # timm's update-stepped schedules ignore the metric
        update_idx = batch_idx // accum
        if update_idx % args.log_interval == 0 or last_batch:
            check_finite(losses, epoch, output_dir)
            devices.synchronize(device)
            elapsed = time.time() - start
            eta = elapsed / (num_updates - start_update) * (updates_per_epoch - update_idx - 1)
            lr = sum(g['lr'] for g in optimizer.param_groups) / len(optimizer.param_groups)
            run_left = ''
            if run_eta is not None:
                share = 1 - (start_batch / num_batches)  # of the epoch, trained by this process
                run_left = f', run {format_duration(run_eta.seconds_left(epoch, elapsed, eta, share))}'
            if utils.is_primary(args):
                _logger.info(f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch}]  Loss: {losses.val:#.3g} '
                             f'({losses.avg:#.3g})  LR: {lr:.3e}  {samples / elapsed:>7.1f} img/s  '
                             f'Data: {data_time.avg:.3f}s  ETA: {format_duration(eta)}{run_left}')
        recovery_due = args.recovery_interval and num_updates % args.recovery_interval == 0
        if stop.agreed(num_updates) or recovery_due:
            check_finite(losses, epoch, output_dir)  # steps since the last check must not reach the disk
            loss_sum = losses.sum
            if args.distributed:  # every rank continues from the mean over ranks
                loss_sum = utils.reduce_tensor(torch.tensor([loss_sum], device=device), args.world_size).item()
            position = dict(epoch=epoch, batches_done=batch_idx + 1, batch_size=args.batch_size,
                            world_size=args.world_size, loss_sum=loss_sum, loss_count=losses.count)
            if stop.signum:
                stop.position = position
                break
            if saver is not None:
                saver.save_position(position)
        data_start = time.time()

    loss_avg = losses.avg
    if args.distributed:
        loss_avg = utils.reduce_tensor(torch.tensor([loss_avg], device=device), args.world_size).item()
    skipped = loader.dataset.take_skipped_count() if hasattr(loader.dataset, 'take_skipped_count') else 0
    if skipped:
        _logger.warning(f'Epoch {epoch}: skipped {skipped} unreadable images (--skip-bad-images).')
    return OrderedDict([('loss', loss_avg)])


def train_loss(args, mixup_active: bool) -> nn.Module:
    """timm's choice: soft-target CE under mixup (which smooths the targets), else smoothed CE; BCE if asked."""
    bce = dict(target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum, pos_weight=args.bce_pos_weight)
    if mixup_active:
        return BinaryCrossEntropy(**bce) if args.bce_loss else SoftTargetCrossEntropy()
    if args.bce_loss:
        return BinaryCrossEntropy(smoothing=args.smoothing, **bce)
    return LabelSmoothingCrossEntropy(smoothing=args.smoothing) if args.smoothing else nn.CrossEntropyLoss()


def validate(model, loader, args, device, autocast, log_suffix=''):
    metrics = evaluate(model, loader, device, autocast, channels_last=args.channels_last,
                       move_to_device=args.no_prefetcher, world_size=args.world_size if args.distributed else 1)
    if utils.is_primary(args):
        _logger.info(f"Eval{log_suffix}: loss {metrics['loss']:.4f}  top-1 {metrics['top1']:.2f}  "
                     f"top-5 {metrics['top5']:.2f}")
    return OrderedDict((k, metrics[k]) for k in ('loss', 'top1', 'top5'))


def output_folder(args, data_config) -> str:
    """The run folder: `--output/--experiment`, else the folder of the checkpoint resumed, else a new one."""
    if args.resume and not args.experiment and not args.output:
        return os.path.dirname(os.path.abspath(args.resume))
    name = args.experiment or '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model),
                                        str(data_config['input_size'][-1])])
    return utils.get_outdir(args.output or './output/train', name)


def build_train_model(args, device: torch.device) -> nn.Module:
    """The model to train, on `device`: pretrained / initial weights, classes from the data folders by default."""
    if args.class_map:
        args.class_names = run_info.class_names_from_map(args.class_map, args.data)
    elif not args.dataset:
        split_dir = find_split(args.data, args.train_split, '--train-split')
        args.class_names = class_folders(split_dir)
        args.num_classes = check_num_classes(args.num_classes, args.class_names, split_dir)
    if args.num_classes is None and args.class_names:
        args.num_classes = len(args.class_names)
    args.in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    weights = dict(pretrained=args.pretrained)
    if args.pretrained_path:
        weights = finetune.pretrained_path_kwargs(args.model, args.pretrained_path, args.num_classes)
    if args.fast_norm:
        set_fast_norm()
    with checkpoint_loading(args.initial_checkpoint or args.pretrained_path or args.model, args.model):
        model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, global_pool=args.gp,
                             drop_rate=args.drop, drop_path_rate=args.drop_path,
                             checkpoint_path=args.initial_checkpoint or None, **weights, **args.model_kwargs)
    args.num_classes = model.num_classes
    if args.head_init_scale is not None or args.head_init_bias is not None:
        finetune.init_head(model, args.head_init_scale, args.head_init_bias)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if utils.is_primary(args):
        _logger.info(f'Model {args.model}: {sum(p.numel() for p in model.parameters()):,} parameters.')
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''
        model = convert_sync_batchnorm(model)
    return model


def resume_run(args, task, optimizer, loss_scaler) -> int:
    """Restore model, optimizer and loss scaler from `--resume`; the epoch to continue from.

    timm's own log line would give the checkpoint's `epoch` field, the last *completed* epoch: -1 for a run
    stopped inside epoch 0. One line here says what was restored and where the run continues instead."""
    with checkpoint_loading(args.resume, args.model):
        resume_epoch = resume_task_checkpoint(
            task, args.resume, optimizer=None if args.no_resume_opt else optimizer,
            loss_scaler=None if args.no_resume_opt else loss_scaler, log_info=False,
            weights_only=not args.trust_checkpoint)
    if utils.is_primary(args):
        restored = 'model' if args.no_resume_opt else 'model and optimizer'
        where = f'continuing with epoch {resume_epoch}' if resume_epoch is not None else 'no epoch recorded'
        _logger.info(f'Restored the {restored} from {args.resume}: {where}.')
    return resume_epoch


def start_wandb(args, output_dir: str) -> None:
    try:
        import wandb
    except ImportError:
        raise UsageError('--log-wandb needs the wandb package: pip install wandb (or drop the flag).') from None
    wandb.init(name=os.path.basename(output_dir), config=vars(args))


def main(argv=None):
    utils.setup_default_logging()
    parser = build_parser()
    args = parse_args(parser, argv)
    args.data, args.class_names = data_root(args), None
    resolve_resume_auto(args)
    if args.resume:
        saved = run_info.read_saved_args(args.resume, args.trust_checkpoint)
        run_info.restore_run_settings(args, saved, given_flags(parser, argv), args.resume)
    args_text = yaml.safe_dump(vars(args), default_flow_style=False)
    check_model_name(args.model)
    check_training_flags(args)
    args.device = devices.resolve_device_name(args.device)
    args.dist_backend = devices.dist_backend(args.device)
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    args.dist_url = restartable_init_method()
    srun = prepare_srun_environment()  # srun's processes: MASTER_ADDR / MASTER_PORT / threads, as torchrun sets them
    device = utils.init_distributed_device(args)
    if srun:
        _logger.info(srun)
    devices.configure(device, args)
    _logger.info(f'Process {args.rank} of {args.world_size} on {device}.')
    utils.random_seed(args.seed, args.rank)
    stop = StopSignals(args.distributed, device)

    model = build_train_model(args, device)
    data_config = resolve_data_config(vars(args), model=model, verbose=utils.is_primary(args))
    args.data_config = run_info.plain_data_config(data_config)  # saved with args in every checkpoint
    args.input_img_mode = run_info.input_img_mode(args, data_config)
    amp_dtype = devices.amp_dtype(args.amp_dtype)
    autocast = devices.autocast(device, args.amp, amp_dtype)
    loss_scaler = devices.loss_scaler(device, args.amp, amp_dtype)

    loader_train, loader_eval, mixup_active = build_loaders(args, data_config, device)
    run_checks.check_updates_per_epoch(loader_train, args.batch_size, args.world_size)
    task = ClassificationTask(model, criterion=train_loss(args, mixup_active), device=device, verbose=False)

    if args.lr is None:
        global_batch = args.batch_size * args.world_size * args.grad_accum_steps
        ratio = global_batch / args.lr_base_size
        args.lr = args.lr_base * (ratio ** 0.5 if args.lr_base_scale == 'sqrt' else ratio)
        if utils.is_primary(args):
            _logger.info(f'lr {args.lr:.3g} = --lr-base {args.lr_base:g} scaled ({args.lr_base_scale}) '
                         f'from batch {args.lr_base_size} to the global batch {global_batch}.')
    optimizer = create_optimizer_v2(task.get_trainable_module(), **optimizer_kwargs(cfg=args), **args.opt_kwargs)

    resume_epoch = resume_run(args, task, optimizer, loss_scaler) if args.resume else None
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        if args.resume:
            with checkpoint_loading(args.resume, args.model):
                load_task_ema_checkpoint(task, args.resume, weights_only=not args.trust_checkpoint)
    if args.torchcompile:
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
        if task.has_ema():
            task.compile_ema(backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        task.prepare_distributed(device_ids=[device] if device.type != 'cpu' else None)

    eval_metric = args.eval_metric if loader_eval is not None else 'loss'
    saver, output_dir = None, ''
    if utils.is_primary(args):
        output_dir = output_folder(args, data_config)
        saver = AtomicCheckpointSaver(model=task.get_trainable_module(), optimizer=optimizer, args=args,
                                      amp_scaler=loss_scaler, checkpoint_dir=output_dir, recovery_dir=output_dir,
                                      decreasing=eval_metric == 'loss', max_history=args.checkpoint_hist, task=task)
        if args.resume and os.path.dirname(os.path.abspath(args.resume)) == os.path.abspath(output_dir):
            saver.load_state_dict_from_checkpoint(args.resume)
        with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
            f.write(args_text)
        if args.log_wandb:
            start_wandb(args, output_dir)

    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=eval_metric == 'loss'), updates_per_epoch=updates_per_epoch)
    start_epoch = args.start_epoch if args.start_epoch is not None else resume_epoch or 0
    epoch_tail = skipping_sampler(loader_train)
    position = resume_within_epoch(args, start_epoch, len(loader_train), epoch_tail) if args.resume else None
    if start_epoch or position:
        if args.sched_on_updates:
            done = (position['batches_done'] + args.grad_accum_steps - 1) // args.grad_accum_steps if position else 0
            lr_scheduler.step_update(start_epoch * updates_per_epoch + done)
        else:
            lr_scheduler.step(start_epoch)
    if utils.is_primary(args):
        _logger.info(f'Training epochs {start_epoch}..{num_epochs - 1}, {updates_per_epoch} updates each; '
                     f'output in {output_dir}.')
        run_checks.warn_if_nothing_left(start_epoch, num_epochs)
        run_checks.warn_if_warmup_fills_run(args.warmup_epochs, start_epoch, num_epochs, args.warmup_lr, args.lr)

    summary_csv = os.path.join(output_dir, 'summary.csv') if output_dir else ''
    run_eta = RunEta(num_epochs)
    for epoch in range(start_epoch, num_epochs):
        epoch_start = time.time()
        seed_epoch(args.seed, epoch, args.rank)
        if hasattr(loader_train.sampler, 'set_epoch'):
            loader_train.sampler.set_epoch(epoch)
        epoch_position = position if epoch == start_epoch else None
        if epoch_tail is not None:
            epoch_tail.skip = epoch_position['batches_done'] * args.batch_size if epoch_position else 0
        train_metrics = train_one_epoch(epoch, task, loader_train, optimizer, args, device, lr_scheduler, autocast,
                                        loss_scaler, output_dir, stop, saver, epoch_position, run_eta)
        train_seconds = time.time() - epoch_start
        if stop.position is not None:
            if saver is not None:
                saver.save_position(stop.position)
            stop.finish(f"after batch {stop.position['batches_done']} of epoch {epoch}", output_dir)
        if args.distributed and args.dist_bn:
            utils.distribute_bn(task.get_trainable_module(), args.world_size, args.dist_bn == 'reduce')
        eval_metrics = None
        if loader_eval is not None:
            eval_metrics = validate(task.get_eval_model(), loader_eval, args, device, autocast)
            if task.has_ema():
                if args.distributed and args.dist_bn:
                    utils.distribute_bn(task.get_trainable_module(ema=True), args.world_size, args.dist_bn == 'reduce')
                eval_metrics = validate(task.get_eval_model(ema=True), loader_eval, args, device, autocast, ' (EMA)')
        metric = (eval_metrics or train_metrics)[eval_metric]
        if saver is not None:
            lrs = [g['lr'] for g in optimizer.param_groups]
            utils.update_summary(epoch, train_metrics, eval_metrics, filename=summary_csv, lr=sum(lrs) / len(lrs),
                                 write_header=not os.path.exists(summary_csv), log_wandb=args.log_wandb)
            saver.save_checkpoint(epoch, metric=metric)
            plot_summary(summary_csv, os.path.join(output_dir, 'summary.png'))
        lr_scheduler.step(epoch + 1, metric)
        if epoch_position is None:  # a whole epoch: the yardstick for the ones left
            run_eta.epoch_finished(train_seconds, time.time() - epoch_start)
        if utils.is_primary(args) and epoch + 1 < num_epochs:
            left = run_eta.whole_epochs(num_epochs - epoch - 1) if run_eta.epoch_seconds else None
            _logger.info(f'Epoch {epoch} took {format_duration(time.time() - epoch_start)}'
                         + (f'; epochs {epoch + 1}..{num_epochs - 1} will take about {format_duration(left)}.'
                            if left is not None else '.'))
        if epoch + 1 < num_epochs and stop.agreed():
            stop.finish(f'at the end of epoch {epoch}', output_dir)

    if args.distributed:
        torch.distributed.destroy_process_group()
    if saver is not None and saver.best_metric is not None:
        _logger.info(f'Best {eval_metric}: {saver.best_metric:.3f} (epoch {saver.best_epoch}); '
                     f'checkpoints and summary.csv / summary.png in {output_dir}')


if __name__ == '__main__':
    run_main(main)
