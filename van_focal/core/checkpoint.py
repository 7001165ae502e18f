"""Checkpoint loading with one clear message per problem.

Checkpoints load with `weights_only=True`. Besides tensors, the official training loops pickled
their arguments: timm 0.4.12 an `argparse.Namespace` (timm allows it itself) and the Swin-style
loop of Focal Transformer a yacs `CfgNode`. Exactly those are allowed (`allow_training_configs`);
any other pickled object is refused unless the caller says the file is trusted.
"""
import argparse
import os
import pickle
import re
import traceback
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

import torch
import torch.nn as nn
from timm.models import load_checkpoint as timm_load_checkpoint

from .errors import CheckpointError
from .foreign_checkpoints import read_foreign_checkpoint



class YacsConfig:
    """Stands in for `yacs.config.CfgNode` when unpickling a config saved inside a checkpoint: the
    config comes back as an OrderedDict, the one dict type whose pickled state weights_only
    loading restores (the CfgNode flags land in its `__dict__`). yacs need not be installed."""

    def __new__(cls, *args):
        return OrderedDict()


TRAINING_CONFIG_TYPES = [argparse.Namespace, (YacsConfig, 'yacs.config.CfgNode')]


def allow_training_configs() -> None:
    """Let `weights_only=True` loading accept the training-argument objects of the official checkpoints.

    Registered globally so that timm's own loaders (`pretrained=True`, `timm.models.load_checkpoint`)
    accept them too. `checkpoint_loading` registers them again (it is idempotent), since any
    `safe_globals` context, such as timm's own for argparse.Namespace, removes its types on exit.
    """
    torch.serialization.add_safe_globals(TRAINING_CONFIG_TYPES)


TRUST_HINT = ('If you trust this file, load it with weights_only=False: '
              '`van_focal.load_checkpoint(model, path, trusted=True)`, or `--trust-checkpoint` in train.py / validate.py.')


def _summarise_state_dict_error(message: str) -> str:
    """Turn torch's `Error(s) in loading state_dict` wall into counts and a few examples."""
    missing = re.findall(r'"([^"]+)"', (re.search(r'Missing key\(s\) in state_dict: (.*)', message) or [''])[0])
    unexpected = re.findall(r'"([^"]+)"', (re.search(r'Unexpected key\(s\) in state_dict: (.*)', message) or [''])[0])
    shapes = re.findall(r'size mismatch for ([^:]+): copying a param with shape (torch\.Size\(\[[^]]*\]\)) from '
                        r'checkpoint, the shape in current model is (torch\.Size\(\[[^]]*\]\))', message)
    parts = []
    if missing:
        parts.append(f'{len(missing)} weights missing (e.g. {", ".join(missing[:3])})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected (e.g. {", ".join(unexpected[:3])})')
    if shapes:
        examples = '; '.join(f'{k}: file {a[11:-1]} vs model {b[11:-1]}' for k, a, b in shapes[:3])
        parts.append(f'{len(shapes)} of other shape ({examples})')
    return ', '.join(parts) or message.splitlines()[0]


def _raised_by_torch_load(error: BaseException) -> bool:
    return any(frame.filename.endswith('torch/serialization.py') for frame in traceback.extract_tb(error.__traceback__))


def read_checkpoint_file(path: str, trusted: bool = False) -> Any:
    """torch.load of `path` on the CPU, memory-mapped where the format allows it (zip files, not legacy ones);
    PaddlePaddle and MindSpore files are read without their frameworks (`foreign_checkpoints`)."""
    foreign = read_foreign_checkpoint(path)
    if foreign is not None:
        return foreign
    with open(path, 'rb') as f:
        is_zip = f.read(2) == b'PK'
    return torch.load(path, map_location='cpu', weights_only=not trusted, mmap=is_zip)


def _is_serialized_file(source: str) -> bool:
    """Whether `source` starts like a torch.save file (a zip archive, or a legacy pickle); True if unreadable."""
    try:
        with open(source, 'rb') as f:
            head = f.read(4)
    except OSError:
        return True
    return head.startswith(b'PK') or head[:1] == b'\x80'


def _classes_hint(shapes) -> str:
    """Advice when only the classifier differs: the class count, which --num-classes sets."""
    if not shapes or not all(re.match(r'(module\.)?head\b', key) for key, _, _ in shapes):
        return 'Is it a checkpoint of another model or size?'
    dims = lambda size: [int(d) for d in re.findall(r'\d+', size)]
    file_classes, model_classes = dims(shapes[0][1])[0], dims(shapes[0][2])[0]
    return (f'It has {file_classes} classes, the model {model_classes}: pass --num-classes {file_classes} '
            f'(data with {file_classes} classes), or fine-tune from it with --pretrained-path.')


def explain(error: BaseException, source: str, model_name: str = 'this model',
            trained_as: str = '') -> Optional[CheckpointError]:
    """A CheckpointError for a known loading failure of `source`, or None for anything else (a genuine bug).
    `trained_as`: the model the file's training arguments name, if they name one."""
    text = str(error)
    if isinstance(error, FileNotFoundError) and (not _raised_by_torch_load(error) or not os.path.exists(source)):
        return CheckpointError(f'{source}: no such checkpoint file.')
    refusal = next((e for e in (error, error.__cause__) if isinstance(e, pickle.UnpicklingError)
                    and 'Weights only load failed' in str(e)), None)
    if (refusal is not None or _raised_by_torch_load(error)) and not _is_serialized_file(source):
        return CheckpointError(f'{source} is not a PyTorch checkpoint (neither a zip archive nor a pickle). '
                               'Check the path: pass the .pth / .pth.tar file that train.py or torch.save wrote.')
    if refusal is not None:
        found = re.search(r'Unsupported global: GLOBAL ([\w.]+)', str(refusal))
        what = f' ({found.group(1)})' if found else ''
        return CheckpointError(f'{source} holds pickled Python objects{what} that weights_only loading refuses. '
                               + TRUST_HINT)
    if _raised_by_torch_load(error):
        first_line = (text.splitlines() or [type(error).__name__])[0][:120]
        return CheckpointError(f'{source} is truncated or not a PyTorch checkpoint ({first_line}). '
                               'Download or copy it again.')
    if isinstance(error, RuntimeError) and 'Error(s) in loading state_dict' in text:
        shapes = re.findall(r'size mismatch for ([^:]+): copying a param with shape (torch\.Size\(\[[^]]*\]\)) from '
                            r'checkpoint, the shape in current model is (torch\.Size\(\[[^]]*\]\))', text)
        missing_or_unexpected = re.search(r'(Missing|Unexpected) key\(s\)', text)
        if trained_as and trained_as.split('.')[0] != model_name.split('.')[0]:
            hint = (f'It holds a {trained_as} (the model its run trained): leave --model out to build the '
                    f"checkpoint's model, or pass --model {trained_as}.")
        else:
            hint = 'Is it a checkpoint of another model or size?' if missing_or_unexpected else _classes_hint(shapes)
        return CheckpointError(f'{source} does not fit {model_name}: {_summarise_state_dict_error(text)}. {hint}')
    return None


@contextmanager
def checkpoint_loading(source: str, model_name: str = 'this model', trained_as: str = '') -> Iterator[None]:
    """Allow the training configs, and re-raise known failures as one CheckpointError naming `source`."""
    allow_training_configs()
    try:
        yield
    except Exception as e:
        clear = explain(e, source, model_name, trained_as)
        if clear is None:
            raise
        raise clear from None


def load_checkpoint(model: nn.Module, path: str, use_ema: bool = True, strict: bool = True,
                    trusted: bool = False, trained_as: str = '') -> Any:
    """`timm.models.load_checkpoint` with clear errors; `trusted=True` allows any pickled object in the file.
    `trained_as`: the model name the file's training arguments hold, named when the weights do not fit."""
    name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
    with checkpoint_loading(str(path), name, trained_as):
        return timm_load_checkpoint(model, str(path), use_ema=use_ema, strict=strict, weights_only=not trusted)


def weights_source(pretrained_cfg: Dict[str, Any]) -> str:
    """Where `create_model(pretrained=True)` takes the weights from, for messages."""
    if pretrained_cfg.get('file'):
        return str(pretrained_cfg['file'])
    if pretrained_cfg.get('hf_hub_id'):
        return f"hf-hub:{pretrained_cfg['hf_hub_id']}/{pretrained_cfg.get('hf_hub_filename') or ''}"
    return str(pretrained_cfg.get('url') or 'pretrained weights')
