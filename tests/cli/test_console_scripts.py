"""The tools run from a fresh shell without activating .venv: its console scripts and its python find
everything themselves (a bare PATH, no VIRTUAL_ENV, no PYTHONPATH)."""
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import REPO

BIN = Path(sys.executable).parent  # .venv/bin of the interpreter running the tests
COMMANDS = ('van-focal-predict', 'van-focal-export', 'van-focal-doctor', 'van-focal-shapes')


def bare_shell(*command, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(['env', '-i', 'PATH=/usr/bin:/bin', *map(str, command)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_make_installs_every_command():
    missing = [c for c in COMMANDS if not (BIN / c).exists()]
    assert not missing, f'{missing} not in {BIN}: `make` installs them (pip install -e . with setup.py entry_points)'


@pytest.mark.scripts
def test_console_script_runs_from_a_bare_shell(tmp_path):
    result = bare_shell(BIN / 'van-focal-predict', '--help', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('usage: ') and '--skip-bad-images' in result.stdout


@pytest.mark.scripts
def test_root_scripts_run_with_the_venv_python_from_a_bare_shell():
    result = bare_shell(BIN / 'python', 'validate.py', '--help', cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('usage: validate.py')
