"""Everything that differs between CUDA GPUs, Ascend NPUs (through torch_npu) and the CPU.

Device choice, the distributed backend, mixed precision (autocast dtype and loss scaling), the fast-math
switches, the compile backend, the fused attention kernel and synchronisation. The rest of the code only
sees a `torch.device`. The NPU rules follow torch_npu 2.14.0's own sources (docs/npu.md).
"""
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import subprocess
import sys
from contextlib import nullcontext
from functools import lru_cache, partial
from typing import Callable, ContextManager, Dict, Optional

from .errors import DeviceError


NPU_INSTALL_HINT = ('Install the torch / torchvision / torch_npu set of requirements-npu.txt and source CANN\'s '
                    'set_env.sh (docs/npu.md).')


def _keep_torch_npu_from_breaking_torch() -> Optional[str]:
    """Stop torch from auto-loading an installed torch_npu whose CANN is not sourced; why, or None.

    torch >= 2.5 imports every `torch.backends` entry point during `import torch`; torch_npu registers one
    (its wheel's entry_points.txt), so without CANN's libraries `import torch` itself fails, even for the CPU,
    and cannot be retried in the same process. set_env.sh exports ASCEND_HOME_PATH, the variable torch_npu's
    own CANN check reads (torch_npu/_init/registry/registry_manager.py). Only effective before torch is imported.
    """
    if 'torch' in sys.modules or os.environ.get('TORCH_DEVICE_BACKEND_AUTOLOAD', '1') != '1':
        return None
    if os.environ.get('ASCEND_HOME_PATH') or importlib.util.find_spec('torch_npu') is None:
        return None
    os.environ['TORCH_DEVICE_BACKEND_AUTOLOAD'] = '0'
    return ('torch_npu is installed but CANN is not sourced (ASCEND_HOME_PATH is unset), so it was not loaded; '
            'source CANN\'s set_env.sh (e.g. /usr/local/Ascend/cann/set_env.sh) to use the NPU.')


NPU_NOT_LOADED = _keep_torch_npu_from_breaking_torch()

try:
    import torch
except RuntimeError as e:  # torch's own wrapper of a failing backend entry point
    if 'backend extension' not in str(e):
        raise
    raise DeviceError(f'import torch failed while auto-loading a device extension ({e.__cause__ or e}). If it is '
                      'torch_npu: source CANN\'s set_env.sh matching it, or set TORCH_DEVICE_BACKEND_AUTOLOAD=0 to '
                      f'run without the NPU. {NPU_INSTALL_HINT}') from e

from timm.utils import NativeScaler  # noqa: E402  (after the guarded torch import)

_logger = logging.getLogger(__name__)

DIST_BACKENDS = {'cuda': 'nccl', 'npu': 'hccl', 'cpu': 'gloo'}
AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16}
_said = set()


def say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        _logger.warning(message)


# ---------------------------------------------------------------------------------------------
# Which device
# ---------------------------------------------------------------------------------------------

def _import_torch_npu():
    """torch_npu (importing it registers `torch.npu`), or a DeviceError saying what is missing."""
    try:
        return importlib.import_module('torch_npu')
    except ModuleNotFoundError as e:
        if e.name != 'torch_npu':
            raise DeviceError(f'--device npu: torch_npu cannot be imported ({e}). {NPU_INSTALL_HINT}') from None
        raise DeviceError(f'--device npu needs torch_npu, which is not installed. {NPU_INSTALL_HINT}') from None
    except Exception as e:  # a missing CANN library (ImportError/OSError) or torch_npu's own environment checks
        cause = NPU_NOT_LOADED or f'torch_npu cannot be imported ({str(e).splitlines()[0]})'
        raise DeviceError(f'--device npu: {cause}. The CANN version must match torch_npu; {NPU_INSTALL_HINT}') from None


def _npu_available() -> bool:
    """Whether an NPU is visible; False when torch_npu is absent or cannot load."""
    if NPU_NOT_LOADED:
        return False
    try:
        _import_torch_npu()
    except DeviceError:
        return False
    return torch.npu.is_available()


def _check_usable(device_type: str) -> None:
    if device_type == 'cuda' and not torch.cuda.is_available():
        raise DeviceError('--device cuda: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False). '
                          'Check the driver and CUDA_VISIBLE_DEVICES, or use --device cpu.')
    if device_type == 'npu':
        _import_torch_npu()
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
        if _npu_available():
            return 'npu'
        if NPU_NOT_LOADED:
            say_once(f'Running on the CPU: {NPU_NOT_LOADED}')
        return 'cpu'
    _check_usable(name.split(':')[0])
    return name


def init_device(args) -> torch.device:
    """The device of a single-process script (validate.py, benchmark.py): resolved from `args.device`, made
    the current one when indexed (cuda:N / npu:N, so that kernels and allocations land there), with
    `configure` applied."""
    device = torch.device(resolve_device_name(args.device))
    if device.type in ('cuda', 'npu') and device.index is not None:
        getattr(torch, device.type).set_device(device)
    configure(device, args)
    return device


def configure(device: torch.device, args) -> None:
    """Fast math for `device`, and the flags of `args` whose meaning depends on it: `--channels-last`
    (dropped on NPUs), `--torchcompile` (the backend that works here), `--amp-dtype` (None: the best one)."""
    set_fast_math(device)
    if getattr(args, 'channels_last', False) and not channels_last_helps(device):
        say_once('--channels-last ignored on the NPU: its kernels use their own layouts, NHWC only adds copies.')
        args.channels_last = False
    if getattr(args, 'torchcompile', None):
        args.torchcompile = compile_backend(device, args.torchcompile)
    if hasattr(args, 'amp_dtype') and args.amp_dtype is None:
        args.amp_dtype = 'bfloat16' if bf16_supported(device) else 'float16'


def dist_backend(device_name: str) -> str:
    return DIST_BACKENDS[device_name.split(':')[0]]


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------

def amp_dtype(name: str) -> torch.dtype:
    return AMP_DTYPES[name]


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 (Ascend 910: no; A2/A3: yes; CPU: yes)."""
    if device.type in ('cuda', 'npu'):
        return bool(getattr(torch, device.type).is_bf16_supported())
    return True


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype = torch.float16) -> Callable[[], ContextManager]:
    """A factory of autocast contexts for `device` (a no-op context when AMP is off)."""
    if not enabled:
        return nullcontext
    if device.type == 'cpu' and dtype == torch.float16:
        dtype = torch.bfloat16  # CPU autocast runs in bfloat16
        say_once('--amp on the CPU: autocast runs in bfloat16 (the CPU has no float16 autocast), without loss '
                 'scaling; --amp-dtype bfloat16 says so and silences this line.')
    if dtype == torch.bfloat16 and not bf16_supported(device):
        # autocast would disable itself with only a warning and run in float32
        raise DeviceError(f'--amp-dtype bfloat16: {device.type} device {device} has no bfloat16 support; use '
                          '--amp-dtype float16 (with loss scaling).')
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast runs matmul-like ops in on `device_type` ('cuda', 'npu', 'cpu', ...), or None when
    it is off there (always for meta tensors, which autocast does not know)."""
    if device_type == 'meta' or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


_AUTOCAST_PROBES = {'softmax': lambda x: x.softmax(-1), 'gelu': torch.nn.functional.gelu}


@lru_cache(maxsize=None)
def autocast_op_dtype(device_type: str, dtype: torch.dtype, op: str, input_dtype: torch.dtype) -> torch.dtype:
    """The dtype autocast on `device_type`, running matmuls in `dtype`, runs `op` ('softmax', 'gelu') in for an
    `input_dtype` input: float32 where the op is on the device's float32 list (CUDA: softmax), `dtype` where it
    is on its lower-precision one, else `input_dtype`. Found by running the op once on a one-element tensor, so
    that it holds on every device, torch_npu's autocast lists included."""
    x = torch.zeros(1, dtype=input_dtype, device=device_type)
    with torch.autocast(device_type, dtype=dtype):
        return _AUTOCAST_PROBES[op](x).dtype


class NpuScaler(NativeScaler):
    """timm's NativeScaler around torch_npu's GradScaler.

    On Ascend 910 (not A2/A3) an fp16 overflow saturates instead of giving inf; it is read from a per-device
    status register, which torch_npu's GradScaler clears before the step and all-reduces across ranks, so
    that every rank skips the same steps (torch_npu/npu/amp/grad_scaler.py: scale(), _sync_dist_overflow_count).
    torch.amp.GradScaler does neither.
    """

    def __init__(self):
        self._scaler = torch.npu.amp.GradScaler()

    def load_state_dict(self, state_dict):
        # torch_npu's state adds 'dynamic' and requires it; a CUDA or CPU checkpoint lacks it
        self._scaler.load_state_dict({'dynamic': True, **state_dict})


def loss_scaler(device: torch.device, enabled: bool, dtype: torch.dtype) -> Optional[NativeScaler]:
    """A loss scaler where float16 gradients need one (CUDA and NPU); None otherwise."""
    if not (enabled and dtype == torch.float16 and device.type in ('cuda', 'npu')):
        return None
    return NpuScaler() if device.type == 'npu' else NativeScaler(device=device.type)


def set_fast_math(device: torch.device) -> None:
    """TF32 matmuls and cudnn autotuning on CUDA (as timm's train.py); HF32 matmuls on NPUs, their counterpart
    (torch.npu.matmul.allow_hf32, torch_npu/npu/npu_config.py; convolutions use HF32 by default there)."""
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    elif device.type == 'npu':
        torch.npu.matmul.allow_hf32 = True


def channels_last_helps(device: torch.device) -> bool:
    return device.type != 'npu'


def compile_backend(device: torch.device, name: str) -> str:
    """The torch.compile backend for `--torchcompile NAME` on `device`.

    timm's flag without a value means 'inductor', which on an NPU needs the separate triton-ascend package
    (torch_npu/_inductor/__init__.py: _load_triton_backend); without it the backend torch_npu registers
    under the device's name, 'npu' (torchair; torch_npu/dynamo/__init__.py, entry_points.txt), is used.
    """
    if device.type == 'npu' and name == 'inductor':
        from torch.utils._triton import has_triton
        if not has_triton():
            say_once("--torchcompile: inductor needs triton-ascend on the NPU, which is not installed; "
                      "using torch_npu's 'npu' backend.")
            return 'npu'
    return name


# ---------------------------------------------------------------------------------------------
# Fused attention
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _npu_fused_attention_op() -> Optional[Callable]:
    """torch_npu.npu_fusion_attention where this chip runs it (Atlas A2 and later, i.e. the chips that
    produce inf/nan: torch_npu/npu/utils.py is_support_inf_nan), else None."""
    torch_npu = _import_torch_npu()
    if not torch_npu.npu.utils.is_support_inf_nan():
        say_once('Attention: npu_fusion_attention is documented for Atlas A2 and later only; '
                  'using scaled_dot_product_attention on this NPU.')
        return None
    return torch_npu.npu_fusion_attention


def fused_attention_op(device: torch.device) -> Optional[Callable]:
    """The device's own fused attention taking an additive bias, when there is one (the NPU's); None means
    `scaled_dot_product_attention`, which fuses with an additive float mask on CUDA and the CPU."""
    if device.type != 'npu':
        return None
    return _npu_fused_attention_op()


# ---------------------------------------------------------------------------------------------
# Description (for the doctor and bug reports)
# ---------------------------------------------------------------------------------------------

def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return 'not installed'


def _nvidia_driver() -> str:
    try:
        out = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else 'not known'
    except (OSError, subprocess.SubprocessError):
        return 'not known'


def describe(device: torch.device) -> Dict[str, str]:
    """Versions, the device's name, count and memory, and its reduced-precision support, as text."""
    info = {name: _package_version(name) for name in ('torch', 'torchvision', 'timm', 'torch-npu')}
    info['python'] = sys.version.split()[0]
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        info.update(cuda=str(torch.version.cuda), cudnn=str(torch.backends.cudnn.version()), driver=_nvidia_driver(),
                    name=props.name, count=str(torch.cuda.device_count()), memory=f'{props.total_memory / 2 ** 30:.1f} GiB',
                    fp16='yes', bf16='yes' if bf16_supported(device) else 'no',
                    tf32=f"{'yes' if props.major >= 8 else 'no'} (matmul allow_tf32={torch.backends.cuda.matmul.allow_tf32})",
                    hf32='n/a (Ascend only)')
    elif device.type == 'npu':
        npu_utils = _import_torch_npu().npu.utils
        _, total = torch.npu.mem_get_info(device)
        info.update(cann=npu_utils.get_cann_version('CANN'), driver=npu_utils.get_cann_version('DRIVER'),
                    soc=str(npu_utils.get_soc_version()), name=torch.npu.get_device_name(device),
                    count=str(torch.npu.device_count()), memory=f'{total / 2 ** 30:.1f} GiB',
                    fp16='yes', bf16='yes' if bf16_supported(device) else 'no',
                    overflow='inf/nan (A2/A3 class)' if npu_utils.is_support_inf_nan() else 'saturation (910 class)',
                    hf32=f'matmul allow_hf32={torch.npu.matmul.allow_hf32}, conv allow_hf32={torch.npu.conv.allow_hf32}',
                    tf32='n/a (CUDA only)')
    else:
        info.update(name=cpu_name(), count='1', memory=_cpu_memory(),
                    fp16='no (CPU autocast runs bfloat16)', bf16='yes', tf32='n/a', hf32='n/a',
                    threads=str(torch.get_num_threads()))
    if NPU_NOT_LOADED:
        info['torch_npu'] = NPU_NOT_LOADED
    return info


def cpu_name() -> str:
    """The CPU model as lscpu names it, with ' (AVX-512)' where it has AVX-512: speed rules differ by both."""
    try:
        with open('/proc/cpuinfo') as f:
            lines = f.read().splitlines()
        name = next(line.split(':', 1)[1].strip() for line in lines if line.startswith('model name'))
        flags = next((line.split(':', 1)[1].split() for line in lines if line.startswith('flags')), [])
        return name + (' (AVX-512)' if 'avx512f' in flags else '')
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _cpu_memory() -> str:
    try:
        with open('/proc/meminfo') as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith('MemTotal:'))
        return f'{kib / 2 ** 20:.1f} GiB'
    except (OSError, StopIteration):
        return 'not known'


def device_count(device_type: str) -> int:
    return getattr(torch, device_type).device_count() if device_type in ('cuda', 'npu') else 1


# ---------------------------------------------------------------------------------------------
# Synchronisation and memory
# ---------------------------------------------------------------------------------------------

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
