"""The checkpoint carries its run: resume restores the settings, validate.py needs nothing but the checkpoint;
runs that would train nothing or stay in warmup say so. All in-process on a tiny drawn dataset."""
import json
import logging
import sys

import pytest
import torch

from scripts import REPO, TINY_DATA, error_of, load

sys.path.insert(0, str(REPO))
import train  # noqa: E402
import validate  # noqa: E402

from van_focal.train import run_info  # noqa: E402
from van_focal.cli.args import given_flags  # noqa: E402

# Not TINY_RUN: these runs set their own size and batch, which resume and validate must find in the checkpoint.
RUN = ['--model', 'van_b0', '--workers', '0', '--lr', '1e-3', '--warmup-epochs', '0', '--log-interval', '1',
       '--device', 'cpu']


def main_output(main, argv, capsys) -> str:
    """Run a script's main in-process; its stdout + stderr (log lines)."""
    main([str(a) for a in argv])
    captured = capsys.readouterr()
    return captured.out + captured.err




@pytest.fixture(scope='module')
def run_48(data, tmp_path_factory):
    """One epoch at 48 px, batch 8: the settings a resume and validate.py must take from the checkpoint."""
    out = tmp_path_factory.mktemp('runs')
    train.main([str(a) for a in [data, *RUN, '--epochs', '1', '--img-size', '48', '-b', '8', '--output', out,
                                 '--experiment', 'run']])
    return out / 'run'


@pytest.mark.scripts
def test_checkpoint_carries_model_size_preprocessing_and_class_names(run_48):
    args = load(run_48 / 'last.pth.tar')['args']
    assert (args.model, args.num_classes, args.img_size, args.batch_size) == ('van_b0', 3, 48, 8)
    assert args.class_names == list(TINY_DATA['classes'])
    assert args.data_config['input_size'] == (3, 48, 48) and args.data_config['crop_pct'] == 0.9
    assert args.data_config['interpolation'] == 'bicubic' and len(args.data_config['mean']) == 3


@pytest.mark.scripts
def test_resume_inside_epoch_0_says_one_consistent_thing_and_the_log_has_the_run_eta(data, run_48, tmp_path,
                                                                                      capsys):
    # what a stop after batch 2 of epoch 0 leaves: `epoch` is the last completed one (-1), the saver says where
    state = load(run_48 / 'last.pth.tar')
    state['epoch'] = -1
    state['saver']['position'] = dict(epoch=0, batches_done=2, batch_size=8, world_size=1, loss_sum=17.0, loss_count=16)
    stopped = tmp_path / 'last.pth.tar'
    torch.save(state, stopped)
    log = main_output(train.main, [data, '--resume', stopped, '--epochs', '2', '--device', 'cpu', '--workers', '0'],
                      capsys)
    assert 'epoch -1' not in log  # timm's "Loaded checkpoint ... (epoch -1)"
    assert f'Restored the model and optimizer from {stopped}: continuing with epoch 0.' in log
    assert 'Continuing epoch 0 after batch 2 of 3.' in log
    train_lines = [line for line in log.splitlines() if line.startswith('Train: ')]
    assert len(train_lines) >= 2 and all(', run ' in line for line in train_lines)  # the whole run's time left
    assert 'Epoch 0 took ' in log


@pytest.mark.scripts
def test_resume_restores_the_settings_and_names_what_the_command_line_changed(data, run_48, tmp_path, capsys):
    checkpoint = tmp_path / 'last.pth.tar'
    checkpoint.write_bytes((run_48 / 'last.pth.tar').read_bytes())
    log = main_output(train.main, [data, '--epochs', '2', '--device', 'cpu', '--workers', '0', '--log-interval', '1',
                                   '--resume', checkpoint], capsys)
    assert 'except: --epochs 2 (was 1)' in log
    assert 'Training epochs 1..1, 3 updates each' in log  # batch 8 of 24 images, not the default 128
    args = load(checkpoint)['args']
    assert (args.img_size, args.batch_size, args.epochs) == (48, 8, 2)
    log = main_output(train.main, [data, '--device', 'cpu', '--workers', '0', '--resume', checkpoint], capsys)
    assert 'Nothing to train: the run has finished its 2 epochs. Pass --epochs N (more than 2)' in log


def test_command_line_overrides_are_reported(caplog):
    args = train.build_parser().parse_args(['root', '--epochs', '2', '-b', '12'])
    saved = dict(vars(train.build_parser().parse_args(['root', '--epochs', '1', '-b', '8', '--img-size', '48'])),
                 device='npu', data='/elsewhere', class_names=['a'])
    with caplog.at_level(logging.INFO):
        changed = run_info.restore_run_settings(args, saved, {'data', 'epochs', 'batch_size'}, 'RUN')
    assert sorted(changed) == ['--batch-size 12 (was 8)', '--epochs 2 (was 1)'] and '--epochs 2 (was 1)' in caplog.text
    assert (args.img_size, args.epochs, args.batch_size, args.data, args.device) == (48, 2, 12, 'root', None)


@pytest.mark.scripts
def test_validate_from_the_checkpoint_alone(data, run_48, tmp_path, capsys):
    results = tmp_path / 'alone.json'
    main_output(validate.main, [data, '--checkpoint', run_48 / 'last.pth.tar', '--device', 'cpu', '--workers', '0',
                                '--results-file', results], capsys)
    alone = json.loads(results.read_text())
    assert (alone['model'], alone['img_size'], alone['crop_pct'], alone['images']) == ('van_b0', 48, 0.9, 12)
    explicit = tmp_path / 'explicit.json'
    main_output(validate.main, [data, '--checkpoint', run_48 / 'last.pth.tar', '--model', 'van_b0', '--img-size', '48',
                                '--num-classes', '3', '--device', 'cpu', '--workers', '0', '--results-file', explicit],
                capsys)
    assert json.loads(explicit.read_text())['top1'] == alone['top1']
    # A flag still overrides the checkpoint.
    main_output(validate.main, [data, '--checkpoint', run_48 / 'last.pth.tar', '--img-size', '32', '--device', 'cpu',
                                '--workers', '0', '--results-file', results], capsys)
    assert json.loads(results.read_text())['img_size'] == 32


@pytest.mark.scripts
def test_validate_needs_weights_unless_asked_for_random_ones(data, tmp_path, capsys):
    err = error_of(validate.main, [data, '--device', 'cpu'], capsys)
    assert 'no weights to evaluate' in err and '--checkpoint' in err and '--random-weights' in err
    results = tmp_path / 'random.json'
    main_output(validate.main, [data, '--random-weights', '--img-size', '32', '--device', 'cpu', '--workers', '0',
                                '--results-file', results], capsys)
    assert json.loads(results.read_text())['images'] == 12


@pytest.mark.scripts
def test_epoch_without_updates_is_an_error(data, tmp_path, capsys):
    err = error_of(train.main, [data, *RUN, '--epochs', '2', '--img-size', '32', '--output', tmp_path], capsys)
    assert '--batch-size 128 is more than the 24 training images' in err and '0 updates' in err
    assert 'Use -b 24 or less' in err
    assert not list(tmp_path.rglob('*.pth.tar'))


@pytest.mark.scripts
def test_short_run_warns_of_its_warmup_and_class_map_names_the_classes(data, tmp_path, capsys):
    class_map = tmp_path / 'classes.txt'
    class_map.write_text('triangle\ncircle\nsquare\n')
    log = main_output(train.main, [data, *RUN, '--epochs', '1', '--img-size', '32', '-b', '8', '--warmup-epochs', '5',
                                   '--class-map', class_map, '--output', tmp_path, '--experiment', 'mapped'], capsys)
    assert '--warmup-epochs 5 covers the whole run (1 epochs)' in log and 'lower --warmup-epochs' in log
    assert load(tmp_path / 'mapped' / 'last.pth.tar')['args'].class_names == ['triangle', 'circle', 'square']


def test_given_flags_sees_the_command_line_and_the_config(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text('lr: 0.5\n')
    parser = train.build_parser()
    assert given_flags(parser, ['root', '-b', '8', '--config', str(config)]) == {'data', 'batch_size', 'config', 'lr'}
    assert parser.parse_args(['root']).batch_size == 128  # the parser's defaults are back
