"""Pieces of train.py that timm does not provide as we need them: checkpoints that survive a kill or a
full disk and can hold a position inside an epoch, randomness derived from (seed, epoch), a stop on a
non-finite loss, and the curves plot."""
import csv
import logging
import os
import shutil
from contextlib import contextmanager, suppress
from typing import Optional, Tuple

import torch
from timm import utils
from timm.utils.checkpoint_saver import load_checkpoint_metadata

from .cli import UsageError

_logger = logging.getLogger(__name__)

# Spacing between the seeds of consecutive epochs; larger than any world size so that
# (epoch, rank) pairs never share a seed.
EPOCH_SEED_STRIDE = 100_003


class NonFiniteLossError(UsageError):
    """Training diverged; the checkpoints on disk are from before it."""


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed python, numpy and torch from (seed, epoch, rank) alone.

    Sampler order, augmentation, mixup, drop path and DataLoader worker seeds are all drawn from these
    generators after this call, so an epoch is the same whether the run got there directly or by resuming.
    """
    utils.random_seed(seed + EPOCH_SEED_STRIDE * epoch, rank)


def check_finite(loss: torch.Tensor, epoch: int, step: int, output_dir: str) -> None:
    if not torch.isfinite(loss).all():
        where = f' The checkpoints in {output_dir} are from before this step and untouched.' if output_dir else ''
        raise NonFiniteLossError(f'loss is {loss.item()} at epoch {epoch}, step {step}: training diverged.{where} '
                                 'Lower --lr, set --clip-grad, or use --amp-dtype bfloat16, then --resume.')


def _fsync_file(path: str) -> None:
    with open(path, 'rb') as f:
        os.fsync(f.fileno())


class CheckpointWriteError(UsageError):
    """A checkpoint could not be written (full disk, quota, permissions); the earlier ones are intact."""


def _free_space(folder: str) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return 'unknown'
    for unit in ('B', 'KB', 'MB', 'GB'):
        if free < 1024 or unit == 'GB':
            return f'{free:.0f} {unit}' if unit == 'B' else f'{free:.1f} {unit}'
        free /= 1024


class AtomicCheckpointSaver(utils.CheckpointSaver):
    """timm's CheckpointSaver, writing every file as temporary file + fsync + rename.

    timm already saves `last` through a temporary file; here the data also reaches the disk before the
    rename, and the numbered and `model_best` copies are never half-written or briefly absent. A kill at
    any moment leaves each file either the previous complete version or the new complete one. An OSError
    while writing (a full disk) removes the partial file and stops with a CheckpointWriteError.

    `save_position` writes only `last`, holding a position inside an epoch (see `resume_position`).
    """
    position = None  # (epoch, batches done) while save_position writes

    def _save(self, save_path, epoch, metric=None):
        super()._save(save_path, epoch, metric)
        _fsync_file(save_path)

    def _duplicate(self, src, dst):
        partial = f'{dst}.partial'
        try:
            os.link(src, partial)
        except OSError:
            shutil.copyfile(src, partial)
            _fsync_file(partial)
        os.replace(partial, dst)

    def state_dict(self, epoch=None, metric=None):
        state = super().state_dict(epoch, metric)
        if self.position is not None:
            state['position'] = dict(zip(('epoch', 'batches_done'), self.position))
        return state

    def save_checkpoint(self, epoch, metric=None):
        with self._write_errors_explained():
            return super().save_checkpoint(epoch, metric)

    def save_position(self, epoch: int, batches_done: int) -> str:
        """Write `last` after `batches_done` batches of `epoch`; `--resume` continues right there.

        Its `epoch` field is the last completed epoch (epoch - 1), as timm reads it, so a loader that
        ignores the position (timm's own train.py) repeats the interrupted epoch instead of skipping it.
        """
        tmp_path = os.path.join(self.checkpoint_dir, 'tmp' + self.extension)
        last_path = os.path.join(self.checkpoint_dir, 'last' + self.extension)
        self.position = (epoch, batches_done)
        try:
            with self._write_errors_explained():
                self._save(tmp_path, epoch - 1)
                self._replace(tmp_path, last_path)
        finally:
            self.position = None
        return last_path

    @contextmanager
    def _write_errors_explained(self):
        try:
            yield
        except OSError as e:
            for name in os.listdir(self.checkpoint_dir):
                if name == 'tmp' + self.extension or name.endswith('.partial'):
                    with suppress(OSError):
                        os.remove(os.path.join(self.checkpoint_dir, name))
            raise CheckpointWriteError(
                f'cannot write a checkpoint in {self.checkpoint_dir} ({e.strerror or e}); {_free_space(self.checkpoint_dir)} '
                'free there. The earlier checkpoints are intact: free some space (or choose another --output), '
                'then --resume.') from None


def resume_position(checkpoint_path: str) -> Optional[Tuple[int, int]]:
    """(epoch, batches done) when `checkpoint_path` was written inside an epoch by `save_position`, else None."""
    state = load_checkpoint_metadata(checkpoint_path).get('saver') or {}
    position = state.get('position')
    return (position['epoch'], position['batches_done']) if position else None


def plot_summary(summary_csv: str, png_path: str) -> None:
    """Loss and accuracy curves from timm's summary.csv, one panel each (skipped without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        _logger.warning('summary.png needs matplotlib (pip install "van_focal[plot]"); summary.csv has the numbers.')
        return
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    with open(summary_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r['epoch']) for r in rows]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (('train_loss', 'train'), ('eval_loss', 'eval')):
        if key in rows[0]:
            loss_ax.plot(epochs, [float(r[key]) for r in rows], label=label)
    for key, label in (('eval_top1', 'top-1'), ('eval_top5', 'top-5')):
        if key in rows[0]:
            acc_ax.plot(epochs, [float(r[key]) for r in rows], label=label)
    loss_ax.set(xlabel='epoch', ylabel='loss', title='loss')
    acc_ax.set(xlabel='epoch', ylabel='accuracy (%)', title='validation accuracy')
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
