"""Running train.py / validate.py / distributed_train.sh from the tests, on small drawn datasets."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from van_focal.core.checkpoint import allow_training_configs
from van_focal.cli.args import run_main
from van_focal.cli.shapes import make_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
# 3 classes of 32x32 images: 24 training images = 3 steps of batch 8 per epoch.
TINY_DATA = dict(train_per_class=8, val_per_class=4, size=32, classes=('circle', 'square', 'triangle'))
TINY_RUN = ['--model', 'van_b0', '--img-size', '32', '-b', '8', '--workers', '0', '--lr', '1e-3', '--warmup-epochs', '1',
            '--log-interval', '1', '--device', 'cpu']


def make_tiny_dataset(root: Path) -> Path:
    return Path(make_shapes_dataset(str(root), **TINY_DATA))


def script_env() -> dict:
    # VAN_FOCAL_ROUTES=default: each process would otherwise time its own routes (van_focal.models._routes) and could
    # pick others than the run it resumes, which changes float rounding: these tests compare runs bit for bit.
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', PYTHON=sys.executable, VAN_FOCAL_ROUTES='default')
    env.pop('WORLD_SIZE', None)
    return env


def run(script: str, *args, check: bool = True, env_extra: dict = None) -> subprocess.CompletedProcess:
    """Run a top-level script of the repository with this interpreter; output captured as text."""
    command = ['bash', str(REPO / script)] if script.endswith('.sh') else [sys.executable, str(REPO / script)]
    result = subprocess.run(command + [str(a) for a in args], cwd=REPO, env={**script_env(), **(env_extra or {})},
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f'{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


def load(path: Path) -> dict:
    allow_training_configs()  # again: timm's own loading removes argparse.Namespace when it is done
    return torch.load(path, map_location='cpu', weights_only=True)


def error_of(main, argv, capsys) -> str:
    """The one `error:` line (exit status 2, no traceback) of a script's main run in-process."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main([str(a) for a in argv]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    message = err[err.index('error: '):].strip()
    assert len(message.splitlines()) == 1, message
    return message


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
    """`fails` for train.py with the tiny run's flags."""
    sys.path.insert(0, str(REPO))
    import train
    return fails(train.main, [*TINY_RUN, '--epochs', epochs, *argv], capsys, monkeypatch)  # argv wins
