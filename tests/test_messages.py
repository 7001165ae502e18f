"""Issue #15's mistakes, each one clear line with the right advice (or, for a grayscale --input-size, a run
that works); and the smaller inconsistencies: float noise, the help's metavar, benchmark's peak memory."""
import json
import sys

import pytest

from scripts import REPO, TINY_RUN, error_of

sys.path.insert(0, str(REPO))
import benchmark  # noqa: E402
import train  # noqa: E402
import validate  # noqa: E402

from van_focal.cli import parse_args  # noqa: E402

VALIDATE = ['--device', 'cpu', '--workers', '0']




def test_validate_missing_split(data, capsys):
    err = error_of(validate.main, [data, '--split', 'test', '--random-weights', *VALIDATE], capsys)
    assert f'data root {data} has no test/ folder (it has: train, val)' in err and '--split' in err


@pytest.mark.parametrize('text, expected', [
    ('scale: 0.5\n', "key 'scale' takes 2 values, got 0.5. Write a list, e.g. scale: [0.08, 1.0]"),
    ('learning_rate: 0.1\n', "unknown key 'learning_rate'. Did you mean lr?"),
    ('drop_path_rate: 0.1\n', "unknown key 'drop_path_rate'. Did you mean drop_path?"),
])
def test_config_mistakes(tmp_path, text, expected):
    config = tmp_path / 'c.yaml'
    config.write_text(text)
    with pytest.raises(Exception) as error:
        parse_args(train.build_parser(), ['root', '--config', str(config)])
    assert str(error.value).startswith(f'{config}: ') and expected in str(error.value)


def test_grayscale_input_size_trains_and_validates(data, tmp_path, capsys):
    train.main([str(a) for a in [data, *TINY_RUN, '--epochs', '1', '--input-size', '1', '32', '32',
                                 '--output', tmp_path, '--experiment', 'gray']])
    results = tmp_path / 'gray.json'
    validate.main([str(a) for a in [data, '--checkpoint', tmp_path / 'gray' / 'last.pth.tar', *VALIDATE,
                                    '--results-file', results]])
    assert json.loads(results.read_text())['images'] == 12
    err = error_of(validate.main, [data, '--random-weights', '--input-size', '2', '32', '32', *VALIDATE], capsys)
    assert 'image files give 1 (grayscale) or 3 (RGB) channels, not 2' in err


def test_image_passed_as_checkpoint_is_not_a_checkpoint(data, capsys):
    image = data / 'val' / 'circle' / '00000.jpg'
    err = error_of(validate.main, [data, '--checkpoint', image, *VALIDATE], capsys)
    assert f'{image} is not a PyTorch checkpoint' in err
    assert 'pickled' not in err and '--trust-checkpoint' not in err


def test_class_count_mismatch_advises_num_classes(data, checkpoint, capsys):
    err = error_of(validate.main, [data, '--checkpoint', checkpoint, '--num-classes', '6', *VALIDATE], capsys)
    assert 'It has 3 classes, the model 6: pass --num-classes 3' in err and 'another model' not in err


def test_data_with_classes_the_checkpoint_lacks(data, checkpoint, tmp_path, capsys):
    (tmp_path / 'val' / 'star').mkdir(parents=True)
    for name in ('circle', 'square', 'triangle'):
        (tmp_path / 'val' / name).symlink_to(data / 'val' / name)
    (tmp_path / 'val' / 'star' / '0.jpg').write_bytes((data / 'val' / 'circle' / '00000.jpg').read_bytes())
    err = error_of(validate.main, [tmp_path, '--checkpoint', checkpoint, *VALIDATE], capsys)
    assert 'star' in err


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
