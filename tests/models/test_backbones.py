"""VAN and Focal Transformer as detection backbones: timm's features_only under torchvision's
FeaturePyramidNetwork and FasterRCNN at a detection-sized input (512 x 640), as in docs/detection.md."""
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn as nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

SMALL = {
    'van_b0': dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1)),
    'focal_tiny_patch4_window7_224': dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
}


class TimmFPN(nn.Module):
    """A timm features_only model under torchvision's FPN: the `backbone` FasterRCNN expects."""

    def __init__(self, name: str, out_channels: int = 32, out_indices=(1, 2, 3), **kwargs):
        super().__init__()
        self.body = timm.create_model(name, features_only=True, out_indices=out_indices, **kwargs)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x):
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


@pytest.mark.parametrize('name', list(SMALL))
def test_faster_rcnn_trains_and_detects_at_512x640(name):
    backbone = TimmFPN(name, **SMALL[name])
    info = backbone.body.feature_info
    assert info.reduction() == [8, 16, 32] and len(info.module_name()) == 3
    features = backbone(torch.randn(1, 3, 512, 640))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(64, 80), (32, 40), (16, 20), (8, 10)]

    # One anchor size per map (3 stages + the FPN's max-pool level); boxes pooled from the 3 stage maps.
    anchors = AnchorGenerator(sizes=((32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    detector = FasterRCNN(backbone, num_classes=3, min_size=512, max_size=640, rpn_anchor_generator=anchors,
                          box_roi_pool=MultiScaleRoIAlign(['0', '1', '2'], output_size=7, sampling_ratio=2),
                          rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                          rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=64)
    images = [torch.rand(3, 512, 640)]
    targets = [dict(boxes=torch.tensor([[40., 60., 200., 300.]]), labels=torch.tensor([1]))]
    losses = detector(images, targets)
    assert {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'} <= set(losses)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in backbone.body.parameters() if p.requires_grad)

    detector.eval()
    with torch.no_grad():
        detections, = detector(images)
    assert detections['boxes'].shape[1:] == (4,) and len(detections['scores']) == len(detections['labels'])


@pytest.mark.parametrize('name', list(SMALL))
def test_feature_info_and_out_of_range_indices_agree_across_families(name):
    model = timm.create_model(name, features_only=True, **SMALL[name])
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert [f.shape[-1] for f in model(torch.randn(1, 3, 64, 64))] == [16, 8, 4, 2]
    with pytest.raises(AssertionError, match=r'^feature index 4 is out of range \(0 to 3\)$'):
        timm.create_model(name, features_only=True, out_indices=(4,), **SMALL[name])
