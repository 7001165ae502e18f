"""tools/bench_peers.py's plumbing, with small models standing in: ratios, activation memory, the CSV row."""
import csv
import sys

import timm

from scripts import REPO
from van_focal.core import device as devices

sys.path.insert(0, str(REPO / 'tools'))
import bench_peers  # noqa: E402


def test_bench_peers_rows(monkeypatch, capsys, tmp_path):
    small = {'van_b0': dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_classes=10),
             'resnet10t': dict(num_classes=10)}
    monkeypatch.setattr(bench_peers, 'create', lambda name: timm.create_model(name, **small[name]))
    monkeypatch.setattr(bench_peers, 'PAIRS', {'van_b0': ('resnet10t', 'van_b0')})
    results = tmp_path / 'peers.csv'
    monkeypatch.setattr(sys, 'argv', ['bench_peers.py', '--models', 'van_b0', '-b', '1', '--repeats', '1',
                                      '--threads', '1', '--results-file', str(results)])
    bench_peers.main()
    out = capsys.readouterr().out
    assert out.startswith(devices.cpu_name())
    rows = list(csv.DictReader(results.open()))
    assert [(r['model'], r['against'], r['mode']) for r in rows] == [
        ('van_b0', 'resnet10t', 'inference'), ('van_b0', 'resnet10t', 'training step')]
    for row in rows:
        assert row['cpu'] == devices.cpu_name() and row['command'].startswith('python tools/bench_peers.py')
        assert float(row['ours_activation_mib_per_image']) > 0 and float(row['their_activation_mib_per_image']) > 0
        assert abs(float(row['ratio']) - float(row['ours_img_per_sec']) / float(row['their_img_per_sec'])) < 0.02
    assert '| van_b0 | resnet10t | inference |' in out


def test_goal_columns():
    assert bench_peers.goal_columns('van_b2', 'peer', 'inference', 1.12, 0.9) == dict(goal='≥ 1.1×', at_goal='yes')
    assert bench_peers.goal_columns('van_b2', 'official', 'training step', 1.4, 0.7)['at_goal'] == 'no'  # memory
    assert bench_peers.goal_columns('focal_tiny_patch4_window7_224', 'official', 'inference', 2.4, 0.5) == dict(
        goal='≥ 2.5×, memory ≤ 0.6×', at_goal='no')
    assert bench_peers.goal_columns('van_b0', 'peer', 'inference', 1.0, 1.0) == dict(goal='', at_goal='')
