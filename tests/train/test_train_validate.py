"""train.py, validate.py and distributed_train.sh end to end on a tiny drawn dataset (CPU)."""
import csv
import json
import socket
import sys

import pytest

from scripts import REPO, TINY_RUN, load, run

sys.path.insert(0, str(REPO))
import train  # noqa: E402


@pytest.mark.scripts
def test_train_then_validate(data, tmp_path):
    run('train.py', data, *TINY_RUN, '--epochs', '2', '--model-ema', '--model-ema-decay', '0.9',
        '--output', tmp_path, '--experiment', 'run')
    out = tmp_path / 'run'
    with open(out / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['0', '1']
    assert {'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr'} <= set(rows[0])
    assert (out / 'summary.png').stat().st_size > 1000
    assert {'last.pth.tar', 'model_best.pth.tar', 'checkpoint-0.pth.tar', 'args.yaml'} <= {p.name for p in out.iterdir()}
    checkpoint = load(out / 'last.pth.tar')
    assert checkpoint['epoch'] == 1 and 'state_dict_ema' in checkpoint and 'optimizer' in checkpoint

    result = run('validate.py', data, '--model', 'van_b0', '--img-size', '32', '--workers', '0', '--device', 'cpu',
                 '--checkpoint', out / 'model_best.pth.tar', '--use-ema', '--results-file', tmp_path / 'r.json')
    results = json.loads((tmp_path / 'r.json').read_text())
    assert results['images'] == 12 and 0 <= results['top1'] <= 100 and results['top5'] == 100.0
    assert 'top-1' in result.stdout
    # ROOT may also be the split folder itself, and results may go to CSV.
    run('validate.py', data / 'val', '--model', 'van_b0', '--img-size', '32', '--workers', '0', '--device', 'cpu',
        '--checkpoint', out / 'last.pth.tar', '--results-file', tmp_path / 'r.csv')
    assert 'top1' in (tmp_path / 'r.csv').read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.scripts
def test_distributed_two_processes_on_cpu(data, tmp_path):
    result = run('distributed_train.sh', 2, data, *TINY_RUN, '--epochs', '1', '-b', '4', '--output', tmp_path,
                 '--experiment', 'ddp', env_extra={'MASTER_PORT': str(_free_port())})
    assert 'Process 1 of 2 on cpu' in result.stderr + result.stdout
    checkpoint = load(tmp_path / 'ddp' / 'last.pth.tar')
    assert checkpoint['args'].world_size == 2 and checkpoint['args'].distributed


@pytest.mark.scripts
def test_resume_continues_the_run(data, tmp_path):
    run('train.py', data, *TINY_RUN, '--epochs', '1', '--output', tmp_path, '--experiment', 'run')
    result = run('train.py', data, *TINY_RUN, '--epochs', '2', '--resume', tmp_path / 'run' / 'last.pth.tar')
    assert 'Training epochs 1..1' in result.stderr + result.stdout
    with open(tmp_path / 'run' / 'summary.csv') as f:
        assert [r['epoch'] for r in csv.DictReader(f)] == ['0', '1']
    assert load(tmp_path / 'run' / 'last.pth.tar')['epoch'] == 1


def test_config_file_sets_defaults_and_command_line_wins(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text('lr: 0.5\nepochs: 3\ndrop-path: 0.1\nmodel_ema: true\nscale: [0.5, 1.0]\n')
    args = train.parse_args(train.build_parser(), ['root', '--config', str(config), '--epochs', '7'])
    assert (args.lr, args.epochs, args.drop_path, args.model_ema, args.scale) == (0.5, 7, 0.1, True, [0.5, 1.0])
    assert args.model == 'van_b0'


@pytest.mark.parametrize('name', sorted(p.name for p in (REPO / 'configs').glob('*.yaml')))
def test_every_shipped_config_parses(name):
    args = train.parse_args(train.build_parser(), ['root', '--config', str(REPO / 'configs' / name)])
    assert args.model in name or name.startswith('demo')


@pytest.mark.scripts
def test_focal_model_trains_across_epochs(data, tmp_path):
    """Validation between epochs runs under inference_mode; the next epoch must still train."""
    run('train.py', data, *TINY_RUN, '--model', 'focalv2_tiny_useconv_patch4_window7_224', '--epochs', '2',
        '--model-kwargs', 'embed_dim=16', 'depths=(1,1,1,1)', 'num_heads=(1,1,1,1)', '--output', tmp_path,
        '--experiment', 'focal')
    assert load(tmp_path / 'focal' / 'last.pth.tar')['epoch'] == 1
