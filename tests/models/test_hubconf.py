"""hubconf.py: `torch.hub.load(repo, name, ...)` builds every registered model as `timm.create_model` does,
pretrained weights and timm's keyword arguments included."""
import pytest
import timm
import torch

import van_focal  # noqa: F401
from conftest import golden, relative_error
from scripts import REPO

TINY_VAN = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
TINY_FOCAL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
ALL = {name: TINY_VAN if name.startswith('van_') else TINY_FOCAL
       for name in timm.list_models(['van_*', 'focal_*', 'focalv2_*'])}


def hub_load(name: str, **kwargs):
    return torch.hub.load(str(REPO), name, source='local', trust_repo=True, verbose=False, **kwargs)


def test_entry_points_are_the_sixteen_models():
    import importlib.util
    spec = importlib.util.spec_from_file_location('hubconf', REPO / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    # what torch.hub.list would list: the public callables
    entries = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith('_'))
    assert entries == sorted(ALL) and len(entries) == 16
    assert "timm.create_model('van_b2'" in hubconf.van_b2.__doc__


@pytest.mark.parametrize('name', sorted(ALL))
def test_every_model_loads_through_torch_hub(name):
    model = hub_load(name, num_classes=5, in_chans=1, **ALL[name])
    assert model.pretrained_cfg['architecture'] == name and (model.num_classes, model.in_chans) == (5, 1)
    assert model.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 5)


def test_pretrained_weights_and_features_through_torch_hub():
    path, kwargs, x, logits = golden('van_tiny_cfg')
    small = dict(embed_dims=kwargs['embed_dims'], depths=kwargs['depths'], num_classes=kwargs['num_classes'])
    overlay = dict(file=str(path), num_classes=small['num_classes'])
    model = hub_load('van_b0', pretrained=True, pretrained_cfg_overlay=overlay, **small).eval()
    with torch.no_grad():
        assert relative_error(model(x), logits) <= 1e-5
    features = hub_load('van_b0', features_only=True, output_stride=16, **TINY_VAN)
    assert features.feature_info.reduction() == [4, 8, 16, 16]
