"""Processes started by `srun` (one per task, no torchrun): what torchrun would have set for them.

timm's `init_distributed_device` already forms the process group from SLURM's variables (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID) with torch's env:// rendezvous. `prepare_srun_environment()` adds the rest:

- MASTER_ADDR, when unset: the first host of the step's node list (`scontrol show hostnames` when it is
  installed, else the list parsed: `node07`, `gpu[03-06,09]`, `a[1-2]-b[01-04]`, `n1,n2`), where rank 0 runs.
- MASTER_PORT, when unset: 20000 + SLURM_JOB_ID % 10000, so that two jobs sharing a node do not collide.
- Threads: when several tasks share a node and OMP_NUM_THREADS is unset, each process takes
  SLURM_CPUS_PER_TASK threads (srun's `--cpus-per-task`), else one, as torchrun sets one thread per process
  when it starts several. OMP_NUM_THREADS, exported before srun, overrides it.
"""
import logging
import os
import re
import shutil
import subprocess
from typing import Dict, Optional

import torch

_logger = logging.getLogger(__name__)

# torchrun's variables: when RANK is set, torchrun (or a user) started the process, not srun alone.
TORCHRUN_VARIABLES = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')


def started_by_srun(env: Dict[str, str] = os.environ) -> bool:
    """Several SLURM tasks and no torchrun variables: the processes of an `srun` step."""
    return ('SLURM_PROCID' in env and int(env.get('SLURM_NTASKS') or 1) > 1
            and not any(v in env for v in TORCHRUN_VARIABLES))


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ('gpu[03-06,09],cpu1' -> 'gpu03'), without scontrol."""
    first = re.match(r'[^,\[]*(?:\[[^\]]*\][^,\[]*)*', nodelist.strip()).group(0)
    return re.sub(r'\[([^\]]*)\]', lambda m: re.split(r'[-,]', m.group(1))[0], first)


def master_host(nodelist: str) -> str:
    if shutil.which('scontrol'):
        try:
            hosts = subprocess.run(['scontrol', 'show', 'hostnames', nodelist], capture_output=True, text=True,
                                   timeout=30, check=True).stdout.split()
            if hosts:
                return hosts[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return first_host(nodelist)


def tasks_on_this_node(env: Dict[str, str] = os.environ) -> int:
    """How many tasks of the step run on this process's node (SLURM_STEP_TASKS_PER_NODE: '2(x3),1')."""
    spec = env.get('SLURM_STEP_TASKS_PER_NODE') or env.get('SLURM_TASKS_PER_NODE')
    if spec and re.fullmatch(r'\d+(\(x\d+\))?(,\d+(\(x\d+\))?)*', spec):
        counts = []
        for count, repeat in re.findall(r'(\d+)(?:\(x(\d+)\))?', spec):
            counts += [int(count)] * int(repeat or 1)
        node = int(env.get('SLURM_NODEID') or 0)
        if node < len(counts):
            return counts[node]
    if env.get('SLURM_NTASKS_PER_NODE'):
        return int(env['SLURM_NTASKS_PER_NODE'])
    nodes = int(env.get('SLURM_STEP_NUM_NODES') or env.get('SLURM_NNODES') or env.get('SLURM_JOB_NUM_NODES') or 1)
    return -(-int(env.get('SLURM_NTASKS') or 1) // nodes)


def prepare_srun_environment(env=os.environ) -> Optional[str]:
    """Set MASTER_ADDR / MASTER_PORT / the thread count for a process of an srun step (see the module's
    docstring); a line saying what was set, None when the process was not started by srun."""
    if not started_by_srun(env):
        return None
    notes = []
    if not env.get('MASTER_ADDR'):
        nodelist = env.get('SLURM_STEP_NODELIST') or env.get('SLURM_JOB_NODELIST') or env.get('SLURM_NODELIST')
        env['MASTER_ADDR'] = master_host(nodelist) if nodelist else '127.0.0.1'
        notes.append(f"MASTER_ADDR={env['MASTER_ADDR']}" + (' (from the node list)' if nodelist else ''))
    if not env.get('MASTER_PORT'):
        env['MASTER_PORT'] = str(20000 + int(env.get('SLURM_JOB_ID') or 0) % 10000)
        notes.append(f"MASTER_PORT={env['MASTER_PORT']}")
    local_tasks = tasks_on_this_node(env)
    if 'OMP_NUM_THREADS' not in env and local_tasks > 1:
        env['OMP_NUM_THREADS'] = env.get('SLURM_CPUS_PER_TASK') or '1'
        notes.append(f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} ({local_tasks} tasks on this node; "
                     'export OMP_NUM_THREADS to choose)')
    if env.get('OMP_NUM_THREADS'):
        torch.set_num_threads(int(env['OMP_NUM_THREADS']))
    return (f"srun: task {env['SLURM_PROCID']} of {env['SLURM_NTASKS']}, {local_tasks} on this node, "
            f"{torch.get_num_threads()} threads each" + (f"; set {', '.join(notes)}" if notes else ''))
