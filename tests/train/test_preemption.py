"""SIGTERM / SIGUSR1 stop train.py after the current update with its position saved; --resume continues there."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from timm.task import ClassificationTask, resume_task_checkpoint
from timm.utils import NativeScaler

from scripts import REPO, TINY_RUN, load, make_tiny_dataset, script_env
from van_focal.train.preemption import StopSignals
from van_focal.train.steps import AtomicCheckpointSaver, resume_position

# No random augmentation: the rest of an epoch after a resume then sees the very same tensors, so
# weights, EMA and LR can be compared bit for bit with a run that was never stopped.
STEADY_RUN = [*TINY_RUN, '-b', '2', '--epochs', '1', '--val-split', '', '--scale', '1', '1', '--ratio', '1', '1', '--hflip', '0',
              '--color-jitter', '0', '--train-interpolation', 'bicubic', '--sched-on-updates', '--model-ema',
              '--model-ema-decay', '0.9', '--seed', '3']

# train.py, recording the training samples it reads (index per line) in the file named by the first argument.
RECORDING_TRAIN = '''
import runpy, sys
import van_focal.train.data as data
log = open(sys.argv.pop(1), 'a', buffering=1)
getitem = data.CheckedImageDataset.__getitem__
def recorded(self, index):
    if self.reader.root.endswith('train'):
        log.write(f'{index}\\n')
    return getitem(self, index)
data.CheckedImageDataset.__getitem__ = recorded
sys.argv[0] = 'train.py'
runpy.run_path('train.py', run_name='__main__')
'''


def start_recorded(record: Path, *args) -> subprocess.Popen:
    command = [sys.executable, '-c', RECORDING_TRAIN, str(record), *[str(a) for a in args]]
    return subprocess.Popen(command, cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def recorded(record: Path) -> list:
    return [int(line) for line in record.read_text().split()] if record.exists() else []


def learning_rates(log: str) -> dict:
    """(epoch, update) -> the LR train.py logged after it."""
    return {(int(e), int(u)): lr for e, u, lr in re.findall(r'Train: (\d+) \[\s*(\d+)/\d+\].*?LR: (\S+)', log)}


def test_sigterm_mid_epoch_then_resume_continues_exactly(tmp_path):
    data = make_tiny_dataset(tmp_path / 'data')
    straight = start_recorded(tmp_path / 'straight.txt', data, *STEADY_RUN, '--output', tmp_path, '--experiment', 's')
    straight_err = straight.communicate(timeout=600)[1]
    assert straight.returncode == 0, straight_err[-3000:]
    order = recorded(tmp_path / 'straight.txt')
    assert len(order) == 24 and sorted(order) == list(range(24))

    stopped = start_recorded(tmp_path / 'stopped.txt', data, *STEADY_RUN, '--output', tmp_path, '--experiment', 'p')
    deadline = time.time() + 300
    while len(recorded(tmp_path / 'stopped.txt')) < 10 and time.time() < deadline:  # the loader is a batch ahead
        time.sleep(0.01)
    stopped.send_signal(signal.SIGTERM)
    stopped_err = stopped.communicate(timeout=300)[1]
    assert stopped.returncode == 128 + signal.SIGTERM, stopped_err[-3000:]
    last = tmp_path / 'p' / 'last.pth.tar'
    position = resume_position(str(last))
    done = position['batches_done']
    assert position['epoch'] == 0 and 4 <= done < 12, position
    assert f'SIGTERM: stopped after batch {done} of epoch 0. {last} holds the run' in stopped_err
    assert recorded(tmp_path / 'stopped.txt')[:2 * done] == order[:2 * done]
    assert load(last)['epoch'] == -1  # timm's own resume would repeat epoch 0, never skip it

    resumed = start_recorded(tmp_path / 'resumed.txt', data, *STEADY_RUN, '--resume', last)
    resumed_err = resumed.communicate(timeout=600)[1]
    assert resumed.returncode == 0, resumed_err[-3000:]
    assert f'Continuing epoch 0 after batch {done} of 12.' in resumed_err
    assert recorded(tmp_path / 'resumed.txt') == order[2 * done:]  # no sample twice, none left out

    lrs = learning_rates(straight_err)
    assert {k: v for k, v in learning_rates(stopped_err + resumed_err).items()} == lrs and len(lrs) == 12
    a, b = load(tmp_path / 's' / 'last.pth.tar'), load(last)
    assert a['epoch'] == b['epoch'] == 0
    for key in ('state_dict', 'state_dict_ema'):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def test_sigusr1_is_a_stop_request_with_its_own_status():
    stop = StopSignals(distributed=False)  # conftest gives the handlers back afterwards
    assert not stop.agreed()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert stop.agreed() and stop.exit_status == 138
    with pytest.raises(SystemExit) as exit_info:
        stop.finish('here', '')
    assert exit_info.value.code == 138


def test_position_checkpoint_restores_the_loss_scaler(tmp_path):
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = NativeScaler(device='cpu')
    scaler._scaler = torch.amp.GradScaler('cpu', init_scale=512.0)
    task = ClassificationTask(model, criterion=nn.CrossEntropyLoss(), device=torch.device('cpu'), verbose=False)
    saver = AtomicCheckpointSaver(model, optimizer, amp_scaler=scaler, checkpoint_dir=str(tmp_path),
                                  recovery_dir=str(tmp_path), task=task)
    position = dict(epoch=3, batches_done=7, batch_size=2, world_size=1, loss_sum=1.5, loss_count=14)
    saver.save_position(position)
    assert resume_position(str(tmp_path / 'last.pth.tar')) == position
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pth.tar']  # no numbered or best copy

    fresh = NativeScaler(device='cpu')
    task2 = ClassificationTask(nn.Linear(4, 2), criterion=nn.CrossEntropyLoss(), device=torch.device('cpu'),
                               verbose=False)
    resume_task_checkpoint(task2, str(tmp_path / 'last.pth.tar'), loss_scaler=fresh, log_info=False)
    assert fresh.state_dict()['scale'] == 512.0


def test_signal_during_the_all_reduce_is_kept_for_the_next_update(monkeypatch):
    stop = StopSignals(distributed=True)

    def signalled_meanwhile(flag, op):  # the other processes had nothing; our signal lands while we wait
        os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(torch.distributed, 'all_reduce', signalled_meanwhile)
    assert not stop.agreed()
    monkeypatch.setattr(torch.distributed, 'all_reduce', lambda flag, op: None)
    assert stop.agreed() and stop.exit_status == 143
