"""How long the long waits take: a progress bar on a terminal, plain lines in a piped log, and a training run's ETA.

tqdm redraws its bar with carriage returns several times a second; written into a pipe or a log file, every
frame stays. So the bar is drawn only when the stream is a terminal; otherwise `Progress` writes one plain
line now and then (the first step, then every `every` seconds, then the last), each with the time left.
"""
import statistics
import sys
import time
from typing import IO, Iterable, Iterator, List, Optional


def format_duration(seconds: float) -> str:
    """'45s', '3m05s', '2h07m' (rounded to the second, or to the minute from an hour on)."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    minutes = (seconds + 30) // 60
    return f'{minutes // 60}h{minutes % 60:02d}m'


def is_terminal(stream: IO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class Progress:
    """Iterate `iterable` showing how far it got: tqdm's bar on a terminal, else plain lines (see the module)."""

    def __init__(self, iterable: Iterable, total: Optional[int] = None, desc: str = '', unit: str = 'batch',
                 stream: Optional[IO] = None, every: float = 30.0):
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, '__len__') else None)
        self.stream = stream if stream is not None else sys.stderr
        self.postfix = ''
        self.bar = None
        if is_terminal(self.stream):
            from tqdm import tqdm
            self.bar = tqdm(iterable, total=self.total, desc=desc, unit=unit, file=self.stream)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def __iter__(self) -> Iterator:
        if self.bar is not None:
            yield from self.bar
            return
        start = last = time.time()
        done = 0
        for item in self.iterable:
            yield item
            done += 1
            now = time.time()
            if done == 1 or now - last >= self.every or done == self.total:
                self._line(done, now - start)
                last = now

    def _line(self, done: int, elapsed: float) -> None:
        if self.total:
            where = f'{self.unit} {done}/{self.total} ({100 * done / self.total:.0f} %)'
            left = '' if done == self.total else f', {format_duration(elapsed / done * (self.total - done))} left'
        else:
            where, left = f'{self.unit} {done}', ''
        postfix = f'  {self.postfix}' if self.postfix else ''
        print(f'{self.desc}: {where}, {format_duration(elapsed)} so far{left}{postfix}', file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> 'Progress':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunEta:
    """Time left in a training run at the current pace: the rest of this epoch's training, then its evaluation
    and checkpoint, then each remaining epoch as long as this epoch's training plus the evaluation and
    checkpoint time measured in the whole epochs so far (the pace follows a machine that gets busier or
    quieter; before the first epoch has ended, evaluation is not counted)."""

    def __init__(self, num_epochs: int):
        self.num_epochs = num_epochs
        self.epoch_seconds: List[float] = []  # whole epochs: training, evaluation, checkpoint, plot
        self.train_seconds: List[float] = []  # their training part

    def epoch_finished(self, train_seconds: float, total_seconds: float) -> None:
        """Record one whole epoch (not one resumed in its middle: that one is shorter)."""
        self.train_seconds.append(train_seconds)
        self.epoch_seconds.append(total_seconds)

    def whole_epochs(self, count: int) -> float:
        """Seconds for `count` whole epochs at the median measured length (0 before one has ended)."""
        return statistics.median(self.epoch_seconds) * count if self.epoch_seconds else 0.0

    def seconds_left(self, epoch: int, train_elapsed: float, train_left: float, fraction_run: float = 1.0) -> float:
        """After `train_elapsed` seconds of `epoch`'s training with `train_left` to go (`fraction_run`: the share
        of the epoch this process trains, less than 1 when resumed inside it)."""
        this_epoch_train = (train_elapsed + train_left) / max(fraction_run, 1e-9)
        overhead = 0.0
        if self.epoch_seconds:
            overhead = max(0.0, statistics.median(self.epoch_seconds) - statistics.median(self.train_seconds))
        return train_left + overhead + (this_epoch_train + overhead) * max(0, self.num_epochs - epoch - 1)
