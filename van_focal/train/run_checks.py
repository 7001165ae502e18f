"""Runs that would train nothing, or not as asked, said before they start."""
import logging

from ..core.errors import UsageError

_logger = logging.getLogger(__name__)


def check_updates_per_epoch(loader, batch_size: int, world_size: int = 1) -> None:
    """A UsageError when an epoch would make no update: the training loader drops the last partial batch."""
    if len(loader) > 0:
        return
    images = len(loader.dataset)
    per_process = f'{batch_size} per process x {world_size} processes' if world_size > 1 else str(batch_size)
    largest = max(1, images // world_size)
    raise UsageError(f'--batch-size {per_process} is more than the {images} training images, and the last '
                     f'partial batch is dropped: an epoch would make 0 updates. Use -b {largest} or less.')


def warn_if_warmup_fills_run(warmup_epochs: float, start_epoch: int, num_epochs: int, warmup_lr: float,
                             lr: float) -> bool:
    """Warn when the run ends before its warmup does (the lr never reaches --lr); True if it warned."""
    if warmup_epochs <= 0 or num_epochs > warmup_epochs or start_epoch >= num_epochs:
        return False
    _logger.warning(f'--warmup-epochs {warmup_epochs:g} covers the whole run ({num_epochs} epochs): every epoch '
                    f'is in warmup, the lr rising from --warmup-lr {warmup_lr:g} without reaching --lr {lr:g}. '
                    'For a short run or fine-tune, lower --warmup-epochs (0 for none).')
    return True


def warn_if_nothing_left(start_epoch: int, num_epochs: int) -> bool:
    """Warn when a resumed run has already trained all its epochs; True if it warned."""
    if start_epoch < num_epochs:
        return False
    _logger.warning(f'Nothing to train: the run has finished its {num_epochs} epochs. '
                    f'Pass --epochs N (more than {num_epochs}) to train it further.')
    return True
