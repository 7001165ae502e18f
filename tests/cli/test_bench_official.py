"""tools/bench_official.py's plumbing, with our own model standing in for the official code (which is not
part of the project): it names the CPU and the routes picked, and ends with the table of ratios."""
import copy
import sys

import timm

from scripts import REPO
from van_focal.core import device as devices

sys.path.insert(0, str(REPO / 'tools'))
import bench_official  # noqa: E402


def test_bench_official_prints_cpu_routes_and_table(monkeypatch, capsys):
    def small_pair(name, args):
        ours = timm.create_model('van_b0', embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_classes=10)
        return copy.deepcopy(ours), ours

    monkeypatch.setattr(bench_official, 'build_pair', small_pair)
    monkeypatch.setattr(sys, 'argv', ['bench_official.py', '--models', 'van_b0', '-b', '1', '--iters', '1',
                                      '--repeats', '1', '--threads', '1'])
    bench_official.main()
    out = capsys.readouterr().out
    assert out.startswith(devices.cpu_name())
    assert 'max relative logit difference 0.0e+00' in out and 'routes picked: ' in out and 'dilated_dw_conv: ' in out
    assert 'activation memory: official ' in out
    rows = [line for line in out.splitlines() if line.startswith('| van_b0 |')]
    assert len(rows) == 2 and rows[0].startswith('| van_b0 | inference (') and '| training step (' in rows[1]
    assert all(devices.cpu_name() in row and row.count('|') == 8 for row in rows)
