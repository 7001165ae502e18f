"""What a checkpoint written by train.py carries about its run, and how the scripts read it back.

Like timm's train.py, train.py saves its argparse Namespace as the checkpoint's `args`: model name,
`model_kwargs`, class count, input size and preprocessing flags, optimisation settings. Two entries
are added: `data_config` (the resolved preprocessing: input_size, interpolation, mean, std,
crop_pct, crop_mode) and `class_names` (index order). `--resume` restores the run's settings, and
validate.py and `python -m van_focal.predict` rebuild the model, its preprocessing and its labels
from there, unless the command line says otherwise. Checkpoints of timm's own train.py work the
same way, without class names.
"""
import argparse
import logging
import os
from typing import Any, Dict, List, Set

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


def rebuild_model(args: argparse.Namespace) -> nn.Module:
    """The model `args` describe (after `fill_from_checkpoint`), with `--checkpoint`'s or `--pretrained` weights."""
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    with checkpoint_loading(args.model, args.model):
        model = timm.create_model(args.model, pretrained=args.pretrained, num_classes=args.num_classes,
                                  in_chans=in_chans, global_pool=args.gp, **args.model_kwargs)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, use_ema=args.use_ema, trusted=args.trust_checkpoint)
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
