"""What a checkpoint written by train.py carries about its run, and how the scripts read it back.

Like timm's train.py, train.py saves its argparse Namespace as the checkpoint's `args`: model name,
`model_kwargs`, class count, input size and preprocessing flags, optimisation settings. Two entries
are added: `data_config` (the resolved preprocessing: input_size, interpolation, mean, std,
crop_pct, crop_mode) and `class_names` (index order). `--resume` restores the run's settings, and
validate.py, `van-focal-predict` and `van-focal-export` rebuild the model, its preprocessing and its
labels from there, all three through `settings_from_checkpoint` -> `rebuild_model` ->
`data_config_for`, unless the command line says otherwise. Checkpoints of timm's own train.py work
the same way, without class names.
"""
import argparse
import logging
import os
from typing import Any, Dict, List, Optional, Set

import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.data.readers.class_map import load_class_map

from ..core.checkpoint import checkpoint_loading, load_checkpoint, read_checkpoint_file
from ..core.errors import UsageError

_logger = logging.getLogger(__name__)

# What rebuilds the model and its input: validate.py and predict take these from a checkpoint.
MODEL_KEYS = ('model', 'num_classes', 'in_chans', 'gp', 'model_kwargs')
INPUT_KEYS = ('img_size', 'input_size', 'crop_pct', 'crop_mode', 'mean', 'std', 'interpolation', 'input_img_mode')

# Settings of this machine or this invocation: never taken from the run resumed.
NOT_RESTORED = {
    'data', 'data_dir', 'config', 'resume', 'no_resume_opt', 'initial_checkpoint', 'pretrained', 'pretrained_path',
    'device', 'workers', 'pin_mem', 'output', 'experiment', 'trust_checkpoint', 'log_wandb', 'skip_bad_images',
    'log_interval', 'recovery_interval', 'torchcompile', 'start_epoch', 'class_names', 'data_config',
}


def read_saved_args(path: str, trusted: bool = False) -> Dict[str, Any]:
    """The run settings stored in checkpoint `path` (its `args`), or {} when it has none (e.g. bare weights)."""
    with checkpoint_loading(path):
        checkpoint = read_checkpoint_file(path, trusted)
    saved = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    return dict(vars(saved)) if isinstance(saved, argparse.Namespace) else {}


def _flag(dest: str) -> str:
    return '--' + dest.replace('_', '-')


def restore_run_settings(args: argparse.Namespace, saved: Dict[str, Any], given: Set[str], source: str) -> List[str]:
    """Set every flag of `args` that the command line left unset to its value in the run resumed.

    Returns the flags the command line changed, as `--flag new (was old)`, and logs them.
    """
    changed = []
    for dest, value in saved.items():
        if dest in NOT_RESTORED or not hasattr(args, dest):
            continue
        if dest not in given:
            setattr(args, dest, value)
        elif getattr(args, dest) != value:
            changed.append(f'{_flag(dest)} {getattr(args, dest)} (was {value})')
    if changed:
        _logger.info(f'Resuming {source} with its settings, except: {", ".join(changed)}.')
    else:
        _logger.info(f'Resuming {source} with its settings.')
    return changed


def fill_from_checkpoint(args: argparse.Namespace, saved: Dict[str, Any], given: Set[str], source: str) -> None:
    """Model and input settings a checkpoint holds, for the ones the command line did not give.

    The input size is taken as a whole: a command-line `--img-size` also replaces a stored `--input-size`.
    """
    name = saved.get('model')
    if 'model' not in given and isinstance(name, str) and not timm.is_model(name.split('.')[0]):
        raise UsageError(f"{source} was trained as model '{name}', which is not registered here: pass --model "
                         '(e.g. --model van_b0).')
    keys = list(MODEL_KEYS)
    if not given & {'img_size', 'input_size'}:
        keys += INPUT_KEYS
    else:
        keys += [k for k in INPUT_KEYS if k not in ('img_size', 'input_size')]
    for key in keys:
        if key not in given and saved.get(key) is not None and hasattr(args, key):
            setattr(args, key, saved[key])
    if 'class_names' in saved and not getattr(args, 'class_map', ''):
        args.class_names = saved['class_names']


def settings_from_checkpoint(args: argparse.Namespace, given: Set[str], default_model: Optional[str] = 'van_b0',
                             root: str = '') -> Dict[str, Any]:
    """What validate.py, predict and export know before building the model, the same way for the three:
    `--checkpoint`'s stored run under the command line (`fill_from_checkpoint`), then `--model` (else
    `default_model`; None: it must come from somewhere), the class names (`--class-map`, read under `root`,
    over the checkpoint's) and the class count they give. Returns the stored run settings, for
    `rebuild_model` and `data_config_for`."""
    args.class_names = getattr(args, 'class_names', None)
    saved = read_saved_args(args.checkpoint, args.trust_checkpoint) if args.checkpoint else {}
    fill_from_checkpoint(args, saved, given, args.checkpoint)
    if not args.model:
        if default_model is None:
            where = f'{args.checkpoint} names no model (it holds no train.py arguments)' if args.checkpoint else \
                'no --checkpoint of a train.py run gives one'
            raise UsageError(f'which model? {where}: pass --model NAME (e.g. --model van_b0).')
        args.model = default_model
    if getattr(args, 'class_map', ''):
        args.class_names = class_names_from_map(args.class_map, root)
    if args.num_classes is None and getattr(args, 'class_names', None):
        args.num_classes = len(args.class_names)
    return saved


def has_ema_weights(path: str, trusted: bool = False) -> bool:
    """Whether checkpoint `path` holds EMA weights where timm's loading looks for them."""
    with checkpoint_loading(path):
        checkpoint = read_checkpoint_file(path, trusted)
    return isinstance(checkpoint, dict) and any(checkpoint.get(k) is not None for k in ('state_dict_ema', 'model_ema'))


def rebuild_model(args: argparse.Namespace, saved: Optional[Dict[str, Any]] = None, **kwargs) -> nn.Module:
    """The model `args` describe (after `settings_from_checkpoint`), with `--checkpoint`'s or `--pretrained`
    weights; `kwargs` go to `timm.create_model` too (export's features_only). When the weights do not fit,
    the message names the model the checkpoint's run trained (`saved['model']`)."""
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    with checkpoint_loading(args.model, args.model):
        model = timm.create_model(args.model, pretrained=args.pretrained, num_classes=args.num_classes,
                                  in_chans=in_chans, global_pool=args.gp, **args.model_kwargs, **kwargs)
    if args.checkpoint:
        use_ema = getattr(args, 'use_ema', False)
        if use_ema and not has_ema_weights(args.checkpoint, args.trust_checkpoint):
            _logger.warning(f'--use-ema: {args.checkpoint} holds no EMA weights (train.py saves them with --model-ema); '
                            'using its model weights.')
        trained_as = (saved or {}).get('model')
        load_checkpoint(model, args.checkpoint, use_ema=use_ema, trusted=args.trust_checkpoint,
                        trained_as=trained_as if isinstance(trained_as, str) else '')
    return model


def data_config_for(args: argparse.Namespace, model: torch.nn.Module, saved: Dict[str, Any],
                    verbose: bool = False) -> Dict[str, Any]:
    """The preprocessing: command-line flags over the checkpoint's resolved `data_config` over the model's."""
    stored = saved.get('data_config')
    return resolve_data_config(vars(args), pretrained_cfg=dict(stored) if stored else None, model=model,
                               verbose=verbose)


def plain_data_config(data_config: Dict[str, Any]) -> Dict[str, Any]:
    """`data_config` as plain Python values (tuples, floats, strings): loadable with weights_only=True."""
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in data_config.items()}


def class_names_from_map(class_map: str, root: str = '') -> List[str]:
    """Class names in index order from a timm class-map file (.txt one name per line, or .pkl)."""
    if not os.path.exists(class_map) and not os.path.exists(os.path.join(root, class_map)):
        raise UsageError(f'--class-map {class_map}: no such file.')
    try:
        class_to_idx = load_class_map(class_map, root)
    except (AssertionError, ValueError) as e:
        raise UsageError(f'--class-map {class_map}: {e}. Give a .txt file with one class name per line.') from None
    return [name for name, _ in sorted(class_to_idx.items(), key=lambda item: item[1])]


def input_img_mode(args: argparse.Namespace, data_config: Dict[str, Any]) -> str:
    """`--input-img-mode`, else what the channel count needs (as timm's train.py): 1 -> L, 3 -> RGB."""
    if getattr(args, 'input_img_mode', None):
        return args.input_img_mode
    channels = data_config['input_size'][0]
    if channels not in (1, 3):
        raise UsageError(f'--input-size {channels} ...: image files give 1 (grayscale) or 3 (RGB) channels, not '
                         f'{channels}. Use 1 or 3, or set --input-img-mode for another image mode.')
    return 'RGB' if channels == 3 else 'L'
