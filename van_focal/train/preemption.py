"""Stopping on a cluster's preemption signal at an update boundary, and continuing inside the epoch.

SLURM and Kubernetes send SIGTERM (SLURM's `--signal` often SIGUSR1) and kill a little later.
`StopSignals` turns either into a request that train.py honours after the current update; under
torch.distributed every process learns whether any process got the signal (a one-number all-reduce
every few updates), so all stop at the same update. The
process then exits with status 128 + the signal's number (143 for SIGTERM, 138 for SIGUSR1), what a
shell reports for a process the signal killed, so job scripts that requeue on it keep working.

`restartable_init_method()` is for torchrun's `--max-restarts`: each restart of the process group
gets its own keys in torchrun's store, so the new processes never read the addresses their killed
predecessors left there and fail to connect (pytorch/pytorch#167288).

`SkippingSampler` wraps a loader's sampler so that an epoch can start `skip` indices into the
order the sampler draws for it: a resumed epoch sees exactly the samples the stopped one had not.
"""
import itertools
import logging
import os
import signal
import sys
from typing import Iterator, NoReturn, Optional

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import _rendezvous_handlers, register_rendezvous_handler, rendezvous
from torch.utils.data import Sampler

_logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Updates between two stop checks under torch.distributed: at up to a few seconds an update, a stop still
# comes well inside the grace period of SLURM (KillWait, 30 s by default) and Kubernetes (30 s).
DISTRIBUTED_CHECK_EVERY = 5
RESTART_COUNT = 'TORCHELASTIC_RESTART_COUNT'  # set by torchrun in every process it starts


def _per_restart_rendezvous(url: str, timeout=None, **kwargs):
    """torch's env:// rendezvous, its store narrowed to the keys of this torchrun restart."""
    store, rank, world_size = next(rendezvous('env://', **({'timeout': timeout} if timeout else {}), **kwargs))
    yield dist.PrefixStore(f'restart{os.environ.get(RESTART_COUNT, "0")}', store), rank, world_size
    raise RuntimeError('restartable:// cannot re-rendezvous')


def restartable_init_method() -> Optional[str]:
    """`init_method` for torch.distributed under torchrun (None elsewhere: the default env:// is right)."""
    if RESTART_COUNT not in os.environ:
        return None
    if 'restartable' not in _rendezvous_handlers:
        register_rendezvous_handler('restartable', _per_restart_rendezvous)
    return 'restartable://'


class StopSignals:
    """Records SIGTERM / SIGUSR1 instead of dying; `agreed()` tells every process whether to stop."""

    def __init__(self, distributed: bool, device: torch.device = torch.device('cpu')):
        self.received = 0  # the signal this process got; written only by the handler
        self.signum = 0  # the signal the processes agreed on
        self.position: Optional[dict] = None  # where the epoch stopped, set by the training loop
        self.distributed = distributed
        self.device = device
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._record)

    def _record(self, signum, _frame) -> None:
        self.received = signum  # no logging here: the handler may interrupt a log call holding its lock

    def agreed(self, update: int = 0) -> bool:
        """Whether any process has received a stop signal; the same answer on every process.

        Under torch.distributed the processes compare notes at every `DISTRIBUTED_CHECK_EVERY`-th update
        only: reading the all-reduced flag waits for the accelerator's queue to drain.
        """
        if not self.distributed:
            self.signum = self.received
            return bool(self.signum)
        if update % DISTRIBUTED_CHECK_EVERY:
            return False
        # A signal arriving during the all-reduce sets `received` only, so the next call still sees it.
        flag = torch.tensor([float(self.received)], device=self.device)  # float: every backend reduces it
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signum = int(flag.item())
        return bool(self.signum)

    def finish(self, where: str, output_dir: str) -> NoReturn:
        """Exit with `exit_status` once every process is here (the primary has written its checkpoint by then)."""
        if self.distributed:
            dist.barrier()
        if output_dir:
            last = os.path.join(output_dir, 'last.pth.tar')
            _logger.warning(f'{signal.Signals(self.signum).name}: stopped {where}. {last} holds the run; '
                            f'continue it with --resume {last} (or --resume auto --experiment ...).')
        sys.exit(self.exit_status)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class SkippingSampler(Sampler):
    """`sampler`'s order for the epoch, without its first `skip` indices (same random draws either way)."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def skipping_sampler(loader) -> Optional[SkippingSampler]:
    """Put a SkippingSampler under `loader`'s batches (a DataLoader or timm's PrefetchLoader); None for
    a streamed dataset (`--dataset wds/...`), which has no sampler to resume inside an epoch."""
    batch_sampler = loader.batch_sampler
    if batch_sampler is None or getattr(batch_sampler, 'sampler', None) is None:
        return None
    batch_sampler.sampler = SkippingSampler(batch_sampler.sampler)
    return batch_sampler.sampler
