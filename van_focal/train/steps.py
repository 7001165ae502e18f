"""Pieces of train.py that timm does not provide as we need them: checkpoints that survive a kill or a
full disk and can hold a position inside an epoch, randomness derived from (seed, epoch), a stop on a
non-finite loss, and the curves plot."""
import csv
import logging
import os
import shutil
from contextlib import contextmanager, suppress
from typing import Dict, Optional

from timm import utils
from timm.utils.checkpoint_saver import load_checkpoint_metadata

from ..core.checkpoint import checkpoint_loading
from ..core.errors import CheckpointWriteError, NonFiniteLossError, UsageError

_logger = logging.getLogger(__name__)

# Spacing between the seeds of consecutive epochs; larger than any world size so that
# (epoch, rank) pairs never share a seed.
EPOCH_SEED_STRIDE = 100_003



def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed python, numpy and torch from (seed, epoch, rank) alone.

    Sampler order, augmentation, mixup, drop path and DataLoader worker seeds are all drawn from these
    generators after this call, so an epoch is the same whether the run got there directly or by resuming.
    """
    utils.random_seed(seed + EPOCH_SEED_STRIDE * epoch, rank)


def check_training_flags(args) -> None:
    """Refuse flag values that cannot work, before anything is built."""
    for flag, value, least in (('-b/--batch-size', args.batch_size, 1), ('-vb/--validation-batch-size',
                               args.validation_batch_size, 1), ('--workers', args.workers, 0),
                               ('--lr', args.lr, 0), ('--lr-base', args.lr_base, 0)):
        if value is not None and value < least:
            raise UsageError(f'{flag} {value}: must be {"at least 1" if least else "zero or more"}.')


def resolve_resume_auto(args) -> None:
    """`--resume auto`: the run folder's last.pth.tar when there is one (a restart), else a fresh start."""
    if args.resume != 'auto':
        return
    if not args.experiment:
        raise UsageError('--resume auto needs --experiment NAME: a restarted run finds its folder by that name.')
    last = os.path.join(args.output or './output/train', args.experiment, 'last.pth.tar')
    args.resume = last if os.path.isfile(last) else ''
    if os.environ.get('RANK', '0') == '0':  # before torch.distributed is set up
        _logger.info(f'--resume auto: {"continuing from " + last if args.resume else "no " + last + ", starting afresh"}.')


def resume_within_epoch(args, epoch: int, num_batches: int, epoch_tail) -> Optional[Dict[str, float]]:
    """The position inside `epoch` saved in `args.resume` by a stop, if the loader (its `epoch_tail`
    SkippingSampler) can start there in the same order."""
    with checkpoint_loading(args.resume, args.model):
        position = resume_position(args.resume)
    if not position or position['epoch'] != epoch:
        return None
    if epoch_tail is None:
        _logger.warning(f'{args.resume} stopped inside epoch {epoch}; a streamed dataset cannot start there, '
                        'so the epoch restarts from its beginning.')
        return None
    if (position['batch_size'], position['world_size']) != (args.batch_size, args.world_size) \
            or position['batches_done'] > num_batches:
        _logger.warning(f"{args.resume} stopped inside epoch {epoch} with batch {position['batch_size']} x "
                        f"{position['world_size']} processes, now {args.batch_size} x {args.world_size}: the sample "
                        'order differs, so the epoch restarts from its beginning.')
        return None
    if utils.is_primary(args):
        _logger.info(f"Continuing epoch {epoch} after batch {position['batches_done']} of {num_batches}.")
    return position


def check_finite(losses, epoch: int, output_dir: str) -> None:
    """Stop at the first non-finite loss in `losses` (a `meters.LossMeter`). Called at log intervals and at the
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
    position = None  # while save_position writes: epoch, batches_done, batch_size, world_size, loss_sum, loss_count

    def _save(self, save_path, epoch, metric=None):
        super()._save(save_path, epoch, metric)
        _fsync_file(save_path)

    def _replace(self, src, dst):
        os.replace(src, dst)  # atomic; timm unlinks dst first (for Windows), leaving a moment with no file

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
            state['position'] = self.position
        return state

    def save_checkpoint(self, epoch, metric=None):
        with self._write_errors_explained():
            return super().save_checkpoint(epoch, metric)

    def save_position(self, position: Dict[str, float]) -> str:
        """Write `last` after `position['batches_done']` batches of `position['epoch']`; `--resume` continues there.

        Its `epoch` field is the last completed epoch (epoch - 1), as timm reads it, so a loader that
        ignores the position (timm's own train.py) repeats the interrupted epoch instead of skipping it.
        """
        tmp_path = os.path.join(self.checkpoint_dir, 'tmp' + self.extension)
        last_path = os.path.join(self.checkpoint_dir, 'last' + self.extension)
        self.position = dict(position)
        try:
            with self._write_errors_explained():
                self._save(tmp_path, position['epoch'] - 1)
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


def resume_position(checkpoint_path: str) -> Optional[Dict[str, float]]:
    """The position inside an epoch that `save_position` stored in `checkpoint_path`, else None."""
    state = load_checkpoint_metadata(checkpoint_path).get('saver') or {}
    return state.get('position')


def _read_summary(summary_csv: str) -> Dict[int, Dict[str, float]]:
    """summary.csv by epoch (a row written again after a restart replaces the earlier one), numbers only."""
    with open(summary_csv) as f:
        rows = list(csv.DictReader(f))
    by_epoch = {}
    for row in rows:
        values = {}
        for key, text in row.items():
            with suppress(TypeError, ValueError):
                values[key] = float(text)
        if 'epoch' in values:
            by_epoch[int(values['epoch'])] = values
    return dict(sorted(by_epoch.items()))


def _pad(ax, values, least_span: float, low: Optional[float] = None, high: Optional[float] = None) -> None:
    """y limits around `values` spanning at least `least_span` (a single point or a flat curve is not drawn
    across the whole axis height), kept within [low, high]."""
    lo, hi = min(values), max(values)
    margin = max((hi - lo) * 0.1, (least_span - (hi - lo)) / 2, 0)
    lo, hi = lo - margin, hi + margin
    if low is not None and lo < low:
        lo, hi = low, max(hi, low + least_span)
    if high is not None and hi > high:
        lo, hi = min(lo, high - least_span), high
    ax.set_ylim(lo, hi)


def plot_summary(summary_csv: str, png_path: str) -> None:
    """summary.png: `summary_figure` (skipped without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        _logger.warning('summary.png needs matplotlib (pip install "van_focal[plot]"); summary.csv has the numbers.')
        return
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig = summary_figure(summary_csv)
    if fig is not None:
        fig.savefig(png_path, dpi=100)
        plt.close(fig)


def summary_figure(summary_csv: str):
    """Loss, accuracy and learning-rate curves from timm's summary.csv, one panel each, a marker per epoch,
    whole epochs on the x axis, y limits that keep a single epoch or a flat curve readable; None if it is empty."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    by_epoch = _read_summary(summary_csv)
    if not by_epoch:
        return None
    epochs = list(by_epoch)
    rows = list(by_epoch.values())
    panels = [('loss', 'loss', [('train_loss', 'train'), ('eval_loss', 'eval')]),
              ('validation accuracy', 'accuracy (%)', [('eval_top1', 'top-1'), ('eval_top5', 'top-5')]),
              ('learning rate', 'lr (end of epoch)', [('lr', 'lr')])]
    panels = [(title, label, [(k, n) for k, n in series if all(k in r for r in rows)]) for title, label, series in panels]
    panels = [p for p in panels if p[2]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (title, label, series) in zip(axes[0], panels):
        values = []
        for key, name in series:
            ys = [r[key] for r in rows]
            values += ys
            last = f'{ys[-1]:.3g}' if key == 'lr' else f'{ys[-1]:.2f}' if 'top' in key else f'{ys[-1]:.3f}'
            ax.plot(epochs, ys, marker='o', markersize=4, label=f'{name} ({last} at epoch {epochs[-1]})')
        if 'top1' in series[0][0]:
            best = max(range(len(rows)), key=lambda i: rows[i]['eval_top1'])
            title = f'{title}, best top-1 {rows[best]["eval_top1"]:.2f} (epoch {epochs[best]})'
            _pad(ax, values, 10.0, -1.5, 101.5)  # 0 and 100 % markers whole
        elif series[0][0] == 'lr':
            ax.set_ylim(0, max(values) * 1.1 or 1e-3)  # schedules start and end near 0
            ax.ticklabel_format(axis='y', style='sci', scilimits=(-2, 3))
        else:
            _pad(ax, values, max(abs(v) for v in values) * 0.1 or 0.1, 0.0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if len(epochs) < 4:  # a point or two: not stretched across the whole width
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        ax.set(xlabel='epoch', ylabel=label, title=title)
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
