"""Pieces of train.py that timm does not provide as we need them: checkpoints that survive a kill,
randomness derived from (seed, epoch), a stop on a non-finite loss, and the curves plot."""
import csv
import logging
import os
import shutil

from timm import utils

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


def check_finite(losses, epoch: int, output_dir: str) -> None:
    """Stop at the first non-finite loss in `losses` (a device.LossMeter). Called at log intervals and at the
    end of the epoch, before any checkpoint is written, so the steps in between never reach the disk."""
    bad = losses.first_nonfinite()
    if bad is not None:
        step, loss = bad
        where = f' The checkpoints in {output_dir} are from before this step and untouched.' if output_dir else ''
        raise NonFiniteLossError(f'loss is {loss} at epoch {epoch}, step {step}: training diverged.{where} '
                                 'Lower --lr, set --clip-grad, or use --amp-dtype bfloat16, then --resume.')


def _fsync_file(path: str) -> None:
    with open(path, 'rb') as f:
        os.fsync(f.fileno())


class AtomicCheckpointSaver(utils.CheckpointSaver):
    """timm's CheckpointSaver, writing every file as temporary file + fsync + rename.

    timm already saves `last` through a temporary file; here the data also reaches the disk before the
    rename, and the numbered and `model_best` copies are never half-written or briefly absent. A kill at
    any moment leaves each file either the previous complete version or the new complete one.
    """

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
