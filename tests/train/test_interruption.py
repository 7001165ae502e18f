"""A run killed at any moment resumes to the same weights, and a kill or a full disk while saving loses nothing."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from scripts import REPO, TINY_RUN, load, make_tiny_dataset, run, script_env
from test_preemption import STEADY_RUN
from van_focal.core.errors import CheckpointWriteError
from van_focal.train.steps import AtomicCheckpointSaver

# Every source of randomness on: sampler order, RandAugment, random erasing, mixup/cutmix, drop path, EMA.
RANDOM_RUN = [*TINY_RUN, '--epochs', '4', '--aa', 'rand-m9-mstd0.5-inc1', '--reprob', '0.25', '--mixup', '0.8',
              '--cutmix', '1.0', '--drop-path', '0.1', '--model-ema', '--model-ema-decay', '0.9', '--seed', '7']


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.scripts
def test_killed_and_resumed_run_ends_bit_identical(tmp_path):
    data = make_tiny_dataset(tmp_path / 'data')
    run('train.py', data, *RANDOM_RUN, '--output', tmp_path, '--experiment', 'straight')

    command = [sys.executable, str(REPO / 'train.py'), str(data), *RANDOM_RUN, '--output', str(tmp_path),
               '--experiment', 'killed']
    process = subprocess.Popen(command, cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_checkpoint = tmp_path / 'killed' / 'checkpoint-0.pth.tar'
    deadline = time.time() + 300
    while not first_checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert load(tmp_path / 'killed' / 'last.pth.tar')['epoch'] < 3, 'the run finished before it could be killed'

    run('train.py', data, *RANDOM_RUN, '--resume', tmp_path / 'killed' / 'last.pth.tar')
    straight, resumed = load(tmp_path / 'straight' / 'last.pth.tar'), load(tmp_path / 'killed' / 'last.pth.tar')
    assert resumed['epoch'] == straight['epoch'] == 3
    assert _same_tensors(straight['state_dict'], resumed['state_dict'])
    assert _same_tensors(straight['state_dict_ema'], resumed['state_dict_ema'])


def _saver(folder, model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return AtomicCheckpointSaver(model, optimizer, checkpoint_dir=str(folder), recovery_dir=str(folder), max_history=2)


def test_kill_while_saving_leaves_the_previous_checkpoints(tmp_path, monkeypatch):
    model = nn.Linear(4, 2)
    saver = _saver(tmp_path, model)
    saver.save_checkpoint(0, metric=1.0)
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real_save = torch.save

    def killed_halfway(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        with open(path, 'r+b') as f:  # the process dies with half the bytes written
            f.truncate(f.seek(0, 2) // 2)
        raise KeyboardInterrupt

    with torch.no_grad():
        model.weight.add_(1.0)
    monkeypatch.setattr(torch, 'save', killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        saver.save_checkpoint(1, metric=2.0)
    monkeypatch.setattr(torch, 'save', real_save)

    for name in ('last.pth.tar', 'model_best.pth.tar', 'checkpoint-0.pth.tar'):
        assert (tmp_path / name).read_bytes() == saved[name]
        assert load(tmp_path / name)['epoch'] == 0


def test_last_is_never_absent_while_replaced(tmp_path, monkeypatch):
    """A kill between timm's unlink of last.pth.tar and its rename would leave no last.pth.tar at all."""
    saver = _saver(tmp_path, nn.Linear(4, 2))
    saver.save_checkpoint(0, metric=1.0)
    unlinked = []
    real_unlink = os.unlink
    monkeypatch.setattr(os, 'unlink', lambda path, *a, **k: unlinked.append(str(path)) or real_unlink(path, *a, **k))
    saver.save_checkpoint(1, metric=2.0)
    saver.save_position(dict(epoch=2, batches_done=1, batch_size=1, world_size=1, loss_sum=1.0, loss_count=1))
    assert not [p for p in unlinked if p.endswith('last.pth.tar')]
    assert load(tmp_path / 'last.pth.tar')['saver']['position']['batches_done'] == 1


def test_checkpoint_history_matches_the_disk(tmp_path):
    saver = _saver(tmp_path, nn.Linear(4, 2))
    for epoch, metric in enumerate([1.0, 3.0, 2.0, 0.5]):
        saver.save_checkpoint(epoch, metric=metric)
    kept = sorted(p.name for p in tmp_path.glob('checkpoint-*'))
    assert kept == ['checkpoint-1.pth.tar', 'checkpoint-2.pth.tar']
    assert sorted(f.split('/')[-1] for f, _ in saver.checkpoint_files) == kept
    assert load(tmp_path / 'model_best.pth.tar')['epoch'] == 1
    assert not list(tmp_path.glob('*.partial')) and not (tmp_path / 'tmp.pth.tar').exists()


@pytest.mark.parametrize('failing', ['torch.save', 'copy'])
def test_full_disk_keeps_the_earlier_checkpoints(tmp_path, monkeypatch, failing):
    model = nn.Linear(4, 2)
    saver = _saver(tmp_path, model)
    saver.save_checkpoint(0, metric=1.0)
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, 'No space left on device')

    if failing == 'torch.save':
        real_save = torch.save

        def half_written(obj, path, *args, **kwargs):
            real_save(obj, path, *args, **kwargs)
            with open(path, 'r+b') as f:
                f.truncate(f.seek(0, 2) // 2)
            disk_full()
        monkeypatch.setattr(torch, 'save', half_written)
    else:  # `last` written, its numbered copy fails (a file system without hard links)
        monkeypatch.setattr(os, 'link', disk_full)
        monkeypatch.setattr(shutil, 'copyfile', lambda src, dst: (open(dst, 'wb').write(b'half'), disk_full()))
    with pytest.raises(CheckpointWriteError) as error:
        saver.save_checkpoint(1, metric=2.0)
    message = str(error.value)
    assert f'cannot write a checkpoint in {tmp_path} (No space left on device)' in message
    assert re.search(r'; [\d.]+ [KMG]?B free there', message) and len(message.splitlines()) == 1
    assert not list(tmp_path.glob('*.partial')) and not (tmp_path / 'tmp.pth.tar').exists()
    for name in ('model_best.pth.tar', 'checkpoint-0.pth.tar') + (('last.pth.tar',) if failing == 'torch.save' else ()):
        assert (tmp_path / name).read_bytes() == saved[name]
    assert load(tmp_path / 'last.pth.tar')['epoch'] == (0 if failing == 'torch.save' else 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ranks(launcher_pid: int) -> dict:
    """RANK -> pid of the train.py processes torchrun (`launcher_pid`) runs now."""
    ranks = {}
    for children in Path(f'/proc/{launcher_pid}/task').glob('*/children'):
        for pid in children.read_text().split():
            try:
                env = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
            except OSError:
                continue
            rank = next((e[5:].decode() for e in env if e.startswith(b'RANK=')), None)
            if rank is not None:
                ranks[int(rank)] = int(pid)
    return ranks


def _wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 300):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f'the run ended before {what}'
        assert time.time() < deadline, f'timed out waiting for {what}'
        time.sleep(0.02)


@pytest.mark.scripts
def test_stopped_and_killed_ranks_restart_to_the_same_weights(tmp_path):
    """2 CPU processes: SIGTERM to rank 1 mid-epoch (both stop at the same update), then SIGKILL to a rank
    after the first epoch's checkpoint; torchrun restarts the group each time, --resume auto continues,
    and the final weights equal an uninterrupted 2-process run."""
    data = make_tiny_dataset(tmp_path / 'data')
    run_args = [data, *STEADY_RUN, '--epochs', '3', '--output', tmp_path, '--resume', 'auto']
    run('distributed_train.sh', 2, *run_args, '--experiment', 'straight', env_extra={'MASTER_PORT': str(_free_port())})

    log = tmp_path / 'restarted.log'
    with open(log, 'w') as log_file:
        launcher = subprocess.Popen(['bash', str(REPO / 'distributed_train.sh'), '2', *[str(a) for a in run_args],
                                     '--experiment', 'restarted'], cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                    env={**script_env(), 'MASTER_PORT': str(_free_port()), 'MAX_RESTARTS': '2'})
    try:
        _wait_for(lambda: 'Train: 0 [   1/6]' in log.read_text(), 'the second update', launcher)
        os.kill(_ranks(launcher.pid)[1], signal.SIGTERM)
        _wait_for(lambda: 'Continuing epoch 0 after batch' in log.read_text(), 'the restart after SIGTERM', launcher)
        _wait_for((tmp_path / 'restarted' / 'checkpoint-0.pth.tar').exists, 'the first checkpoint', launcher)
        os.kill(_ranks(launcher.pid)[0], signal.SIGKILL)
        assert launcher.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    text = log.read_text()
    stop = re.search(r'SIGTERM: stopped after batch (\d+) of epoch 0', text)
    assert stop and f'Continuing epoch 0 after batch {stop.group(1)} of 6.' in text
    assert text.count('Process 1 of 2 on cpu') == 3  # the first start and two restarts
    straight, restarted = load(tmp_path / 'straight' / 'last.pth.tar'), load(tmp_path / 'restarted' / 'last.pth.tar')
    assert straight['epoch'] == restarted['epoch'] == 2
    assert _same_tensors(straight['state_dict'], restarted['state_dict'])
    assert _same_tensors(straight['state_dict_ema'], restarted['state_dict_ema'])


@pytest.mark.scripts
def test_launcher_takes_the_venv_python_and_max_restarts(tmp_path):
    """A fresh clone after `make demo`: no PYTHON set, python3 without torch; the script uses .venv/bin/python."""
    clone = tmp_path / 'clone'
    (clone / '.venv' / 'bin').mkdir(parents=True)
    shutil.copy(REPO / 'distributed_train.sh', clone)
    fake_python = clone / '.venv' / 'bin' / 'python'
    fake_python.write_text('#!/bin/sh\necho "$0 $*"\n')
    fake_python.chmod(0o755)
    env = {k: v for k, v in script_env().items() if k != 'PYTHON'}
    for extra, restarts in (({}, '0'), ({'MAX_RESTARTS': '3'}, '3')):
        result = subprocess.run(['bash', str(clone / 'distributed_train.sh'), '2', 'DATA', '--epochs', '1'],
                                env={**env, **extra}, capture_output=True, text=True, check=True)
        assert result.stdout.startswith(f'{fake_python} -m torch.distributed.run ')
        assert f'--max-restarts={restarts} --nproc_per_node=2 {clone}/train.py DATA --epochs 1' in result.stdout
