"""Bad checkpoints give one clear error naming the file and what to do."""
import pytest
import timm
import torch

import van_focal
from van_focal import CheckpointError
from conftest import golden

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
    assert_one_clear_line(error, str(PATH), 'does not fit VAN', 'missing', 'of other shape')
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
