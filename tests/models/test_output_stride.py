"""VAN's `output_stride` 16 and 8 (DeepLab, smp's `encoder_output_stride`): the stages past it keep their
resolution and dilate their convs, with the same weights. 32 is the model as it was (the official logits)."""
import pytest
import timm
import torch

import van_focal  # noqa: F401
from conftest import golden, relative_error

TINY = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))


def test_output_stride_32_keeps_the_official_logits():
    path, kwargs, x, logits = golden('van_tiny_cfg')
    model = timm.create_model('van_b0', embed_dims=kwargs['embed_dims'], depths=kwargs['depths'],
                              num_classes=kwargs['num_classes'], output_stride=32).eval()
    timm.models.load_checkpoint(model, str(path), strict=True)
    with torch.no_grad():
        assert relative_error(model(x), logits) <= 1e-5


@pytest.mark.parametrize('output_stride, reductions', [(32, [4, 8, 16, 32]), (16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])])
def test_dilated_stages_see_what_the_strided_ones_see(output_stride, reductions):
    """A conv with stride 2, then convs dilated by 2 on the full-resolution map, computes at the even
    positions exactly what the strided network computes: each feature map, subsampled, is the stride-32 one."""
    strided = timm.create_model('van_b0', features_only=True, **TINY).eval()
    dilated = timm.create_model('van_b0', features_only=True, output_stride=output_stride, **TINY).eval()
    dilated.load_state_dict(strided.state_dict(), strict=True)
    assert dilated.feature_info.reduction() == reductions
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        features, reference = dilated(x), strided(x)
    for feature, ref, reduction, strided_reduction in zip(features, reference, reductions, [4, 8, 16, 32]):
        assert feature.shape[-2:] == (-(-64 // reduction), -(-48 // reduction))
        step = strided_reduction // reduction
        assert relative_error(feature[..., ::step, ::step], ref) <= 1e-5


def test_classifier_training_and_fusing_at_output_stride_8():
    model = timm.create_model('van_b0', output_stride=8, num_classes=3, **TINY)
    assert model.stages[3].blocks[0].attn.spatial_gating_unit.conv_spatial.dilation == (12, 12)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    with torch.no_grad():  # BatchNorm and layer scale folded into the dilated stages' convs
        unfused = model.eval()(x)
        assert relative_error(model.fuse()(x), unfused) <= 1e-5


def test_unsupported_output_stride_is_named():
    with pytest.raises(ValueError, match=r'^output_stride=4: VAN takes 8, 16 or 32\.$'):
        timm.create_model('van_b0', output_stride=4)
