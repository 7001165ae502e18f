"""Reading PaddlePaddle .pdparams and MindSpore .ckpt files without their frameworks (core.foreign_checkpoints):
formats recognised from contents, Paddle's Linear weights transposed, MindSpore's normalisation names, and one
line for a hostile pickle, an optimizer-only file, a truncated file. The fixtures were written by the frameworks
themselves (tests/fixtures/make_golden_foreign.py)."""
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import timm

import van_focal  # noqa: F401  (timm's reader reads these formats once van_focal is imported)
from van_focal.core.checkpoint import read_checkpoint_file
from van_focal.core.errors import CheckpointError
from van_focal.core.foreign_checkpoints import (
    PADDLE_NAMES_KEY, mindspore_checkpoint_message, read_foreign_checkpoint, read_mindspore, read_paddle, sniff)

FIXTURES = Path(__file__).parents[1] / 'fixtures'
PADDLE = FIXTURES / 'focal_v1_paddle_cfg.pdparams'
MINDSPORE_VAN = FIXTURES / 'van_mindspore_cfg.ckpt'
MINDSPORE_FOCAL = FIXTURES / 'focalv2_mindspore_cfg.ckpt'


def raw_paddle() -> dict:
    with open(PADDLE, 'rb') as f:
        return pickle.load(f)  # our own fixture: numpy arrays and str dicts only


def one_line(error, *needles):
    text = str(error.value)
    assert len(text.splitlines()) == 1 and len(text) < 400, text
    for needle in needles:
        assert needle in text, text


def test_formats_recognised_from_contents(tmp_path):
    renamed = tmp_path / 'weights.bin'
    renamed.write_bytes(PADDLE.read_bytes())
    assert sniff(str(renamed)) == 'paddle'
    assert sniff(str(MINDSPORE_VAN)) == 'mindspore'
    for fmt in (True, False):  # torch.save, zip and legacy: torch.load's
        path = tmp_path / f'torch_{fmt}.pth'
        torch.save({'w': torch.ones(2)}, path, _use_new_zipfile_serialization=fmt)
        assert sniff(str(path)) is None and read_foreign_checkpoint(path) is None
    from safetensors.torch import save_file
    save_file({'w': torch.ones(2)}, str(tmp_path / 'w.safetensors'))
    assert sniff(str(tmp_path / 'w.safetensors')) is None


def test_paddle_linear_weights_transposed_tables_not():
    raw, state_dict = raw_paddle(), read_paddle(str(PADDLE))
    assert PADDLE_NAMES_KEY not in state_dict and set(state_dict) == set(raw) - {PADDLE_NAMES_KEY}
    for key in ('layers.0.blocks.0.attn.qkv.weight', 'layers.0.blocks.0.attn.proj.weight', 'head.weight',
                'layers.0.blocks.0.pool_layers.0.weight'):
        assert raw[PADDLE_NAMES_KEY][key].startswith('linear_')
        torch.testing.assert_close(state_dict[key], torch.from_numpy(raw[key].T.copy()), rtol=0, atol=0)
    for key in ('layers.0.blocks.0.attn.relative_position_bias_table',
                'layers.0.blocks.0.attn.relative_position_bias_table_to_windows.0', 'patch_embed.proj.weight'):
        torch.testing.assert_close(state_dict[key], torch.from_numpy(raw[key]), rtol=0, atol=0)


def test_paddle_pickle_of_numpy_1(tmp_path):
    """Files written with numpy 1.x (PaddleViT's, 2021) name `numpy.core.multiarray`, numpy 2's `numpy._core`."""
    arrays = {'fc.weight': np.arange(6, dtype=np.float32).reshape(2, 3), PADDLE_NAMES_KEY: {'fc.weight': 'linear_0.w_0'}}
    data = pickle.dumps(arrays, protocol=2).replace(b'numpy._core.multiarray\n', b'numpy.core.multiarray\n')
    assert b'numpy.core.multiarray\n' in data
    path = tmp_path / 'old.pdparams'
    path.write_bytes(data)
    torch.testing.assert_close(read_paddle(str(path))['fc.weight'], torch.arange(6.).view(2, 3).t())


class Hostile:
    def __reduce__(self):
        return os.system, ('touch PWNED',)


def test_hostile_pickle_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / 'evil.pdparams'
    path.write_bytes(pickle.dumps({'w': np.zeros(2, np.float32), 'x': Hostile()}, protocol=2))
    with pytest.raises(CheckpointError) as error:
        read_checkpoint_file(str(path))
    one_line(error, str(path), 'system', 'not read')
    assert not (tmp_path / 'PWNED').exists()


def test_object_array_refused(tmp_path):
    path = tmp_path / 'objects.pdparams'
    path.write_bytes(pickle.dumps({'w': np.array([{'a': 1}, [2]], dtype=object)}, protocol=4))
    with pytest.raises(CheckpointError) as error:
        read_checkpoint_file(str(path))
    one_line(error, str(path), 'not of numbers')


def test_paddle_optimizer_file(tmp_path, caplog):
    raw = raw_paddle()
    moments = {'linear_0.w_0_moment1_0': np.zeros((49, 1), np.float32), 'linear_0.w_0_beta1_pow_acc_0': np.ones(1, np.float32),
               'LR_Scheduler': {'last_epoch': 3, 'last_lr': 0.001}}
    only = tmp_path / 'model.pdopt'
    only.write_bytes(pickle.dumps(dict(moments, **{PADDLE_NAMES_KEY: {}}), protocol=4))
    with pytest.raises(CheckpointError) as error:
        read_foreign_checkpoint(only)
    one_line(error, str(only), 'optimizer state', '.pdparams')
    both = tmp_path / 'both.pdparams'
    both.write_bytes(pickle.dumps(dict(raw, **moments), protocol=4))
    with caplog.at_level(logging.WARNING):
        state_dict = read_foreign_checkpoint(both)
    assert set(state_dict) == set(raw) - {PADDLE_NAMES_KEY}
    assert 'weights only; 3 optimizer entries left out' in caplog.text


@pytest.mark.parametrize('path', [PADDLE, MINDSPORE_VAN])
def test_truncated_file_one_line(path, tmp_path):
    cut = tmp_path / path.name
    cut.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(CheckpointError) as error:
        read_checkpoint_file(str(cut))
    one_line(error, str(cut), 'truncated')


def test_mindspore_names_and_values():
    state_dict = read_mindspore(str(MINDSPORE_VAN))
    message = mindspore_checkpoint_message()()
    message.ParseFromString(MINDSPORE_VAN.read_bytes())
    stored = {v.tag: v.tensor for v in message.value}
    assert not any(k.endswith(('gamma', 'beta', 'moving_mean', 'moving_variance')) for k in state_dict)
    bn = 'cell_list.1.0.norm1'
    for ours, theirs in (('weight', 'gamma'), ('bias', 'beta'), ('running_mean', 'moving_mean'),
                         ('running_var', 'moving_variance')):
        tensor = stored[f'{bn}.{theirs}']
        expected = np.frombuffer(tensor.tensor_content, np.float32).reshape(list(tensor.dims))
        torch.testing.assert_close(state_dict[f'{bn}.{ours}'], torch.from_numpy(expected.copy()), rtol=0, atol=0)
    assert state_dict[f'{bn}.num_batches_tracked'].item() == 0
    assert state_dict['cell_list.2.weight'].shape == (8,)  # a LayerNorm's gamma
    tables = read_mindspore(str(MINDSPORE_FOCAL))
    assert tables['0.blocks.0.attn.topk_cloest_indice_param_0'].dtype == torch.int32


def _write(path: Path, values, base: Path = None) -> Path:
    """A MindSpore checkpoint of `base`'s values (if given) and (tag, array) values, as MindSpore writes them."""
    message = mindspore_checkpoint_message()()
    if base is not None:
        message.ParseFromString(base.read_bytes())
    for tag, array in values:
        value = message.value.add(tag=tag)
        value.tensor.dims.extend(array.shape)
        value.tensor.tensor_type = {np.float32: 'Float32', np.int32: 'Int32'}[array.dtype.type]
        value.tensor.tensor_content = array.tobytes()
    path.write_bytes(message.SerializeToString())
    return path


# What MindSpore's training cells save beside the weights (nn.Adam: moment1/2; AdamWeightDecay: adam_m/v).
OPTIMIZER = [('moment1.cell_list.0.proj.weight', np.zeros((8, 3, 7, 7), np.float32)),
             ('adam_v.head.weight', np.zeros((10, 32), np.float32)), ('global_step', np.zeros(1, np.int32)),
             ('learning_rate', np.ones(1, np.float32))]


def test_mindspore_optimizer_state_left_out(tmp_path, caplog):
    path = _write(tmp_path / 'train.ckpt', OPTIMIZER, base=MINDSPORE_VAN)
    with caplog.at_level(logging.WARNING):
        state_dict = read_checkpoint_file(str(path))
    assert set(state_dict) == set(read_mindspore(str(MINDSPORE_VAN)))
    assert 'weights only; 4 optimizer / training-state entries left out' in caplog.text
    only = _write(tmp_path / 'only.ckpt', OPTIMIZER)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint_file(str(only))
    one_line(error, str(only), 'optimizer state', 'no model weights')


def test_mindspore_split_tensor_joined(tmp_path):
    """MindSpore writes a large tensor as several values with the same tag: their contents are joined."""
    message = mindspore_checkpoint_message()()
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    for part in (array.tobytes()[:20], array.tobytes()[20:]):
        value = message.value.add(tag='head.weight')
        value.tensor.dims.extend(array.shape)
        value.tensor.tensor_type = 'Float32'
        value.tensor.tensor_content = part
    path = tmp_path / 'split.ckpt'
    path.write_bytes(message.SerializeToString())
    torch.testing.assert_close(read_checkpoint_file(str(path))['head.weight'], torch.from_numpy(array))


def test_timm_reader_reads_them():
    """timm's own reader (behind timm.models.load_checkpoint and pretrained_cfg_overlay=dict(file=...))."""
    state_dict = timm.models.load_state_dict(str(MINDSPORE_VAN))
    assert 'cell_list.0.proj.weight' in state_dict
    torch.testing.assert_close(timm.models.load_state_dict(str(PADDLE))['head.weight'], read_paddle(str(PADDLE))['head.weight'])
