"""Weights saved by other frameworks, read without those frameworks: PaddlePaddle `.pdparams` and
MindSpore `.ckpt`, recognised from their contents (not their names).

- PaddlePaddle (`paddle.save` of a state dict): a pickle of {name: numpy array} and a
  `StructuredToParameterName@@` entry (name -> Paddle's own parameter name, such as `linear_3.w_0`).
  It is read by an unpickler that rebuilds numpy arrays and plain containers and refuses anything
  else, so no code in the file can run. Paddle stores a Linear weight as [in, out]: the parameters
  Paddle names `linear_*.w_*` are transposed to PyTorch's [out, in]; every other array (convolutions,
  norms, relative-position tables) keeps its layout.
- MindSpore (`mindspore.save_checkpoint`): a protobuf `Checkpoint` of named tensors, parsed by the
  `protobuf` package from the message definition of MindSpore's `checkpoint.proto` (built below).
  Normalisation parameters get PyTorch's names (`gamma`/`beta` -> `weight`/`bias`, `moving_mean`/
  `moving_variance` -> `running_mean`/`running_var`, plus `num_batches_tracked`); optimizer and
  training state (`moment1.*`, `adam_m.*`, `global_step`, ...) is left out, with a log line.

Which model a file belongs to, and how its names map to this package's, is the models' business
(`van_layouts`, Focal's `checkpoint_filter_fn`). `read_foreign_checkpoint` is called by every reader of
checkpoint files: `core.checkpoint.read_checkpoint_file` and, through `read_foreign_files_in_timm`,
timm's own loader (`timm.models.load_checkpoint`, `pretrained_cfg_overlay=dict(file=...)`).
"""
import logging
import pickle
import re
from functools import lru_cache
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from .errors import CheckpointError

_logger = logging.getLogger(__name__)

PADDLE_NAMES_KEY = 'StructuredToParameterName@@'
# torch.save's legacy (non-zip) format starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_TORCH_LEGACY_HEAD = b'\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'


# ---------------------------------------------------------------------------------------------
# Which format
# ---------------------------------------------------------------------------------------------

def _varint_end(data: bytes, start: int) -> int:
    """Index just past the protobuf varint starting at `start` (len(data) + 1 if it does not end)."""
    for i in range(start, min(len(data), start + 10)):
        if not data[i] & 0x80:
            return i + 1
    return len(data) + 1


def sniff(path: str) -> Optional[str]:
    """'paddle' for a pickle that torch.save did not write, 'mindspore' for a MindSpore checkpoint,
    None for anything else (PyTorch files, safetensors, unreadable paths: their readers report them)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(32)
    except OSError:
        return None
    if head[:1] == b'\x80' and len(head) > 2:  # a pickle, protocol 2 or later
        return None if head[2:2 + len(_TORCH_LEGACY_HEAD)] == _TORCH_LEGACY_HEAD else 'paddle'
    # Checkpoint.value (field 1, length-delimited), whose first field is Value.tag (field 1, a string).
    if head[:1] == b'\x0a':
        end = _varint_end(head, 1)
        if end < len(head) and head[end:end + 1] == b'\x0a':
            return 'mindspore'
    return None


# ---------------------------------------------------------------------------------------------
# PaddlePaddle
# ---------------------------------------------------------------------------------------------

def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


# What a pickled dict of numpy arrays needs; numpy 1.x files name `numpy.core`, numpy 2 ones `numpy._core`.
_ALLOWED_GLOBALS: Dict[tuple, Callable[[], Any]] = {
    ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy', 'ndarray'): lambda: np.ndarray,
    ('numpy', 'dtype'): lambda: np.dtype,
    ('collections', 'OrderedDict'): lambda: __import__('collections').OrderedDict,
    ('_codecs', 'encode'): lambda: __import__('codecs').encode,  # bytes in protocol-2 pickles (torch allows it too)
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, numpy scalars and plain containers; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f'{module}.{name}')
        return allowed()


# Optimizer accumulators in a Paddle file (`.pdopt`): `<param>_moment1_0`, `<param>_beta1_pow_acc_0`, ...
_PADDLE_OPTIMIZER = re.compile(r'_(moment\d|beta\d_pow_acc|velocity|mean_square|mean_grad)_\d+$|^(LR_Scheduler|master_weights)$')


def read_paddle(path: str) -> Dict[str, torch.Tensor]:
    """The weights of a `.pdparams` file as PyTorch tensors, Linear weights transposed to [out, in]."""
    try:
        with open(path, 'rb') as f:
            content = _ArraysOnlyUnpickler(f).load()
    except pickle.UnpicklingError as e:
        if re.fullmatch(r'[\w.]+\.[\w]+', str(e)):
            raise CheckpointError(
                f'{path} is a pickle holding Python objects ({e}), not only arrays, so it is not read (it could run '
                'code). A PaddlePaddle .pdparams holds numpy arrays only: check where this file comes from.') from None
        raise CheckpointError(f'{path} is truncated or not a PaddlePaddle .pdparams file ({e}). '
                              'Download or copy it again.') from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as e:
        raise CheckpointError(f'{path} is truncated or not a PaddlePaddle .pdparams file '
                              f'({type(e).__name__}: {str(e)[:80]}). Download or copy it again.') from None
    if not isinstance(content, dict):
        raise CheckpointError(f'{path} is a pickle of a {type(content).__name__}, not a PaddlePaddle state dict '
                              '(a dict of arrays, as paddle.save(model.state_dict()) writes).')
    paddle_names = content.get(PADDLE_NAMES_KEY) if isinstance(content.get(PADDLE_NAMES_KEY), dict) else {}
    optimizer = [k for k in content if isinstance(k, str) and _PADDLE_OPTIMIZER.search(k)]
    weights = {k: v for k, v in content.items()
               if isinstance(k, str) and isinstance(v, np.ndarray) and k not in optimizer}
    if not weights:
        what = 'an optimizer state (a .pdopt)' if optimizer else 'no arrays'
        raise CheckpointError(f'{path} holds {what}, no model weights: pass the .pdparams file saved beside it.')
    if optimizer:
        _logger.warning(f'{path}: loading its weights only; {len(optimizer)} optimizer entries left out.')
    state_dict = {}
    for key, value in weights.items():
        if value.dtype.kind not in 'biufc':
            raise CheckpointError(f'{path}: {key} is an array of {value.dtype}, not of numbers: not a PaddlePaddle '
                                  'state dict.')
        tensor = torch.from_numpy(np.array(value, copy=True))
        paddle_name = str(paddle_names.get(key, ''))
        is_linear = paddle_name.startswith('linear_') if paddle_names else key.endswith('.weight')
        state_dict[key] = tensor.t().contiguous() if is_linear and tensor.dim() == 2 else tensor
    return state_dict


# ---------------------------------------------------------------------------------------------
# MindSpore
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def mindspore_checkpoint_message() -> type:
    """The `Checkpoint` message class of MindSpore's checkpoint.proto (proto2), built with protobuf's
    descriptor API (no generated code):

        message Checkpoint {
          message Value { required string tag = 1;
                          oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }
          repeated Value value = 1; }
        message TensorProto { repeated int64 dims = 1; required string tensor_type = 2;
                              required bytes tensor_content = 3; }
        message MapTensorProto { repeated TensorProto tensor = 1; }
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name='van_focal_mindspore_checkpoint.proto',
                                               package='van_focal_mindspore', syntax='proto2')
    tensor = proto.message_type.add(name='TensorProto')
    tensor.field.add(name='dims', number=1, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
    tensor.field.add(name='tensor_type', number=2, type=field.TYPE_STRING, label=field.LABEL_REQUIRED)
    tensor.field.add(name='tensor_content', number=3, type=field.TYPE_BYTES, label=field.LABEL_REQUIRED)
    map_tensor = proto.message_type.add(name='MapTensorProto')
    map_tensor.field.add(name='tensor', number=1, type=field.TYPE_MESSAGE, label=field.LABEL_REPEATED,
                         type_name='.van_focal_mindspore.TensorProto')
    checkpoint = proto.message_type.add(name='Checkpoint')
    value = checkpoint.nested_type.add(name='Value')
    value.oneof_decl.add(name='value')
    value.field.add(name='tag', number=1, type=field.TYPE_STRING, label=field.LABEL_REQUIRED)
    value.field.add(name='tensor', number=2, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                    type_name='.van_focal_mindspore.TensorProto', oneof_index=0)
    value.field.add(name='maptensor', number=3, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                    type_name='.van_focal_mindspore.MapTensorProto', oneof_index=0)
    checkpoint.field.add(name='value', number=1, type=field.TYPE_MESSAGE, label=field.LABEL_REPEATED,
                         type_name='.van_focal_mindspore.Checkpoint.Value')
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName('van_focal_mindspore.Checkpoint'))


_MINDSPORE_DTYPES = {
    'Float16': torch.float16, 'Float32': torch.float32, 'Float64': torch.float64, 'BFloat16': torch.bfloat16,
    'Int8': torch.int8, 'Int16': torch.int16, 'Int32': torch.int32, 'Int64': torch.int64,
    'UInt8': torch.uint8, 'Bool': torch.bool,
}
# Optimizer moments and training state that MindSpore's training cells save beside the weights.
_MINDSPORE_OPTIMIZER = re.compile(
    r'^(moment[12]|adam_[mv]|lamb_[mv]|accum|moments|mean_grad|mean_square|_ema_weights)\.|'
    r'^(global_step|learning_rate|beta[12]_power|scale_sense|loss_scale|current_iterator_step|'
    r'last_overflow_iterator_step|epoch_num|step_num)$')
_MINDSPORE_NORM_NAMES = ((re.compile(r'\.gamma$'), '.weight'), (re.compile(r'\.beta$'), '.bias'),
                         (re.compile(r'\.moving_mean$'), '.running_mean'),
                         (re.compile(r'\.moving_variance$'), '.running_var'))


def read_mindspore(path: str) -> Dict[str, torch.Tensor]:
    """The weights of a MindSpore `.ckpt` as PyTorch tensors under PyTorch's normalisation names."""
    from google.protobuf.message import DecodeError
    message = mindspore_checkpoint_message()()
    with open(path, 'rb') as f:
        data = f.read()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise CheckpointError(f'{path} is truncated or not a MindSpore checkpoint ({str(e)[:80] or "unparseable"}). '
                              'Download or copy it again.') from None
    chunks: Dict[str, list] = {}
    for value in message.value:  # MindSpore writes a large tensor as several values with the same tag
        if value.WhichOneof('value') != 'tensor':
            continue
        chunks.setdefault(value.tag, []).append(value.tensor)
    optimizer = [tag for tag in chunks if _MINDSPORE_OPTIMIZER.search(tag)]
    state_dict = {}
    for tag, parts in chunks.items():
        if tag in optimizer:
            continue
        dtype = _MINDSPORE_DTYPES.get(parts[0].tensor_type)
        if dtype is None:
            raise CheckpointError(f'{path}: tensor {tag} has type {parts[0].tensor_type}, which is not read here.')
        content = b''.join(p.tensor_content for p in parts)
        dims = list(parts[0].dims)
        expected = int(np.prod(dims)) * torch.empty((), dtype=dtype).element_size()
        if len(content) != expected:
            raise CheckpointError(f'{path} is truncated or damaged: tensor {tag} {dims} has {len(content)} bytes, '
                                  f'not {expected}. Download or copy it again.')
        tensor = torch.frombuffer(bytearray(content), dtype=dtype).reshape(dims) if content else torch.zeros(dims, dtype=dtype)
        for pattern, name in _MINDSPORE_NORM_NAMES:
            tag = pattern.sub(name, tag)
        state_dict[tag] = tensor
        if tag.endswith('.running_mean'):
            state_dict[tag[:-len('running_mean')] + 'num_batches_tracked'] = torch.tensor(0)
    if not state_dict:
        raise CheckpointError(f'{path} holds {"optimizer state" if optimizer else "no tensors"} and no model weights.')
    if optimizer:
        _logger.warning(f'{path}: loading its weights only; {len(optimizer)} optimizer / training-state entries '
                        f'left out (e.g. {optimizer[0]}).')
    return state_dict


# ---------------------------------------------------------------------------------------------
# Every door
# ---------------------------------------------------------------------------------------------

READERS = {'paddle': read_paddle, 'mindspore': read_mindspore}


def read_foreign_checkpoint(path: Any) -> Optional[Dict[str, torch.Tensor]]:
    """The state dict of a PaddlePaddle or MindSpore file, or None for any other file (for torch.load)."""
    if not isinstance(path, (str, bytes)) and not hasattr(path, '__fspath__'):
        return None  # a file object or buffer: torch.load's business
    kind = sniff(str(path))
    return READERS[kind](str(path)) if kind else None


def read_foreign_files_in_timm() -> None:
    """Make timm's checkpoint reader (behind `timm.models.load_checkpoint`, `load_state_dict` and
    `pretrained_cfg_overlay=dict(file=...)`) read PaddlePaddle and MindSpore files too. Idempotent."""
    from timm.models import _helpers
    original = _helpers._torch_load
    if getattr(original, 'reads_foreign_checkpoints', False):
        return

    def _torch_load(checkpoint_path, *args, **kwargs):
        foreign = read_foreign_checkpoint(checkpoint_path)
        return foreign if foreign is not None else original(checkpoint_path, *args, **kwargs)

    _torch_load.reads_foreign_checkpoints = True
    _helpers._torch_load = _torch_load
