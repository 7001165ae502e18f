"""Long waits say how long: plain progress lines where a bar's frames would pile up, and a whole training run's ETA."""
import io

import pytest

from van_focal.core.progress import Progress, RunEta, format_duration


@pytest.mark.parametrize('seconds, text', [(0, '0s'), (44.6, '45s'), (185, '3m05s'), (3599, '59m59s'),
                                           (3600 + 7 * 60 + 20, '1h07m'), (-3, '0s')])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_piped_progress_is_plain_lines_without_frames():
    stream = io.StringIO()  # a pipe or a log file: no terminal
    with Progress(range(5), desc='van_b0 on val', unit='batch', stream=stream, every=3600) as progress:
        for i in progress:
            progress.set_postfix_str(f'top-1 {10.0 * i:.2f}')
    text = stream.getvalue()
    assert '\r' not in text
    lines = text.splitlines()  # the first step, then (every hour: never here) ..., then the last
    assert len(lines) == 2
    assert lines[0].startswith('van_b0 on val: batch 1/5 (20 %), ') and ' left  top-1 0.00' in lines[0]
    assert lines[1].startswith('van_b0 on val: batch 5/5 (100 %), ') and 'left' not in lines[1]
    assert lines[1].endswith('top-1 40.00')


def test_piped_progress_every_interval():
    stream = io.StringIO()
    assert list(Progress(iter(range(3)), desc='x', stream=stream, every=0)) == [0, 1, 2]
    assert stream.getvalue().splitlines()[1].startswith('x: batch 2, ')  # no length: counts only


def test_terminal_gets_the_bar():
    stream = Terminal()
    with Progress(range(3), desc='bar', stream=stream) as progress:
        assert list(progress) == [0, 1, 2]
    assert '\r' in stream.getvalue() and '3/3' in stream.getvalue()


def test_run_eta_before_and_after_a_whole_epoch():
    eta = RunEta(num_epochs=10)
    # epoch 0, a quarter trained in 30 s: 90 s of its training left, then 9 more epochs of 120 s
    assert eta.seconds_left(0, 30, 90) == pytest.approx(90 + 9 * 120)
    eta.epoch_finished(train_seconds=120, total_seconds=150)  # evaluation and saving took 30 s
    # epoch 1 half trained: 60 s of training left, its 30 s of evaluation, then 8 epochs of 120 + 30 s
    assert eta.seconds_left(1, 60, 60) == pytest.approx(60 + 30 + 8 * 150)
    # the machine got 4x faster: the epochs left follow the current pace, not the slow first epoch
    assert eta.seconds_left(1, 15, 15) == pytest.approx(15 + 30 + 8 * 60)
    assert eta.whole_epochs(3) == 450
    # resumed inside an epoch before any whole one: the trained share scales up to a whole epoch
    assert RunEta(3).seconds_left(1, 10, 10, fraction_run=0.5) == pytest.approx(10 + 40)


def test_benchmark_says_which_model_and_how_long(monkeypatch, capsys, caplog):
    """benchmark.py's progress on stderr: the model of how many, the time so far and left (results on stdout)."""
    import logging
    import sys

    from scripts import REPO
    sys.path.insert(0, str(REPO))
    import benchmark

    def bench(name, modes, args):
        return [dict(model=name, bench=mode, img_per_sec=1.0, latency_ms=1.0, param_count=1, gmacs=1.0,
                     gflops_per_sec=1.0, peak_memory_mb=1.0, routes='') for mode in modes]

    monkeypatch.setattr(benchmark, 'bench_isolated', bench)
    monkeypatch.setattr(benchmark, 'matmul_gflops', lambda device, dtype: 100.0)
    monkeypatch.setattr(sys, 'argv', ['benchmark.py', '--model', 'van_b0,van_b1,van_b2', '--device', 'cpu'])
    caplog.set_level(logging.INFO)
    benchmark.main()
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith('[')]
    assert progress[0] == '[1/3] van_b0: infer and train'
    assert progress[1].startswith('[2/3] van_b1: infer and train (') and ' so far, about ' in progress[1]
    assert progress[2].startswith('[3/3] van_b2: ') and progress[2].endswith(' left)')
    assert '[1/3]' not in capsys.readouterr().out
