"""PaddlePaddle .pdparams and MindSpore .ckpt through the scripts' doors: train.py --pretrained-path and
--initial-checkpoint, validate.py --checkpoint, `python -m van_focal.predict --checkpoint`. Each runs in-process
until its model is built with the file's weights (then stops), and that model gives the framework's logits."""
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests'))
import train  # noqa: E402
import validate  # noqa: E402
from models.test_foreign_weights import TOLERANCE, golden, max_error  # noqa: E402
from van_focal.cli import predict  # noqa: E402
from van_focal.train import run_info  # noqa: E402

pytestmark = pytest.mark.scripts
# One file of each layout (WenHao-L/VAN's, without `cell_list.`, goes through the library doors only).
LAYOUTS = ['focal_v1_paddle_cfg', 'van_mindspore_cfg', 'focalv2_mindspore_cfg']


class Built(Exception):
    """Raised right after a script built its model, to stop the run there."""


@pytest.fixture(autouse=True)
def _untimed_routes(monkeypatch):
    monkeypatch.setenv('VAN_FOCAL_ROUTES', 'default')


@pytest.fixture(scope='module')
def ten_classes(tmp_path_factory):
    """An image folder of 10 classes (the fixtures' class count), one image each, train and val."""
    root = tmp_path_factory.mktemp('ten')
    for split in ('train', 'val'):
        for c in range(10):
            (root / split / f'c{c}').mkdir(parents=True)
            Image.new('RGB', (32, 32), (25 * c, 0, 0)).save(root / split / f'c{c}' / '0.png')
    return root


def built_model(monkeypatch, module, name: str, main, argv):
    """The model `module.name(...)` returns while `main(argv)` runs, which is stopped there."""
    original, built = getattr(module, name), []

    def capture(*args, **kwargs):
        built.append(original(*args, **kwargs))
        raise Built

    with monkeypatch.context() as patched, pytest.raises(Built):
        patched.setattr(module, name, capture)
        main([str(a) for a in argv])
    return built[0]


def model_args(model_name, kwargs):
    return ['--model', model_name, '--model-kwargs', *[f'{k}={v}' for k, v in kwargs.items() if k != 'num_classes'],
            '--num-classes', kwargs['num_classes']]


@pytest.mark.parametrize('name', LAYOUTS)
def test_train_doors(name, ten_classes, tmp_path, monkeypatch):
    path, model_name, kwargs, x, logits = golden(name)
    common = [ten_classes, *model_args(model_name, kwargs), '--device', 'cpu', '--workers', '0', '--output', tmp_path]
    for door in ('--initial-checkpoint', '--pretrained-path'):
        model = built_model(monkeypatch, train, 'create_model', train.main, [*common, door, path])
        assert max_error(model, x, logits) < TOLERANCE, door


@pytest.mark.parametrize('name', LAYOUTS)
def test_validate_and_predict_doors(name, ten_classes, monkeypatch):
    path, model_name, kwargs, x, logits = golden(name)
    argv = [ten_classes / 'val', '--checkpoint', path, *model_args(model_name, kwargs), '--device', 'cpu',
            '--workers', '0']
    model = built_model(monkeypatch, run_info, 'rebuild_model', validate.main, argv)
    assert max_error(model, x, logits) < TOLERANCE
    argv[0] = ten_classes / 'val' / 'c3'
    model = built_model(monkeypatch, run_info, 'rebuild_model', predict.main, argv)
    assert max_error(model, x, logits) < TOLERANCE


@pytest.mark.parametrize('config, model', [('van_b2_mindspore.yaml', 'van_b2'),
                                           ('focalv2_small_useconv_patch4_window7_224_mindspore.yaml', 'focalv2_small_useconv_patch4_window7_224')])
def test_mindspore_recipes_parse(config, model):
    """The two ports' recipes as train.py configs, building their model with tanh-GELU."""
    from van_focal.cli.args import parse_args
    args = parse_args(train.build_parser(), ['--config', str(REPO / 'configs' / config), '/data'])
    assert args.model == model and args.model_kwargs == {'act_layer': 'gelu_tanh'}
    header = (REPO / 'configs' / config).read_text().split('\nmodel:')[0]
    assert 'top-1 83.0' in header or 'top-1 83.30' in header
