"""One clear message per mistake from train.py / validate.py: exit status 2, the path/flag/key named,
no traceback. Most run in-process (fast); a few go through the command line to show the whole path."""
from fractions import Fraction
import shutil
import sys

import pytest
import torch

from scripts import REPO, TINY_RUN, load, run

sys.path.insert(0, str(REPO))
import train  # noqa: E402
import validate  # noqa: E402

from van_focal.cli import run_main  # noqa: E402


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory):
    """A run folder after one epoch."""
    out = tmp_path_factory.mktemp('runs')
    run('train.py', data, *TINY_RUN, '--epochs', '1', '--output', out, '--experiment', 'run')
    return out / 'run'


def fails(script_main, argv, capsys, monkeypatch) -> str:
    """Run a script's main in-process; return its one error message after checking exit status 2."""
    monkeypatch.setattr(sys, 'argv', ['script'] + [str(a) for a in argv])
    with pytest.raises(SystemExit) as exit_info:
        run_main(script_main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # log lines, then the message
    assert 'Traceback' not in err and '\nerror: ' in '\n' + err, err
    message = err[err.index('error: '):] if err.startswith('error: ') else err[err.index('\nerror: ') + 1:]
    assert len(message.strip().splitlines()) == 1, message
    return message


def train_fails(argv, capsys, monkeypatch, epochs=1):
    return fails(train.main, [*TINY_RUN, '--epochs', epochs, *argv], capsys, monkeypatch)  # argv wins


def test_missing_data_root(tmp_path, capsys, monkeypatch):
    assert f'data root {tmp_path}/nope: no such folder' in train_fails([tmp_path / 'nope'], capsys, monkeypatch)


def test_missing_split(data, capsys, monkeypatch):
    err = train_fails([data, '--val-split', 'test'], capsys, monkeypatch)
    assert 'has no test/ folder' in err and '--val-split' in err


def test_empty_class_folder(data, tmp_path, capsys, monkeypatch):
    root = tmp_path / 'data'
    shutil.copytree(data, root)
    (root / 'train' / 'zebra').mkdir()
    assert f'{root}/train/zebra: empty class folder' in train_fails([root], capsys, monkeypatch)


def _truncate_one_image(data, root):
    shutil.copytree(data, root)
    bad = root / 'train' / 'square' / '00003.jpg'
    bad.write_bytes(bad.read_bytes()[:300])
    return bad


def test_corrupt_image_stops_naming_the_file(data, tmp_path, capsys, monkeypatch):
    bad = _truncate_one_image(data, tmp_path / 'data')
    err = train_fails([tmp_path / 'data', '--workers', '1'], capsys, monkeypatch)  # raised in a loader worker
    assert f'{bad}: cannot decode this image' in err and '--skip-bad-images' in err


def test_skip_bad_images_goes_on_and_counts(data, tmp_path, caplog):
    _truncate_one_image(data, tmp_path / 'data')
    result = run('train.py', tmp_path / 'data', *TINY_RUN, '--epochs', '1', '--skip-bad-images', '--output', tmp_path)
    assert 'Epoch 0: skipped 1 unreadable images' in result.stderr


def test_unknown_model_suggests_close_names(data, capsys, monkeypatch):
    err = train_fails([data, '--model', 'van_b9'], capsys, monkeypatch)
    assert '--model van_b9: no such model' in err and 'van_b2' in err


@pytest.mark.parametrize('text, expected', [
    ('lr: 0.1\nwarmup_epoch: 3\n', "unknown key 'warmup_epoch'. Did you mean warmup_epochs"),
    ('epochs: many\n', "key 'epochs' must be int, got 'many'"),
    ('model_ema: 1\n', "key 'model_ema' must be true or false"),
    ('clip_mode: sideways\n', "key 'clip_mode' must be one of"),
])
def test_config_mistakes(data, tmp_path, text, expected, capsys, monkeypatch):
    config = tmp_path / 'bad.yaml'
    config.write_text(text)
    err = train_fails([data, '--config', config], capsys, monkeypatch)
    assert f'{config}: ' in err and expected in err


def test_truncated_checkpoint_for_resume_and_validate(data, trained, tmp_path, capsys, monkeypatch):
    broken = tmp_path / 'broken.pth.tar'
    broken.write_bytes((trained / 'last.pth.tar').read_bytes()[:5000])
    err = train_fails([data, '--resume', broken], capsys, monkeypatch, epochs=2)
    assert f'{broken} is truncated or not a PyTorch checkpoint' in err
    err = fails(validate.main, [data, '--model', 'van_b0', '--checkpoint', broken, '--device', 'cpu'], capsys, monkeypatch)
    assert f'{broken} is truncated or not a PyTorch checkpoint' in err


def test_checkpoint_of_another_model(data, trained, capsys, monkeypatch):
    err = fails(validate.main, [data, '--model', 'van_b1', '--checkpoint', trained / 'last.pth.tar', '--device', 'cpu'],
                capsys, monkeypatch)
    assert 'does not fit' in err and 'of other shape' in err


def test_pickled_objects_need_the_trust_flag(data, trained, tmp_path, capsys, monkeypatch):
    checkpoint = load(trained / 'last.pth.tar')
    checkpoint['extra'] = Fraction(1, 3)  # harmless, but not a type weights_only loading accepts
    risky = tmp_path / 'risky.pth.tar'
    torch.save(checkpoint, risky)
    argv = [data, '--model', 'van_b0', '--img-size', '32', '--checkpoint', risky, '--device', 'cpu', '--workers', '0']
    err = fails(validate.main, argv, capsys, monkeypatch)
    assert f'{risky} holds pickled Python objects (fractions.Fraction)' in err and '--trust-checkpoint' in err
    monkeypatch.setattr(sys, 'argv', ['validate.py'] + [str(a) for a in argv] + ['--trust-checkpoint'])
    validate.main()
    assert 'top-1' in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_cuda_unavailable(data, capsys, monkeypatch):
    err = train_fails([data, '--device', 'cuda'], capsys, monkeypatch)
    assert '--device cuda: no CUDA GPU is visible' in err


def test_npu_without_torch_npu(data, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch_npu', None)  # as if not installed
    err = train_fails([data, '--device', 'npu'], capsys, monkeypatch)
    assert '--device npu needs torch_npu' in err and 'CANN' in err


def test_non_finite_loss_stops_and_keeps_the_checkpoint(data, trained, capsys, monkeypatch):
    last = trained / 'last.pth.tar'
    before = last.read_bytes()
    err = train_fails([data, '--resume', last, '--no-resume-opt', '--opt', 'sgd', '--lr', '1e38', '--smoothing', '0'], capsys, monkeypatch,
                      epochs=3)
    assert 'at epoch 1, step' in err and 'training diverged' in err and 'untouched' in err
    assert last.read_bytes() == before


def test_command_line_shows_one_message(tmp_path):
    result = run('validate.py', tmp_path / 'nope', '--model', 'van_b0', '--device', 'cpu', check=False)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f'error: data root {tmp_path}/nope: no such folder')
