"""Everything timm promises for a model, checked on small configs of each family."""
import pytest
import timm
import torch
from timm.models import get_graph_node_names
from timm.optim import create_optimizer_v2
from timm.models._features_fx import create_feature_extractor

# name -> kwargs making a small but complete member of the family
SMALL = {
    'van_b0': dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 2, 1)),
    'focal_tiny_patch4_window7_224': dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)),
    'focal_tiny_useconv_patch4_window7_224': dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)),
    'focalv2_tiny_useconv_patch4_window7_224': dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)),
}
SIZES = [(64, 64), (200, 300), (96, 128)]


def create(name, **kwargs):
    return timm.create_model(name, **dict(SMALL[name], **kwargs))


@pytest.mark.parametrize('name', SMALL)
def test_pretrained_cfg_complete(name):
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    for key in ('input_size', 'crop_pct', 'interpolation', 'mean', 'std', 'first_conv', 'classifier', 'license',
                'paper_ids', 'num_classes'):
        assert cfg.get(key), key
    model = create(name)
    assert model.get_submodule(cfg['first_conv']).weight is not None
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()


@pytest.mark.parametrize('name', SMALL)
@pytest.mark.parametrize('size', SIZES)
def test_forward_any_size(name, size):
    model = create(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize('name', SMALL)
def test_head_api(name):
    model = create(name, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        channels = feats.shape[-1] if getattr(model, 'output_fmt', 'NCHW') == 'NHWC' else feats.shape[1]
        assert feats.shape[0] == 2 and channels == model.num_features
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        assert torch.equal(model.forward_head(feats), model(x))
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
    assert create(name, num_classes=0)(x).shape == (2, model.num_features)
    assert create(name, in_chans=1)(torch.randn(2, 1, 64, 64)).shape == (2, 1000)


@pytest.mark.parametrize('name', SMALL)
def test_layer_decay_groups_and_no_weight_decay(name):
    model = create(name)
    assert isinstance(model.no_weight_decay(), set)
    groups = create_optimizer_v2(model, 'adamw', lr=1e-3, layer_decay=0.7).param_groups
    scales = sorted({g['lr_scale'] for g in groups})
    assert len(scales) >= 4, scales
    assert sum(len(g['params']) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize('name', SMALL)
def test_grad_checkpointing_same_gradients(name):
    x = torch.randn(2, 3, 64, 64)
    model = create(name).train()
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(0)
        model(x).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize('name', SMALL)
def test_features_only(name):
    model = create(name, features_only=True, out_indices=(0, 1, 2, 3)).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    for h, w in [(64, 64), (96, 160)]:
        feats = model(torch.randn(1, 3, h, w))
        for f, chs, red in zip(feats, model.feature_info.channels(), model.feature_info.reduction()):
            assert f.shape == (1, chs, -(-h // red), -(-w // red)), (f.shape, chs, red)
    subset = create(name, features_only=True, out_indices=(1, 3))
    assert subset.feature_info.reduction() == [8, 32]


@pytest.mark.parametrize('name', SMALL)
def test_forward_intermediates_and_prune(name):
    model = create(name).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert len(inter) == 4 and all(t.dim() == 4 for t in inter)
        torch.testing.assert_close(final, model.forward_features(x))
        only = model.forward_intermediates(x, indices=[1], intermediates_only=True)
        torch.testing.assert_close(only[0], inter[1])
        model.prune_intermediate_layers(indices=[1])
        assert model.forward_intermediates(x, indices=[1], intermediates_only=True)[0].shape == inter[1].shape


@pytest.mark.parametrize('name', SMALL)
def test_torchscript(name):
    model = create(name).eval()
    x = torch.randn(1, 3, 64, 64)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize('name', SMALL)
def test_fx_feature_extraction(name):
    model = create(name).eval()
    _, eval_nodes = get_graph_node_names(model)
    extractor = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(extractor(x)[eval_nodes[-1]], model(x))


@pytest.mark.parametrize('name', SMALL)
def test_torch_compile(name):
    model = create(name).eval()
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', SMALL)
def test_channels_last(name):
    model = create(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-5)


def test_torch_compile_focal_variants_in_one_process():
    # Regression (#21): every table of one `assume_constant_result` function reached dynamo under that
    # function's name, so the second table of another shape (next stage, next model) got symbolic sizes;
    # the graph broke on reading them, and the second model compiled failed. One graph each, no reset between.
    x = torch.randn(1, 3, 64, 64)
    for name in ('focal_tiny_patch4_window7_224', 'focal_tiny_useconv_patch4_window7_224',
                 'focalv2_tiny_useconv_patch4_window7_224'):
        model = create(name).eval()
        with torch.no_grad():
            # backend 'eager': the tables are dynamo's business, fullgraph: a graph break fails the test
            torch.testing.assert_close(torch.compile(model, backend='eager', fullgraph=True)(x), model(x),
                                       rtol=1e-4, atol=1e-5)
