"""Beyond one process group on one machine: processes started by srun, and two nodes restarting after a stop.

Both runs are 2 CPU processes on this machine: srun's variables set by hand (no torchrun), and two
distributed_train.sh invocations with NNODES=2 on 127.0.0.1. The srun run, never interrupted, is also the
reference whose weights the two-node run must end with after one of its nodes was stopped and both restarted.
The sbatch template's requeue logic runs with srun and scontrol stand-ins.
"""
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import torch

from scripts import REPO, load, make_tiny_dataset, script_env
from test_interruption import _free_port, _ranks, _same_tensors, _wait_for
from test_preemption import STEADY_RUN
from van_focal.train.slurm import first_host, prepare_srun_environment, started_by_srun, tasks_on_this_node

SRUN = dict(SLURM_NTASKS='2', SLURM_NNODES='1', SLURM_JOB_NODELIST='localhost', SLURM_JOB_ID='4242')


@pytest.mark.parametrize('nodelist, host', [
    ('node07', 'node07'), ('gpu[03-06,09]', 'gpu03'), ('gpu[3,5-7],cpu1', 'gpu3'), ('n1,n2', 'n1'),
    ('a[1-2]-b[01-04]', 'a1-b01'), ('10.0.0.5', '10.0.0.5')])
def test_first_host_of_a_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_tasks_on_this_node():
    assert tasks_on_this_node(dict(SLURM_NTASKS='8', SLURM_NNODES='2')) == 4
    assert tasks_on_this_node(dict(SLURM_NTASKS='3', SLURM_STEP_TASKS_PER_NODE='2,1', SLURM_NODEID='1')) == 1
    assert tasks_on_this_node(dict(SLURM_NTASKS='7', SLURM_STEP_TASKS_PER_NODE='2(x3),1', SLURM_NODEID='2')) == 2
    assert tasks_on_this_node(dict(SLURM_NTASKS='2', SLURM_NTASKS_PER_NODE='1')) == 1


@pytest.fixture
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_srun_environment(_threads):
    env = dict(SRUN, SLURM_PROCID='1', SLURM_LOCALID='1')
    note = prepare_srun_environment(env)
    assert (env['MASTER_ADDR'], env['MASTER_PORT'], env['OMP_NUM_THREADS']) == ('localhost', '24242', '1')
    assert torch.get_num_threads() == 1
    assert note == ('srun: task 1 of 2, 2 on this node, 1 threads each; set MASTER_ADDR=localhost (from the node '
                    'list), MASTER_PORT=24242, OMP_NUM_THREADS=1 (2 tasks on this node; export OMP_NUM_THREADS to '
                    'choose)')
    # --cpus-per-task, an explicit OMP_NUM_THREADS and MASTER_ADDR / MASTER_PORT win; one task per node keeps all cores
    env = dict(SRUN, SLURM_PROCID='0', SLURM_CPUS_PER_TASK='2')
    prepare_srun_environment(env)
    assert env['OMP_NUM_THREADS'] == '2'
    env = dict(SRUN, SLURM_PROCID='0', OMP_NUM_THREADS='3', MASTER_ADDR='head', MASTER_PORT='1234')
    prepare_srun_environment(env)
    assert (env['MASTER_ADDR'], env['MASTER_PORT'], env['OMP_NUM_THREADS']) == ('head', '1234', '3')
    env = dict(SRUN, SLURM_PROCID='0', SLURM_NNODES='2')
    prepare_srun_environment(env)
    assert 'OMP_NUM_THREADS' not in env
    # not srun's processes: one task, or torchrun's variables present (distributed_train.sh inside a job)
    assert not started_by_srun(dict(SRUN, SLURM_PROCID='0', SLURM_NTASKS='1'))
    assert not started_by_srun(dict(SRUN, SLURM_PROCID='0', RANK='0', WORLD_SIZE='2'))
    assert prepare_srun_environment(dict(SLURM_PROCID='0', SLURM_NTASKS='1')) is None


def _free_port_from(low: int, high: int) -> int:
    for port in range(low, high):
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', port))
            except OSError:
                continue
            return port
    pytest.skip(f'no free port in {low}-{high}')


@pytest.fixture(scope='module')
def srun_run(tmp_path_factory):
    """Two train.py processes started the way srun starts them: SLURM's variables, no torchrun, no MASTER_ADDR,
    MASTER_PORT or OMP_NUM_THREADS. One epoch, never interrupted."""
    root = tmp_path_factory.mktemp('clusters')
    data = make_tiny_dataset(root / 'data')
    port = _free_port_from(20000 + os.getpid() % 5000, 30000)
    env = {k: v for k, v in script_env().items() if k not in ('OMP_NUM_THREADS', 'MASTER_ADDR', 'MASTER_PORT')}
    env.update(SRUN, SLURM_JOB_ID=str(port - 20000))
    command = [sys.executable, str(REPO / 'train.py'), str(data), *map(str, STEADY_RUN), '--output', str(root),
               '--experiment', 'srun', '--resume', 'auto']
    tasks = [subprocess.Popen(command, cwd=REPO, env=dict(env, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [task.communicate(timeout=600)[0] for task in tasks]
    for task, log in zip(tasks, logs):
        assert task.returncode == 0, log[-3000:]
    return dict(root=root, data=data, port=port, logs=logs)


@pytest.mark.scripts
def test_srun_started_processes_form_one_group(srun_run):
    log = srun_run['logs'][1]
    assert 'Process 1 of 2 on cpu' in log
    assert (f"srun: task 1 of 2, 2 on this node, 1 threads each; set MASTER_ADDR=localhost (from the node list), "
            f"MASTER_PORT={srun_run['port']}, OMP_NUM_THREADS=1") in log


@pytest.mark.scripts
def test_two_nodes_one_stopped_both_restart_to_the_same_weights(srun_run, tmp_path):
    """NNODES=2 on 127.0.0.1, one process each; SIGTERM to node 1's process mid-epoch: both processes stop at the
    same update, both torchruns restart them (MAX_RESTARTS), --resume auto continues inside the epoch."""
    run_args = [str(srun_run['data']), *map(str, STEADY_RUN), '--output', str(tmp_path), '--resume', 'auto',
                '--experiment', 'two-nodes']
    env = dict(script_env(), NNODES='2', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(_free_port()), MAX_RESTARTS='1')
    logs = [tmp_path / f'node{rank}.log' for rank in (0, 1)]
    nodes = []
    try:
        for rank, log in enumerate(logs):
            with open(log, 'w') as log_file:
                nodes.append(subprocess.Popen(['bash', str(REPO / 'distributed_train.sh'), '1', *run_args], cwd=REPO,
                                              env=dict(env, NODE_RANK=str(rank)), stdout=log_file,
                                              stderr=subprocess.STDOUT))
        _wait_for(lambda: 'Train: 0 [   1/6]' in logs[0].read_text(), 'the second update', nodes[0])
        os.kill(_ranks(nodes[1].pid)[1], signal.SIGTERM)
        for node, log in zip(nodes, logs):
            assert node.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    text = logs[0].read_text() + logs[1].read_text()
    stop = re.search(r'SIGTERM: stopped after batch (\d+) of epoch 0', text)
    assert stop and f'Continuing epoch 0 after batch {stop.group(1)} of 6.' in text
    assert logs[1].read_text().count('Process 1 of 2 on cpu') == 2  # the first start and the restart
    reference = load(srun_run['root'] / 'srun' / 'last.pth.tar')
    restarted = load(tmp_path / 'two-nodes' / 'last.pth.tar')
    assert reference['epoch'] == restarted['epoch'] == 0
    assert _same_tensors(reference['state_dict'], restarted['state_dict'])
    assert _same_tensors(reference['state_dict_ema'], restarted['state_dict_ema'])


@pytest.mark.parametrize('status, requeued', [(138, True), (143, True), (0, False), (1, False)])
def test_batch_script_requeues_a_stopped_run(tmp_path, status, requeued):
    """tools/slurm/train.sbatch with srun and scontrol stand-ins: a run stopped by SIGUSR1 / SIGTERM (138 / 143)
    is requeued, a finished or failed one is not; srun starts train.py with --resume auto."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for tool, exit_status in (('srun', status), ('scontrol', 0)):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/calls\nexit {exit_status}\n')
        (bin_dir / tool).chmod(0o755)
    env = dict(script_env(), PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID='77', SLURM_SUBMIT_DIR=str(REPO),
               SLURM_JOB_NODELIST='node[1-2]')
    result = subprocess.run(['bash', str(REPO / 'tools' / 'slurm' / 'train.sbatch'), '/data', '--experiment', 'x'],
                            env=env, capture_output=True, text=True)
    assert result.returncode == status
    calls = (tmp_path / 'calls').read_text().splitlines()
    assert calls[0] == f'srun --kill-on-bad-exit=1 {sys.executable} {REPO}/train.py /data --experiment x --resume auto'
    assert calls[1:] == (['scontrol requeue 77'] if requeued else [])
