"""Meters of a training epoch."""
from typing import Optional, Tuple

import torch


class LossMeter:
    """The losses of an epoch, kept on the device: `update` never waits for it (no `.item()`), reading
    `val`, `avg` or `first_nonfinite()` does. The host reads them at log intervals only, because every host
    read stalls the queue of an accelerator."""

    def __init__(self, total: float = 0., count: int = 0):
        """`total` and `count`: the losses before the position a resumed epoch continues from."""
        self._sum = self._last = self._bad_step = self._bad_loss = None
        self._start_total = total
        self.count = count

    def update(self, loss: torch.Tensor, n: int, step: int) -> None:
        loss = loss.detach().float()
        if self._sum is None:
            self._sum = torch.full((), self._start_total, device=loss.device)
            self._bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_loss = torch.zeros((), device=loss.device)
        first_bad = ~torch.isfinite(loss) & (self._bad_step < 0)
        self._bad_step = torch.where(first_bad, step, self._bad_step)
        self._bad_loss = torch.where(first_bad, loss, self._bad_loss)
        self._sum += loss * n
        self._last = loss
        self.count += n

    @property
    def val(self) -> float:
        return self._last.item() if self._last is not None else 0.

    @property
    def sum(self) -> float:
        return self._sum.item() if self._sum is not None else self._start_total

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.

    def first_nonfinite(self) -> Optional[Tuple[int, float]]:
        """(step, loss) of the first non-finite loss so far, or None."""
        if self._bad_step is None or self._bad_step.item() < 0:
            return None
        return int(self._bad_step.item()), self._bad_loss.item()
