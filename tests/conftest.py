import logging
import signal
import sys
from pathlib import Path

import pytest
import torch

import van_focal  # noqa: F401  (registers the models)
from scripts import REPO, TINY_RUN, make_tiny_dataset

FIXTURES = Path(__file__).parent / 'fixtures'


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(autouse=True)
def _keep_signal_handlers():
    """train.main, run in-process, takes SIGTERM / SIGUSR1 over for its stop request; give them back to pytest."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def golden(name: str):
    """(official checkpoint path, model kwargs, input, official logits) of a committed fixture."""
    data = torch.load(FIXTURES / f'{name}_golden.pt')
    checkpoint = next(p for p in FIXTURES.glob(f'{name}.pth*'))
    return checkpoint, data['model_kwargs'], data['input'], data['logits']


@pytest.fixture(autouse=True)
def _fresh_logging():
    """Each in-process run adds timm's log handler on the captured stderr of its test; drop it afterwards."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """A tiny 3-class image-folder dataset, one per test module."""
    return make_tiny_dataset(tmp_path_factory.mktemp('shapes'))


@pytest.fixture(scope='module')
def checkpoint(data, tmp_path_factory):
    """last.pth.tar of a 1-epoch train.py run on `data` (in-process)."""
    sys.path.insert(0, str(REPO))
    import train
    out = tmp_path_factory.mktemp('runs')
    train.main([str(a) for a in [data, *TINY_RUN, '--epochs', '1', '--output', out, '--experiment', 'run']])
    return out / 'run' / 'last.pth.tar'
