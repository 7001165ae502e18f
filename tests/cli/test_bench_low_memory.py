"""tools/bench_low_memory.py with a small VAN: both ways timed on one model, the CSV rows, the model left as built."""
import csv
import sys

import timm

from scripts import REPO

sys.path.insert(0, str(REPO / 'tools'))
import bench_low_memory  # noqa: E402


def test_bench_low_memory_rows(monkeypatch, capsys, tmp_path):
    create = timm.create_model
    monkeypatch.setattr(bench_low_memory.timm, 'create_model', lambda name, **kw: create(
        name, embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_classes=10, **kw))
    results = tmp_path / 'low_memory.csv'
    monkeypatch.setattr(sys, 'argv', ['bench_low_memory.py', '--models', 'van_b0', '-b', '2', '--repeats', '1',
                                      '--threads', '1', '--results-file', str(results)])
    bench_low_memory.main()
    rows = list(csv.DictReader(results.open()))
    assert [(r['model'], r['layout']) for r in rows] == [('van_b0', 'NCHW'), ('van_b0', 'channels_last')]
    for row in rows:
        assert float(row['low_memory_mib_per_image']) < 0.7 * float(row['autograd_mib_per_image'])
        assert row['command'].startswith('python tools/bench_low_memory.py')
    assert 'van_b0 channels_last: low_memory' in capsys.readouterr().out
