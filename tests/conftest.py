import signal
from pathlib import Path

import pytest
import torch

import van_focal  # noqa: F401  (registers the models)

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
