"""Built on the meta device, then materialised as transformers' `from_pretrained` does it (`to_empty`, timm's
`init_non_persistent_buffers()`, the real state dict), every registered model gives the logits of a model built
normally. Focal's relative-position indices are cached tables, not buffers: nothing is left uninitialised."""
import pytest
import timm
import torch

import van_focal  # noqa: F401

TINY_VAN = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
TINY_FOCAL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), img_size=64)
ALL = {name: TINY_VAN if name.startswith('van_') else TINY_FOCAL
       for name in timm.list_models(['van_*', 'focal_*', 'focalv2_*'])}


def materialise(model: torch.nn.Module, state_dict: dict) -> torch.nn.Module:
    """What transformers 5 does after building a model under `torch.device('meta')`."""
    model = model.to_empty(device='cpu')
    for module in model.modules():
        if hasattr(module, 'init_non_persistent_buffers'):
            module.init_non_persistent_buffers()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def test_all_sixteen():
    assert len(ALL) == 16


@pytest.mark.parametrize('name', sorted(ALL))
def test_meta_built_model_gives_the_same_logits(name):
    reference = timm.create_model(name, **ALL[name]).eval()
    with torch.device('meta'):
        model = timm.create_model(name, **ALL[name])
    assert all(t.is_meta for t in model.state_dict().values())
    model = materialise(model, reference.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize('name', sorted(ALL))
def test_full_size_models_keep_no_derived_state_in_buffers(name):
    """At full size (on the meta device: nothing allocated): every buffer is in the state dict, so the
    weights file fills it; none is computed in __init__ and lost by `to_empty()`."""
    model = timm.create_model(name, device='meta')
    assert all(t.is_meta for t in model.state_dict().values())
    assert {n for n, _ in model.named_buffers()} <= set(model.state_dict())


def test_dtype_and_device_as_timm_takes_them():
    model = timm.create_model('focal_tiny_patch4_window7_224', dtype=torch.bfloat16, **TINY_FOCAL).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16
    model = timm.create_model('van_b0', device='meta', features_only=True)
    assert all(t.is_meta for t in model.state_dict().values())
