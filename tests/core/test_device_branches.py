"""Tests of OUR device branching (van_focal/device.py and the attention dispatch), not of torch_npu.

No NPU is reachable here. A stand-in `torch_npu` / `torch.npu` records what our code calls and answers as a
chip of either class would (Ascend 910: no bf16, saturating overflow; A2/A3: bf16, inf/nan). Whether
torch_npu itself behaves as its documentation says is for `python -m van_focal.doctor` on the hardware.
The fused-attention mapping is checked against a reference implementation of the formula torch_npu
documents for npu_fusion_attention (torch_npu/_op_plugin_docs.py).
"""
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from van_focal.core import device as devices
from van_focal.train.meters import LossMeter
from van_focal.cli.doctor import SMALL
from van_focal.models import _attention

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Stand-ins
# ---------------------------------------------------------------------------------------------

def documented_fusion_attention(calls):
    """npu_fusion_attention as documented: y = Softmax(Mask(scale * (pse + q k^T), atten_mask), keep_prob),
    out = Dropout(y) v; 7 outputs, the first the attention. Records its arguments and checks the documented
    constraints our call must meet."""
    def op(query, key, value, head_num, input_layout, pse=None, padding_mask=None, atten_mask=None, scale=1.,
           keep_prob=1., pre_tockens=2147483647, next_tockens=2147483647, inner_precise=0, prefix=None,
           actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False):
        calls.append(dict(head_num=head_num, input_layout=input_layout, pse=pse, scale=scale, keep_prob=keep_prob,
                          atten_mask=atten_mask, sparse_mode=sparse_mode, shapes=(query.shape, key.shape)))
        assert input_layout == 'BNSD' and head_num == query.shape[1]
        assert query.dtype == key.dtype == value.dtype == pse.dtype, 'query, key, value and pse share one dtype'
        B, N, Sq, D = query.shape
        Skv = key.shape[2]
        assert pse.dim() == 4 and pse.shape[1] == N and pse.shape[3] == Skv
        assert (pse.shape[0], pse.shape[2]) in ((B, Sq), (B, 1), (1, Sq)), 'pse is BNSS, BN1Skv or 1NSS'
        assert 0 < keep_prob <= 1 and 1 <= N <= 256 and 1 <= D <= 768
        scores = scale * (pse.float() + query.float() @ key.float().transpose(-2, -1))
        y = F.dropout(scores.softmax(-1), 1 - keep_prob)
        return (y @ value.float()).to(query.dtype), None, None, None, 0, 0, 0
    return op


class StandInGradScaler:
    instances = []

    def __init__(self):
        self.loaded = None
        StandInGradScaler.instances.append(self)

    def load_state_dict(self, state):
        assert 'dynamic' in state  # torch_npu's GradScaler.load_state_dict reads state_dict["dynamic"]
        self.loaded = state


@pytest.fixture
def npu(monkeypatch):
    """A stand-in NPU of the A2 class; tests set `npu.bf16` / `npu.inf_nan` False for a 910."""
    calls = []
    record = lambda name: lambda *a, **k: calls.append((name, a, k))  # noqa: E731
    state = types.SimpleNamespace(bf16=True, inf_nan=True, available=True)
    npu_module = types.SimpleNamespace(
        is_available=lambda: state.available, is_bf16_supported=lambda: state.bf16,
        set_device=record('set_device'), synchronize=record('synchronize'), device_count=lambda: 2,
        matmul=types.SimpleNamespace(allow_hf32=False), conv=types.SimpleNamespace(allow_hf32=True),
        amp=types.SimpleNamespace(GradScaler=StandInGradScaler),
        utils=types.SimpleNamespace(is_support_inf_nan=lambda: state.inf_nan))
    torch_npu = types.ModuleType('torch_npu')
    torch_npu.npu = npu_module
    torch_npu.npu_fusion_attention = documented_fusion_attention(calls)
    monkeypatch.setitem(sys.modules, 'torch_npu', torch_npu)
    monkeypatch.setattr(torch, 'npu', npu_module, raising=False)
    devices._npu_fused_attention_op.cache_clear()
    devices._said.clear()
    state.calls, state.module = calls, npu_module
    yield state
    devices._npu_fused_attention_op.cache_clear()


# torch.device('npu') parses only once torch_npu has renamed torch's PrivateUse1 backend, which cannot be
# undone within the test process; our code reads only .type and .index.
NPU = types.SimpleNamespace(type='npu', index=None)


def args(**kwargs):
    return types.SimpleNamespace(**{'device': None, 'channels_last': False, 'torchcompile': None,
                                    'amp_dtype': 'float16', **kwargs})


# ---------------------------------------------------------------------------------------------
# Device choice, set_device, flags
# ---------------------------------------------------------------------------------------------

def test_npu_is_chosen_and_made_current(npu, monkeypatch):
    assert devices.resolve_device_name(None) in ('cuda', 'npu')
    real_device = torch.device
    monkeypatch.setattr(torch, 'device', lambda name: types.SimpleNamespace(type='npu', index=int(name[4:]))
                        if name.startswith('npu:') else real_device(name))
    device = devices.init_device(args(device='npu:1'))
    assert (device.type, device.index) == ('npu', 1)
    assert ('set_device', (device,), {}) in npu.calls
    npu.available = False
    with pytest.raises(devices.DeviceError, match='no Ascend NPU is visible'):
        devices.resolve_device_name('npu')


def test_cuda_index_is_made_current(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'set_device', calls.append)
    devices.init_device(args(device='cuda:1'))
    assert calls == [torch.device('cuda:1')]


def test_torch_npu_that_cannot_load_says_what_to_do(monkeypatch):
    def import_module(name):
        raise ImportError('libhccl.so: cannot open shared object file: No such file or directory')
    monkeypatch.setattr(devices.importlib, 'import_module', import_module)
    with pytest.raises(devices.DeviceError, match='libhccl.so') as error:
        devices.resolve_device_name('npu')
    assert 'set_env.sh' in str(error.value) and 'requirements-npu.txt' in str(error.value)
    assert devices.resolve_device_name(None) in ('cpu', 'cuda')  # auto-detection just skips the NPU


def test_npu_flags(npu, monkeypatch, caplog):
    monkeypatch.setattr(torch.utils._triton, 'has_triton', lambda: False)
    a = args(channels_last=True, torchcompile='inductor', amp_dtype=None)
    with caplog.at_level(logging.WARNING):
        devices.configure(NPU, a)
    assert npu.module.matmul.allow_hf32 is True  # HF32, the NPU's TF32
    assert a.channels_last is False and a.torchcompile == 'npu' and a.amp_dtype == 'bfloat16'
    assert 'channels-last' in caplog.text and 'triton-ascend' in caplog.text
    monkeypatch.setattr(torch.utils._triton, 'has_triton', lambda: True)
    npu.bf16 = False  # Ascend 910
    a = args(torchcompile='inductor', amp_dtype=None)
    devices.configure(NPU, a)
    assert a.torchcompile == 'inductor' and a.amp_dtype == 'float16'
    a = args(channels_last=True, torchcompile='inductor', amp_dtype=None)
    devices.configure(torch.device('cpu'), a)
    assert a.channels_last is True and a.torchcompile == 'inductor' and a.amp_dtype == 'bfloat16'


def test_bfloat16_on_a_chip_without_it_is_an_error(npu):
    npu.bf16 = False
    with pytest.raises(devices.DeviceError, match='no bfloat16 support'):
        devices.autocast(NPU, True, torch.bfloat16)
    devices.autocast(NPU, False, torch.bfloat16)  # AMP off: the dtype does not matter


def test_npu_loss_scaler_is_torch_npus(npu):
    scaler = devices.loss_scaler(NPU, True, torch.float16)
    assert isinstance(scaler, devices.NpuScaler) and scaler._scaler is StandInGradScaler.instances[-1]
    scaler.load_state_dict({'scale': 1024.0, '_growth_tracker': 0})  # from a CUDA run: no 'dynamic'
    assert scaler._scaler.loaded['dynamic'] is True and scaler._scaler.loaded['scale'] == 1024.0
    assert devices.loss_scaler(NPU, True, torch.bfloat16) is None
    assert devices.loss_scaler(torch.device('cpu'), True, torch.float16) is None
    cuda = devices.loss_scaler(torch.device('cuda'), True, torch.float16)
    assert type(cuda) is timm.utils.NativeScaler


# ---------------------------------------------------------------------------------------------
# Fused attention: which kernel, and the argument mapping against the documented formula
# ---------------------------------------------------------------------------------------------

def test_fused_attention_only_on_chips_documented_for_it(npu, caplog):
    assert devices.fused_attention_op(torch.device('cpu')) is None
    assert devices.fused_attention_op(NPU) is sys.modules['torch_npu'].npu_fusion_attention
    devices._npu_fused_attention_op.cache_clear()
    npu.inf_nan = False  # Ascend 910: npu_fusion_attention is documented for Atlas A2 only
    with caplog.at_level(logging.WARNING):
        assert devices.fused_attention_op(NPU) is None
    assert 'Atlas A2' in caplog.text


def _inputs(B, N, L, S, D, dtype):
    q, k, v = (torch.randn(B, N, n, D, dtype=dtype, requires_grad=True) for n in (L, S, S))
    bias = torch.randn(1, N, L, S)
    bias[..., -3:] = -100.0  # Focal's masked keys
    return q, k, v, bias.to(dtype)


@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fused_mapping_computes_the_reference_attention(monkeypatch, dtype, tol):
    calls = []
    monkeypatch.setattr(devices, 'fused_attention_op', lambda device: documented_fusion_attention(calls))
    _attention.KERNELS_USED.clear()
    q, k, v, bias = _inputs(2, 12, 49, 93, 16, dtype)
    scale = 16 ** -0.5
    out = _attention.attention_with_bias(q, k, v, bias, 0., scale)
    out.float().square().sum().backward()
    fused_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    expected.float().square().sum().backward()
    assert (out.float() - expected.float()).abs().max() <= tol * expected.float().abs().max()
    for got, want in zip(fused_grads, (q.grad, k.grad, v.grad)):
        assert (got.float() - want.float()).abs().max() <= 5 * tol * want.float().abs().max()
    call = calls[-1]
    assert call['input_layout'] == 'BNSD' and call['head_num'] == 12 and call['scale'] == scale
    assert call['keep_prob'] == 1.0 and call['atten_mask'] is None and call['sparse_mode'] == 0
    assert call['pse'].shape == (1, 12, 49, 93) and call['pse'].dtype == dtype
    assert _attention.KERNELS_USED == {'npu_fusion_attention': 1}

    _attention.attention_with_bias(q, k, v, bias, 0.25, scale)
    assert calls[-1]['keep_prob'] == 0.75  # dropout probability -> keep probability


def test_beyond_documented_limits_falls_back_once(monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(devices, 'fused_attention_op', lambda device: documented_fusion_attention(calls))
    devices._said.clear()
    _attention.KERNELS_USED.clear()
    q, k, v, bias = _inputs(1, 300, 4, 6, 8, torch.float32)  # 300 heads x windows > 256
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            out = _attention.attention_with_bias(q, k, v, bias, 0., 0.5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.5))
    assert not calls and _attention.KERNELS_USED == {'scaled_dot_product_attention': 3}
    assert caplog.text.count('heads x windows 300 is outside 1..256') == 1


@pytest.mark.parametrize('name', ['focal_tiny_patch4_window7_224', 'focalv2_tiny_useconv_patch4_window7_224'])
def test_focal_models_give_the_same_logits_through_the_fused_mapping(monkeypatch, name):
    model = timm.create_model(name, num_classes=10, **SMALL['focal']).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        calls = []
        monkeypatch.setattr(devices, 'fused_attention_op', lambda device: documented_fusion_attention(calls))
        got = model(x)
    assert len(calls) == 4  # one attention layer per stage of the small config
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Loss meter (no host sync per step)
# ---------------------------------------------------------------------------------------------

def test_loss_meter_keeps_the_first_non_finite_step(monkeypatch):
    meter = LossMeter()
    with monkeypatch.context() as no_host_reads:
        no_host_reads.setattr(torch.Tensor, 'item', lambda self: pytest.fail('update() read a value on the host'))
        no_host_reads.setattr(torch.Tensor, '__bool__', lambda self: pytest.fail('update() branched on a value'))
        for step, value in enumerate([1.0, 3.0, float('nan'), float('inf'), 2.0]):
            meter.update(torch.tensor(value), 2, step)
    assert meter.first_nonfinite()[0] == 2 and meter.val == 2.0 and meter.count == 10
    good = LossMeter()
    for step, value in enumerate([1.0, 3.0]):
        good.update(torch.tensor(value), 4, step)
    assert good.first_nonfinite() is None and good.avg == 2.0


# ---------------------------------------------------------------------------------------------
# An installed torch_npu whose CANN is not sourced (torch >= 2.5 auto-loads it in `import torch`)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def unsourced_torch_npu(tmp_path):
    """A site folder with a `torch_npu` that fails as it does without CANN, registered as torch_npu's wheel
    registers it (entry_points.txt: [torch.backends] torch_npu = torch_npu:_autoload)."""
    info = tmp_path / 'torch_npu-2.14.0.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: torch_npu\nVersion: 2.14.0\n')
    (info / 'entry_points.txt').write_text('[torch.backends]\ntorch_npu = torch_npu:_autoload\n')
    (tmp_path / 'torch_npu.py').write_text(
        "raise ImportError('libhccl.so: cannot open shared object file: No such file or directory')\n")
    return tmp_path


def _python(code: str, site: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in __import__('os').environ.items() if k not in ('ASCEND_HOME_PATH',
                                                                                 'TORCH_DEVICE_BACKEND_AUTOLOAD')}
    environ.update(PYTHONPATH=f'{REPO}:{site}', OMP_NUM_THREADS='1', **env)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=environ, timeout=300)


def test_unsourced_torch_npu_leaves_the_cpu_usable(unsourced_torch_npu):
    plain = _python('import torch', unsourced_torch_npu)
    assert plain.returncode != 0 and 'backend extension' in plain.stderr  # the problem, with torch alone

    ours = _python("import van_focal.core.device as d\nprint(d.resolve_device_name(None))\n"
                   "try:\n    d.resolve_device_name('npu')\nexcept d.DeviceError as e:\n    print('error:', e)\n",
                   unsourced_torch_npu)
    assert ours.returncode == 0, ours.stderr
    lines = ours.stdout.splitlines()
    assert lines[0] == 'cpu' and 'ASCEND_HOME_PATH is unset' in lines[1] and 'set_env.sh' in lines[1]

    broken = _python('import van_focal', unsourced_torch_npu, ASCEND_HOME_PATH=str(unsourced_torch_npu))
    assert broken.returncode != 0
    assert 'DeviceError' in broken.stderr and 'TORCH_DEVICE_BACKEND_AUTOLOAD=0' in broken.stderr
