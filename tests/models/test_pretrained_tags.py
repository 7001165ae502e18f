"""A pretrained tag for every published weight, and one clear line when its address cannot serve it."""
import functools
import http.server
import threading

import pytest
import timm

import van_focal  # noqa: F401
from van_focal.core.errors import CheckpointError
from offline_hub import offline_hub  # noqa: F401  (fixture)
from scripts import make_tiny_dataset, run

TINY_VAN = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
TINY_FOCAL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))

# tag -> (where the file lives, its file name, published top-1)
VAN_TAGS = {
    'van_b0.in1k': ('hf:Visual-Attention-Network/VAN-Tiny-original', 'van_tiny_754.pth.tar', '75.4'),
    'van_b1.in1k': ('hf:Visual-Attention-Network/VAN-Small-original', 'van_small_811.pth.tar', '81.1'),
    'van_b2.in1k': ('hf:Visual-Attention-Network/VAN-Base-original', 'van_base_828.pth.tar', '82.8'),
    'van_b3.in1k': ('hf:Visual-Attention-Network/VAN-Large-original', 'van_large_839.pth.tar', '83.9'),
    'van_b0.hf_in1k': ('hf:Visual-Attention-Network/van-tiny', 'pytorch_model.bin', '75.4'),
    'van_b1.hf_in1k': ('hf:Visual-Attention-Network/van-small', 'pytorch_model.bin', '81.1'),
    'van_b2.hf_in1k': ('hf:Visual-Attention-Network/van-base', 'pytorch_model.bin', '82.8'),
    'van_b3.hf_in1k': ('hf:Visual-Attention-Network/van-large', 'pytorch_model.bin', '83.9'),
    'van_b0.mmcls_in1k': ('openmmlab', 'van-tiny_8xb128_in1k_20220501-385941af.pth', '75.41'),
    'van_b1.mmcls_in1k': ('openmmlab', 'van-small_8xb128_in1k_20220501-17bc91aa.pth', '81.01'),
    'van_b2.mmcls_in1k': ('openmmlab', 'van-base_8xb128_in1k_20220501-6a4cc31b.pth', '82.80'),
    'van_b3.mmcls_in1k': ('openmmlab', 'van-large_8xb128_in1k_20220501-f212ba21.pth', '83.86'),
    'van_b4.mmcls_in1k': ('openmmlab', 'van-b4_3rdparty_in1k_20220909-f4665b92.pth', '84.13'),
    'van_b4.in22k': ('openmmlab', 'van-b4_3rdparty_in21k_20220909-db926b18.pth', None),
    'van_b5.in22k': ('openmmlab', 'van-b5_3rdparty_in21k_20220909-18e904e3.pth', None),
    'van_b6.in22k': ('openmmlab', 'van-b6_3rdparty_in21k_20220909-96c2cb3a.pth', None),
}
FOCAL_TAGS = {
    'focal_tiny_patch4_window7_224.in1k': ('focal-tiny-is224-ws7.pth', '82.2'),
    'focal_small_patch4_window7_224.in1k': ('focal-small-is224-ws7.pth', '83.6'),
    'focal_base_patch4_window7_224.in1k': ('focal-base-is224-ws7.pth', '84.0'),
    'focal_tiny_useconv_patch4_window7_224.in1k': ('focal-tiny-useconv-is224-ws7.pth', '82.7'),
    'focal_small_useconv_patch4_window7_224.in1k': ('focal-small-useconv-is224-ws7.pth', '83.8'),
    'focal_base_useconv_patch4_window7_224.in1k': ('focal-base-useconv-is224-ws7.pth', '84.2'),
    'focalv2_tiny_useconv_patch4_window7_224.in1k': ('focalv2-tiny-useconv-is224-ws7.pth', '82.4'),
    'focalv2_small_useconv_patch4_window7_224.in1k': ('focalv2-small-useconv-is224-ws7.pth', '83.6'),
    'focalv2_base_useconv_patch4_window7_224.in1k': ('focalv2-base-useconv-is224-ws7.pth', '84.0'),
}

# PaddleViT's port of the six Focal v1 models (tested in tests/models/test_foreign_weights.py).
PADDLE_TAGS = [f"{tag.split('.')[0]}.paddle_in1k" for tag in FOCAL_TAGS if not tag.startswith('focalv2')]


def test_list_pretrained_shows_every_published_weight():
    assert timm.list_pretrained('van_*') == sorted(VAN_TAGS)
    assert sorted(timm.list_pretrained('focal_*') + timm.list_pretrained('focalv2_*')) == sorted(
        list(FOCAL_TAGS) + PADDLE_TAGS)


@pytest.mark.parametrize('tag', VAN_TAGS)
def test_van_tag(tag):
    where, filename, top1 = VAN_TAGS[tag]
    cfg = timm.models.get_pretrained_cfg(tag).to_dict()
    if where.startswith('hf:'):
        assert (cfg['hf_hub_id'], cfg['hf_hub_filename']) == (where[3:], filename)
    else:
        assert cfg['url'] == 'https://download.openmmlab.com/mmclassification/v0/van/' + filename
    # every source evaluates (and the authors trained) with mean = std = 0.5, bicubic; OpenMMLab crops 224 of 248
    assert cfg['mean'] == cfg['std'] == (0.5, 0.5, 0.5) and cfg['interpolation'] == 'bicubic'
    assert cfg['crop_pct'] == pytest.approx(224 / 248 if where == 'openmmlab' else 0.9)
    assert cfg['num_classes'] == (21841 if top1 is None else 1000)
    assert (f'top-1 {top1}' in cfg['notes'][0]) if top1 else ('21841 classes' in cfg['notes'][0])


@pytest.mark.parametrize('tag', FOCAL_TAGS)
def test_focal_tag(tag):
    filename, top1 = FOCAL_TAGS[tag]
    cfg = timm.models.get_pretrained_cfg(tag).to_dict()
    assert cfg['url'] == 'https://projects4jw.blob.core.windows.net/model/focal-transformer/imagenet1k/' + filename
    assert cfg['num_classes'] == 1000 and cfg['crop_pct'] == 0.875 and f'top-1 {top1}' in cfg['notes'][0]


def test_default_tags():
    """ImageNet-1k weights are the default where they exist; b5 and b6 have only ImageNet-22k ones."""
    assert timm.create_model('van_b2', **TINY_VAN).pretrained_cfg['tag'] == 'in1k'
    assert timm.create_model('van_b4', **TINY_VAN).pretrained_cfg['tag'] == 'mmcls_in1k'
    assert timm.create_model('van_b6', **TINY_VAN).num_classes == 21841


def assert_one_line(error, *needles):
    text = str(error.value)
    assert len(text.splitlines()) == 1 and len(text) < 600, text
    for needle in needles + ('pretrained_cfg_overlay=dict(file=',):
        assert needle in text, text


@pytest.mark.parametrize('name', [n.split('.')[0] for n in FOCAL_TAGS])
def test_focal_download_says_the_address_is_gone(name, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))  # nothing cached: no request is made either
    with pytest.raises(CheckpointError) as error:
        timm.create_model(name, pretrained=True, **TINY_FOCAL)
    filename = FOCAL_TAGS[f'{name}.in1k'][0]
    assert_one_line(error, filename, 'projects4jw.blob.core.windows.net', 'no longer serves')


def test_hub_download_offline_says_unreachable(offline_hub):  # noqa: F811
    with pytest.raises(CheckpointError) as error:
        timm.create_model('van_b2.hf_in1k', pretrained=True, **TINY_VAN)
    assert_one_line(error, 'pytorch_model.bin', 'huggingface.co/Visual-Attention-Network/van-base', 'unreachable')


def test_url_download_unreachable(offline_hub):  # noqa: F811
    """A connection refused (port 9 of this machine) stands for any address without a network."""
    address = 'http://127.0.0.1:9/van-b4_3rdparty_in1k_20220909-f4665b92.pth'
    with pytest.raises(CheckpointError) as error:
        timm.create_model('van_b4.mmcls_in1k', pretrained=True, **TINY_VAN, pretrained_cfg_overlay=dict(url=address))
    assert_one_line(error, 'van-b4_3rdparty_in1k_20220909-f4665b92.pth', address, 'unreachable')


def test_url_answering_404_says_gone(offline_hub, tmp_path):  # noqa: F811
    """An address that answers but no longer holds the file (a web server on this machine, empty folder)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f'http://127.0.0.1:{server.server_port}/van-b4_3rdparty_in21k_20220909-db926b18.pth'
    try:
        with pytest.raises(CheckpointError) as error:
            timm.create_model('van_b4.in22k', pretrained=True, **TINY_VAN, pretrained_cfg_overlay=dict(url=address))
    finally:
        server.shutdown()
        server.server_close()
    assert_one_line(error, 'van-b4_3rdparty_in21k_20220909-db926b18.pth', address, 'gone (HTTP 404)')


@pytest.mark.scripts
def test_scripts_show_one_error_line(tmp_path):
    """validate.py with a gone Focal address: one `error:` line, exit status 2."""
    result = run('validate.py', make_tiny_dataset(tmp_path), '--model', 'focal_tiny_patch4_window7_224', '--pretrained',
                 '--device', 'cpu', check=False, env_extra={'TORCH_HOME': str(tmp_path)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith('error: focal_tiny_patch4_window7_224') and 'no longer serves' in lines[-1], result.stderr
