"""One clear message per mistake: exit status 2, the file, flag or key named with what to do, no traceback.

- train.py / validate.py mistakes, most run in-process (fast), a few through the command line to show
  the whole path;
- issue #15's mistakes (or, for a grayscale --input-size, a run that works) and the smaller
  inconsistencies: float noise, the help's metavar, benchmark's peak memory;
- bad checkpoints: one clear error naming the file and what to do.
"""
import json
import shutil
import sys
from fractions import Fraction

import pytest
import timm
import torch

from conftest import golden
from scripts import REPO, TINY_RUN, error_of, fails, load, run, train_fails

sys.path.insert(0, str(REPO))
import benchmark  # noqa: E402
import train  # noqa: E402
import validate  # noqa: E402
import van_focal  # noqa: E402
from van_focal.cli import args as cli_args  # noqa: E402
from van_focal.cli.args import check_model_name, close_model_names, parse_args  # noqa: E402
from van_focal.core import device as devices  # noqa: E402
from van_focal.core.errors import CheckpointError, UsageError  # noqa: E402


# ---------------------------------------------------------------------------------------------
# train.py / validate.py mistakes
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def trained(data, tmp_path_factory):
    """A run folder after one epoch."""
    out = tmp_path_factory.mktemp('runs')
    run('train.py', data, *TINY_RUN, '--epochs', '1', '--output', out, '--experiment', 'run')
    return out / 'run'


@pytest.mark.scripts
def test_missing_data_root(tmp_path, capsys, monkeypatch):
    assert f'data root {tmp_path}/nope: no such folder' in train_fails([tmp_path / 'nope'], capsys, monkeypatch)


@pytest.mark.scripts
def test_missing_split(data, capsys, monkeypatch):
    err = train_fails([data, '--val-split', 'test'], capsys, monkeypatch)
    assert 'has no test/ folder' in err and '--val-split' in err


@pytest.mark.scripts
def test_empty_class_folder(data, tmp_path, capsys, monkeypatch):
    root = tmp_path / 'data'
    shutil.copytree(data, root)
    (root / 'train' / 'zebra').mkdir()
    assert f'{root}/train/zebra: empty class folder' in train_fails([root], capsys, monkeypatch)


def _truncate_one_image(data, root):
    shutil.copytree(data, root)
    bad = root / 'train' / 'square' / '00003.jpg'
    bad.write_bytes(bad.read_bytes()[:300])
    return bad


@pytest.mark.scripts
def test_corrupt_image_stops_naming_the_file(data, tmp_path, capsys, monkeypatch):
    bad = _truncate_one_image(data, tmp_path / 'data')
    err = train_fails([tmp_path / 'data', '--workers', '1'], capsys, monkeypatch)  # raised in a loader worker
    assert f'{bad}: cannot decode this image' in err and '--skip-bad-images' in err


@pytest.mark.scripts
def test_skip_bad_images_goes_on_and_counts(data, tmp_path, caplog):
    _truncate_one_image(data, tmp_path / 'data')
    result = run('train.py', tmp_path / 'data', *TINY_RUN, '--epochs', '1', '--skip-bad-images', '--output', tmp_path)
    assert 'Epoch 0: skipped 1 unreadable images' in result.stderr


@pytest.mark.scripts
def test_unknown_model_suggests_close_names(data, capsys, monkeypatch):
    err = train_fails([data, '--model', 'van_b9'], capsys, monkeypatch)
    assert '--model van_b9: no such model' in err and 'van_b2' in err


@pytest.mark.scripts
@pytest.mark.parametrize('text, expected', [
    ('lr: 0.1\nwarmup_epoch: 3\n', "unknown key 'warmup_epoch'. Did you mean warmup_epochs"),
    ('epochs: many\n', "key 'epochs' must be int, got 'many'"),
    ('model_ema: 1\n', "key 'model_ema' must be true or false"),
    ('clip_mode: sideways\n', "key 'clip_mode' must be one of"),
])
def test_config_mistakes(data, tmp_path, text, expected, capsys, monkeypatch):
    config = tmp_path / 'bad.yaml'
    config.write_text(text)
    err = train_fails([data, '--config', config], capsys, monkeypatch)
    assert f'{config}: ' in err and expected in err


@pytest.mark.scripts
def test_truncated_checkpoint_for_resume_and_validate(data, trained, tmp_path, capsys, monkeypatch):
    broken = tmp_path / 'broken.pth.tar'
    broken.write_bytes((trained / 'last.pth.tar').read_bytes()[:5000])
    err = train_fails([data, '--resume', broken], capsys, monkeypatch, epochs=2)
    assert f'{broken} is truncated or not a PyTorch checkpoint' in err
    err = fails(validate.main, [data, '--model', 'van_b0', '--checkpoint', broken, '--device', 'cpu'], capsys, monkeypatch)
    assert f'{broken} is truncated or not a PyTorch checkpoint' in err


@pytest.mark.scripts
def test_checkpoint_of_another_model(data, trained, capsys, monkeypatch):
    err = fails(validate.main, [data, '--model', 'van_b1', '--checkpoint', trained / 'last.pth.tar', '--device', 'cpu'],
                capsys, monkeypatch)
    assert 'does not fit' in err and 'of other shape' in err


@pytest.mark.scripts
def test_pickled_objects_need_the_trust_flag(data, trained, tmp_path, capsys, monkeypatch):
    checkpoint = load(trained / 'last.pth.tar')
    checkpoint['extra'] = Fraction(1, 3)  # harmless, but not a type weights_only loading accepts
    risky = tmp_path / 'risky.pth.tar'
    torch.save(checkpoint, risky)
    argv = [data, '--model', 'van_b0', '--img-size', '32', '--checkpoint', risky, '--device', 'cpu', '--workers', '0']
    err = fails(validate.main, argv, capsys, monkeypatch)
    assert f'{risky} holds pickled Python objects (fractions.Fraction)' in err and '--trust-checkpoint' in err
    monkeypatch.setattr(sys, 'argv', ['validate.py'] + [str(a) for a in argv] + ['--trust-checkpoint'])
    validate.main()
    assert 'top-1' in capsys.readouterr().out


@pytest.mark.scripts
@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_cuda_unavailable(data, capsys, monkeypatch):
    err = train_fails([data, '--device', 'cuda'], capsys, monkeypatch)
    assert '--device cuda: no CUDA GPU is visible' in err


@pytest.mark.scripts
def test_npu_without_torch_npu(data, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch_npu', None)  # as if not installed
    err = train_fails([data, '--device', 'npu'], capsys, monkeypatch)
    assert '--device npu needs torch_npu' in err and 'CANN' in err


@pytest.mark.scripts
def test_non_finite_loss_stops_and_keeps_the_checkpoint(data, trained, capsys, monkeypatch):
    last = trained / 'last.pth.tar'
    before = last.read_bytes()
    err = train_fails([data, '--resume', last, '--no-resume-opt', '--opt', 'sgd', '--lr', '1e38', '--smoothing', '0'], capsys, monkeypatch,
                      epochs=3)
    assert 'at epoch 1, step' in err and 'training diverged' in err and 'untouched' in err
    assert last.read_bytes() == before


@pytest.mark.scripts
def test_command_line_shows_one_message(tmp_path):
    result = run('validate.py', tmp_path / 'nope', '--model', 'van_b0', '--device', 'cpu', check=False)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f'error: data root {tmp_path}/nope: no such folder')


# ---------------------------------------------------------------------------------------------
# issue #15's mistakes and smaller inconsistencies
# ---------------------------------------------------------------------------------------------

VALIDATE = ['--device', 'cpu', '--workers', '0']




@pytest.mark.scripts
def test_validate_missing_split(data, capsys):
    err = error_of(validate.main, [data, '--split', 'test', '--random-weights', *VALIDATE], capsys)
    assert f'data root {data} has no test/ folder (it has: train, val)' in err and '--split' in err


@pytest.mark.parametrize('text, expected', [
    ('scale: 0.5\n', "key 'scale' takes 2 values, got 0.5. Write a list, e.g. scale: [0.08, 1.0]"),
    ('learning_rate: 0.1\n', "unknown key 'learning_rate'. Did you mean lr?"),
    ('drop_path_rate: 0.1\n', "unknown key 'drop_path_rate'. Did you mean drop_path?"),
])
def test_config_value_mistakes(tmp_path, text, expected):
    config = tmp_path / 'c.yaml'
    config.write_text(text)
    with pytest.raises(Exception) as error:
        parse_args(train.build_parser(), ['root', '--config', str(config)])
    assert str(error.value).startswith(f'{config}: ') and expected in str(error.value)


@pytest.mark.scripts
def test_grayscale_input_size_trains_and_validates(data, tmp_path, capsys):
    train.main([str(a) for a in [data, *TINY_RUN, '--epochs', '1', '--input-size', '1', '32', '32',
                                 '--output', tmp_path, '--experiment', 'gray']])
    results = tmp_path / 'gray.json'
    validate.main([str(a) for a in [data, '--checkpoint', tmp_path / 'gray' / 'last.pth.tar', *VALIDATE,
                                    '--results-file', results]])
    assert json.loads(results.read_text())['images'] == 12
    err = error_of(validate.main, [data, '--random-weights', '--input-size', '2', '32', '32', *VALIDATE], capsys)
    assert 'image files give 1 (grayscale) or 3 (RGB) channels, not 2' in err


@pytest.mark.scripts
def test_image_passed_as_checkpoint_is_not_a_checkpoint(data, capsys):
    image = data / 'val' / 'circle' / '00000.jpg'
    err = error_of(validate.main, [data, '--checkpoint', image, *VALIDATE], capsys)
    assert f'{image} is not a PyTorch checkpoint' in err
    assert 'pickled' not in err and '--trust-checkpoint' not in err


@pytest.mark.scripts
def test_class_count_mismatch_advises_num_classes(data, checkpoint, capsys):
    err = error_of(validate.main, [data, '--checkpoint', checkpoint, '--num-classes', '6', *VALIDATE], capsys)
    assert 'It has 3 classes, the model 6: pass --num-classes 3' in err and 'another model' not in err


@pytest.mark.scripts
def test_data_with_classes_the_checkpoint_lacks(data, checkpoint, tmp_path, capsys):
    (tmp_path / 'val' / 'star').mkdir(parents=True)
    for name in ('circle', 'square', 'triangle'):
        (tmp_path / 'val' / name).symlink_to(data / 'val' / name)
    (tmp_path / 'val' / 'star' / '0.jpg').write_bytes((data / 'val' / 'circle' / '00000.jpg').read_bytes())
    err = error_of(validate.main, [tmp_path, '--checkpoint', checkpoint, *VALIDATE], capsys)
    assert 'star' in err


@pytest.mark.scripts
def test_metrics_carry_no_float_noise(data, checkpoint, tmp_path):
    results = tmp_path / 'r.json'
    validate.main([str(a) for a in [data, '--checkpoint', checkpoint, *VALIDATE, '--results-file', results]])
    text = results.read_text()
    top1 = json.loads(text)['top1']
    assert top1 == round(top1, 3) and len(repr(top1)) <= 7, text


def test_help_shows_c_h_w_once():
    for parser in (train.build_parser(), validate.build_parser()):
        text = parser.format_help()
        assert '--input-size C H W' in text and 'C H W C H W' not in text


def test_benchmark_peak_memory_is_each_models_own():
    """Measured after a larger model, a small one reports its own peak, not what the larger one left resident."""
    args = benchmark.build_parser().parse_args(['--bench', 'infer', '--img-size', '64', '-b', '1', '--warmup', '0',
                                                '--iters', '1', '--repeats', '1', '--device', 'cpu', '--threads', '1'])
    (large,), (small,) = (benchmark.bench_isolated(name, ['infer'], args) for name in ('van_b2', 'van_b0'))
    assert small['model'] == 'van_b0' and small['peak_memory_mb'] < large['peak_memory_mb'] - 30, (large, small)


# ---------------------------------------------------------------------------------------------
# issue #22: messages that were almost right
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('typed, first', [
    ('van_bo', ['van_b0']),  # the letter o for the digit 0
    ('van_bl', ['van_b1']),
    ('VAN_B0', ['van_b0']),
    ('van-b2', ['van_b2']),
    ('van_b9', ['van_b0', 'van_b1', 'van_b2']),  # equally close: in order, not reversed
    ('focal_tiny', ['focal_tiny_patch4_window7_224', 'focal_tiny_useconv_patch4_window7_224']),  # completions first
    ('focalv2_tiny', ['focalv2_tiny_useconv_patch4_window7_224']),
])
def test_close_model_names(typed, first):
    assert close_model_names(typed)[:len(first)] == first


def test_unknown_model_suggests_van_b0_for_van_bo():
    with pytest.raises(UsageError) as error:
        check_model_name('van_bo')
    assert str(error.value).startswith('--model van_bo: no such model. Close names: van_b0, ')


def test_config_reports_every_problem_at_once(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text('lr: 0.1\nwarmup_epoch: 3\nlearning_rat: 0.1\nepochs: many\nmodel: van_b0\n')
    with pytest.raises(UsageError) as error:
        parse_args(train.build_parser(), ['root', '--config', str(config)])
    assert str(error.value) == (f"{config}: 3 problems: unknown key 'warmup_epoch' (did you mean warmup_epochs, "
                                "start_epoch, warmup_lr?); unknown key 'learning_rat' (did you mean lr?); "
                                "key 'epochs' must be int, got 'many'.")


@pytest.mark.scripts
def test_checkpoint_of_another_model_names_the_one_it_holds(data, checkpoint, capsys):
    err = error_of(validate.main, [data, '--checkpoint', checkpoint, '--model', 'van_b1', *VALIDATE], capsys)
    assert f'{checkpoint} does not fit van_b1: ' in err
    assert 'It holds a van_b0 (the model its run trained): leave --model out' in err and '--model van_b0' in err


def test_amp_on_the_cpu_says_bfloat16(monkeypatch, caplog):
    monkeypatch.setattr(devices, '_said', set())  # said once per process: maybe already, by an earlier test
    devices.autocast(torch.device('cpu'), True, torch.float16)
    assert caplog.messages[-1].startswith('--amp on the CPU: autocast runs in bfloat16')
    devices.autocast(torch.device('cpu'), True, torch.bfloat16)  # asked for: nothing to say
    assert len(caplog.messages) == 1


@pytest.mark.scripts
def test_use_ema_without_ema_weights_warns_and_piped_progress_is_plain(data, checkpoint, capsys, caplog):
    validate.main([str(a) for a in [data, '--checkpoint', checkpoint, '--use-ema', '-b', '4', *VALIDATE]])
    assert f'--use-ema: {checkpoint} holds no EMA weights (train.py saves them with --model-ema); using its ' \
           'model weights.' in caplog.messages
    captured = capsys.readouterr()
    assert 'top-1' in captured.out
    assert '\r' not in captured.err  # stderr is no terminal here: no progress-bar frames
    progress = [line for line in captured.err.splitlines() if line.startswith('van_b0 on val: batch ')]
    assert progress[0].startswith('van_b0 on val: batch 1/3 (33 %)')
    assert progress[-1].startswith('van_b0 on val: batch 3/3 (100 %)') and 'top-1' in progress[-1]


@pytest.mark.parametrize('cores, expected', [({0}, 1), ({0, 1}, 2), (set(range(64)), 4)])
def test_default_workers_fit_the_usable_cores(monkeypatch, cores, expected):
    monkeypatch.setattr(cli_args.os, 'sched_getaffinity', lambda pid: cores, raising=False)
    assert cli_args.default_workers() == expected
    for parser in (train.build_parser(), validate.build_parser()):
        assert parser.parse_args(['root']).workers == expected


# ---------------------------------------------------------------------------------------------
# bad checkpoints
# ---------------------------------------------------------------------------------------------

PATH, KWARGS, _, _ = golden('van_tiny_cfg')
SMALL = dict(embed_dims=KWARGS['embed_dims'], depths=KWARGS['depths'], num_classes=KWARGS['num_classes'])


def create_from_file(path, **kwargs):
    return timm.create_model('van_b0', pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10),
                             **dict(SMALL, **kwargs))


def assert_one_clear_line(error, *needles):
    text = str(error.value)
    assert len(text.splitlines()) == 1 and len(text) < 600, text
    for needle in needles:
        assert needle in text, text


def test_truncated_file(tmp_path):
    bad = tmp_path / 'half.pth.tar'
    bad.write_bytes(PATH.read_bytes()[:5000])
    with pytest.raises(CheckpointError) as error:
        create_from_file(bad)
    assert_one_clear_line(error, str(bad), 'truncated')
    with pytest.raises(CheckpointError) as error:
        van_focal.load_checkpoint(timm.create_model('van_b0', **SMALL), bad)
    assert_one_clear_line(error, str(bad), 'truncated')


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / 'notes.txt'
    bad.write_text('hello')
    with pytest.raises(CheckpointError) as error:
        van_focal.load_checkpoint(timm.create_model('van_b0', **SMALL), bad)
    assert_one_clear_line(error, str(bad), 'not a PyTorch checkpoint')


def test_checkpoint_of_another_architecture():
    with pytest.raises(CheckpointError) as error:
        van_focal.load_checkpoint(timm.create_model('van_b1'), PATH)
    assert_one_clear_line(error, str(PATH), 'does not fit van_b1', 'missing', 'of other shape')
    with pytest.raises(CheckpointError) as error:
        create_from_file(PATH, embed_dims=(8, 16, 24, 40))
    assert_one_clear_line(error, str(PATH), 'does not fit van_b0', 'of other shape', 'stages.3')


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as error:
        van_focal.load_checkpoint(timm.create_model('van_b0', **SMALL), tmp_path / 'nope.pth')
    assert_one_clear_line(error, 'nope.pth', 'no such checkpoint file')


class TrainerState:
    """Some arbitrary object a training loop might pickle into its checkpoint."""


def test_pickled_objects_refused_unless_trusted(tmp_path):
    checkpoint = torch.load(PATH, weights_only=False)  # our own fixture; holds the official args Namespace
    checkpoint['trainer'] = TrainerState()  # any other pickled object is not
    risky = tmp_path / 'risky.pth.tar'
    torch.save(checkpoint, risky)
    model = timm.create_model('van_b0', **SMALL)
    with pytest.raises(CheckpointError) as error:
        van_focal.load_checkpoint(model, risky)
    assert_one_clear_line(error, str(risky), 'pickled', 'TrainerState', 'trusted=True', '--trust-checkpoint')
    van_focal.load_checkpoint(model, risky, trusted=True)


def test_unknown_model_name():
    with pytest.raises(RuntimeError, match=r'Unknown model \(van_b9\)'):
        timm.create_model('van_b9')
