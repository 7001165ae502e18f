"""`python -m van_focal.doctor` end to end on the CPU, and that it catches what it is there to catch."""
import pytest
import timm
import torch

from van_focal.core import device as devices
from van_focal.cli import doctor
from van_focal.cli.args import run_main


@pytest.mark.scripts
def test_doctor_passes_on_the_cpu(capsys):
    assert doctor.main(['--device', 'cpu']) == 0
    out = capsys.readouterr().out
    assert out.startswith('van_focal ') and 'all 13 checks passed' in out
    for name in doctor.DEFAULT_MODELS:
        for dtype in ('float32', 'bfloat16'):
            assert f'{name} {dtype} fwd+bwd vs CPU fp32' in out
    assert 'loss scaler: overflow step skipped' in out and 'scale 65536 -> 32768' in out
    assert 'attention kernel' in out and 'scaled_dot_product_attention x' in out
    assert 'routes picked' in out and 'dilated_dw_conv: ' in out
    for key in ('torch', 'torchvision', 'timm', 'torch-npu', 'memory', 'bf16', 'hf32', 'tf32'):
        assert f'\n{key}' in out
    block = out.split('Paste into a bug report:\n', 1)[1]
    assert block.startswith('```\n') and block.rstrip().endswith('```') and 'torch: ' in block


class AppliesOverflowedSteps(timm.utils.NativeScaler):
    """A broken scaler: steps whatever the gradients hold."""

    def __call__(self, loss, optimizer, **kwargs):
        self._scaler.scale(loss).backward()
        optimizer.step()


def test_doctor_fails_a_scaler_that_applies_an_overflowed_step(monkeypatch):
    monkeypatch.setattr(devices, 'loss_scaler', lambda device, enabled, dtype: AppliesOverflowedSteps('cpu'))
    checks = doctor.check_loss_scaler(torch.device('cpu'))
    assert [c.status for c in checks] == ['PASS', 'FAIL'] and checks[1].detail.startswith('weights changed')
    text = doctor.report(torch.device('cpu'), {'torch': torch.__version__}, checks)
    assert '1 of 2 checks FAILED' in text
    assert 'FAIL loss scaler: overflow step skipped: weights changed' in text.split('Paste into a bug report:')[1]


def test_doctor_fails_a_wrong_device_result(monkeypatch):
    real = doctor.forward_backward

    def one_percent_off_on_the_device(model, x, target, autocast=None):
        logits, grads = real(model, x, target, autocast)
        return (logits * 1.01, grads) if autocast is not None else (logits, grads)
    monkeypatch.setattr(doctor, 'forward_backward', one_percent_off_on_the_device)
    fp32 = doctor.check_model('van_b0', torch.device('cpu'))[0]
    assert fp32.name == 'van_b0 float32 fwd+bwd vs CPU fp32' and fp32.status == 'FAIL'
    assert fp32.detail.startswith('logits 1.0e-02')


def test_all_reduce_across_two_processes():
    check = doctor.check_all_reduce(torch.device('cpu'))
    assert (check.status, check.detail) == ('PASS', 'gloo')


@pytest.mark.scripts
def test_command_line_mistake_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit:
        run_main(lambda: doctor.main(['--device', 'cpu', '--models', 'resnet50']))
    assert exit.value.code == 2
    assert capsys.readouterr().err == 'error: --models resnet50: not a VAN or Focal Transformer model name.\n'


def test_attention_kernel_report(monkeypatch):
    cpu = torch.device('cpu')
    assert doctor.check_attention_kernel(cpu, {'scaled_dot_product_attention': 4}).detail == \
        "PyTorch's own choice: scaled_dot_product_attention x4"
    monkeypatch.setattr(devices, 'fused_attention_op', lambda device: print)  # as on an A2 NPU
    assert doctor.check_attention_kernel(cpu, {'npu_fusion_attention': 4}).detail == 'fused: npu_fusion_attention x4'
    missed = doctor.check_attention_kernel(cpu, {'scaled_dot_product_attention': 4})
    assert missed.status == 'FAIL' and 'available but did not run' in missed.detail
