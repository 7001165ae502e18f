"""Everything that differs between CUDA GPUs, Ascend NPUs (through torch_npu) and the CPU.

Device choice, the distributed backend, mixed precision (autocast dtype and loss scaling) and
synchronisation for timing. The rest of the code only sees a `torch.device`.
"""
import importlib
from contextlib import nullcontext
from functools import partial
from typing import Callable, ContextManager, Optional

import torch
from timm.utils import NativeScaler

DIST_BACKENDS = {'cuda': 'nccl', 'npu': 'hccl', 'cpu': 'gloo'}
AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16}


class DeviceError(RuntimeError):
    """The device asked for is not usable on this machine."""


def _npu_available() -> bool:
    """Import torch_npu (it registers `torch.npu`) and report whether an NPU is visible."""
    try:
        importlib.import_module('torch_npu')
    except ImportError:
        return False
    return torch.npu.is_available()


def _check_usable(device_type: str) -> None:
    if device_type == 'cuda' and not torch.cuda.is_available():
        raise DeviceError('--device cuda: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False). '
                          'Check the driver and CUDA_VISIBLE_DEVICES, or use --device cpu.')
    if device_type == 'npu':
        try:
            importlib.import_module('torch_npu')
        except ImportError as e:
            raise DeviceError(f'--device npu needs torch_npu, which cannot be imported ({e}). Install the torch_npu '
                              'release built for this torch version (pip install "van_focal[npu]") and source the '
                              'CANN environment (set_env.sh).') from None
        if not torch.npu.is_available():
            raise DeviceError('--device npu: torch_npu is installed but no Ascend NPU is visible. Check the driver '
                              '(npu-smi info) and ASCEND_RT_VISIBLE_DEVICES, or use --device cpu.')
    if device_type not in DIST_BACKENDS:
        raise DeviceError(f'--device {device_type}: unknown device type; use cuda, npu or cpu.')


def resolve_device_name(name: Optional[str]) -> str:
    """The device asked for, checked, or the accelerator present (CUDA, then NPU), else 'cpu'."""
    if not name:
        if torch.cuda.is_available():
            return 'cuda'
        return 'npu' if _npu_available() else 'cpu'
    _check_usable(name.split(':')[0])
    return name


def dist_backend(device_name: str) -> str:
    return DIST_BACKENDS[device_name.split(':')[0]]


def amp_dtype(name: str) -> torch.dtype:
    return AMP_DTYPES[name]


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype = torch.float16) -> Callable[[], ContextManager]:
    """A factory of autocast contexts for `device` (a no-op context when AMP is off)."""
    if not enabled:
        return nullcontext
    if device.type == 'cpu' and dtype == torch.float16:
        dtype = torch.bfloat16  # CPU autocast runs in bfloat16
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


def loss_scaler(device: torch.device, enabled: bool, dtype: torch.dtype) -> Optional[NativeScaler]:
    """timm's NativeScaler where float16 gradients need loss scaling (CUDA and NPU); None otherwise."""
    if enabled and dtype == torch.float16 and device.type in ('cuda', 'npu'):
        return NativeScaler(device=device.type)
    return None


def synchronize(device: torch.device) -> None:
    """Wait for queued work on `device`, so that wall-clock timings are real."""
    if device.type in ('cuda', 'npu'):
        getattr(torch, device.type).synchronize(device)


def max_memory_allocated(device: torch.device) -> Optional[int]:
    """Peak bytes since the last `reset_peak_memory`: the allocator's on an accelerator, the process's
    peak resident memory (Linux VmHWM) on the CPU; None where neither is known."""
    if device.type in ('cuda', 'npu'):
        return getattr(torch, device.type).max_memory_allocated(device)
    try:
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM:'))
    except (OSError, StopIteration):
        return None


def reset_peak_memory(device: torch.device) -> None:
    if device.type in ('cuda', 'npu'):
        getattr(torch, device.type).reset_peak_memory_stats(device)
        return
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # Linux: resets VmHWM to the current resident size
    except OSError:
        pass


def set_fast_math(device: torch.device) -> None:
    """cudnn autotuning and TF32 matmuls on CUDA (timm's train.py does the same)."""
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
