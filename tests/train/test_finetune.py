"""Fine-tuning from a local file, timm's --pretrained-path: official layouts load, the head is re-initialised
(with a log line) exactly when the class count differs."""
import logging
import sys

import pytest
import timm
import torch

from conftest import golden
from scripts import REPO, TINY_RUN, load, make_tiny_dataset
from van_focal.train import finetune

sys.path.insert(0, str(REPO))
import train  # noqa: E402

OFFICIAL, KWARGS, _, _ = golden('van_tiny_cfg')  # an official VAN checkpoint (its layout), 10 classes
SMALL = {k: v for k, v in KWARGS.items() if k != 'num_classes'}


def create(path, num_classes):
    return timm.create_model('van_b0', num_classes=num_classes, **SMALL,
                             **finetune.pretrained_path_kwargs('van_b0', str(path), num_classes))


def reference():
    model = timm.create_model('van_b0', num_classes=10, **SMALL)
    model.load_state_dict(load(OFFICIAL)['state_dict'])  # official keys are mapped on load
    return model.state_dict()


def test_official_checkpoint_with_another_class_count_gets_a_new_head(caplog):
    with caplog.at_level(logging.INFO):
        state = create(OFFICIAL, 3).state_dict()
    assert f'{OFFICIAL} has a 10-class head, the model 3 classes: the head is re-initialised' in caplog.text
    expected = reference()
    assert state['head.fc.weight'].shape == (3, 32)
    for key, value in state.items():
        if not key.startswith('head.fc'):
            assert torch.equal(value, expected[key]), key


def test_same_class_count_keeps_the_head(caplog):
    with caplog.at_level(logging.INFO):
        state = create(OFFICIAL, 10).state_dict()
    assert 're-initialised' not in caplog.text
    assert torch.equal(state['head.fc.weight'], reference()['head.fc.weight'])


@pytest.mark.scripts
def test_train_py_fine_tunes_from_a_local_official_checkpoint(tmp_path, caplog):
    data = make_tiny_dataset(tmp_path / 'data')
    kwargs = [f'{k}={tuple(v)}' for k, v in SMALL.items()]
    with caplog.at_level(logging.INFO):
        train.main([str(a) for a in [data, *TINY_RUN, '--epochs', '1', '--pretrained-path', OFFICIAL,
                                     '--model-kwargs', *kwargs, '--output', tmp_path, '--experiment', 'ft']])
    assert 'has a 10-class head, the model 3 classes: the head is re-initialised' in caplog.text
    checkpoint = load(tmp_path / 'ft' / 'last.pth.tar')
    assert checkpoint['state_dict']['head.fc.weight'].shape == (3, 32)
    assert checkpoint['args'].pretrained_path == str(OFFICIAL)


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(Exception, match='no such checkpoint file'):
        finetune.pretrained_path_kwargs('van_b0', str(tmp_path / 'nope.pth'), 3)
