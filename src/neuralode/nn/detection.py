"""torchvision's Faster R-CNN around a :mod:`neuralode.nn.backbones` backbone, sized for small images.

torchvision's defaults serve 800-1333 px photographs with an ImageNet ResNet-50 (1024-wide box
head, 2000 proposals). For canvases of 64-256 px trained from scratch on a CPU those defaults
waste most of the time, so :func:`make_faster_rcnn` keeps the images at their size
(``min_size = max_size = image_size``), uses anchors matched to the object sizes, fewer
proposals and a narrow box head. Nothing is pretrained and nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .backbones import Backbone, backbone_with_fpn

__all__ = ["make_faster_rcnn"]


def make_faster_rcnn(backbone: Backbone, num_classes: int, *, image_size: int,
                     anchor_sizes: Sequence[int] = (16, 32, 64), fpn: bool = False,
                     fpn_channels: int = 64, representation_size: int = 256,
                     proposals_train: int = 256, proposals_test: int = 128,
                     box_score_thresh: float = 0.01, image_mean: Sequence[float] | None = None,
                     image_std: Sequence[float] | None = None, **kwargs: Any) -> nn.Module:
    """A ``torchvision.models.detection.FasterRCNN`` on ``backbone``.

    Args:
        backbone: from :func:`~neuralode.nn.backbones.make_backbone`.
        num_classes: object classes *including* the background (class 0).
        image_size: the side of the (square) input images; they are not rescaled.
        anchor_sizes: anchor sides in pixels. Without FPN all sizes sit on the one output map
            (three aspect ratios each); with FPN each pyramid level gets one size, so give one
            per level (the backbone's stages + the pooled level).
        fpn: put torchvision's feature pyramid on all stage outputs.
        fpn_channels: the pyramid's channels.
        representation_size: width of the two-layer box head (torchvision: 1024).
        proposals_train, proposals_test: RPN proposals kept after NMS (torchvision: 2000/1000).
        box_score_thresh: detections below this score are dropped (low, so that precision-recall
            curves reach high recall).
        image_mean, image_std: the transform's normalisation (default 0.5 / 0.25 per channel).
        **kwargs: passed on to ``FasterRCNN`` (e.g. ``box_detections_per_img``).
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a neuralode.nn.backbones.Backbone; got {type(backbone).__name__}")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r}; expected >= 2 (background + at least one class)")
    if image_size < 16:
        raise ValueError(f"image_size={image_size!r}; expected >= 16 pixels")
    channels = backbone.in_channels
    mean = list(image_mean) if image_mean is not None else [0.5] * channels
    std = list(image_std) if image_std is not None else [0.25] * channels
    if fpn:
        net: nn.Module = backbone_with_fpn(backbone, fpn_channels)
        names = [str(i) for i in range(len(backbone.stage_channels))]
        levels = len(names) + 1  # + the max-pooled level
        if len(anchor_sizes) != levels:
            raise ValueError(f"anchor_sizes={tuple(anchor_sizes)}; with fpn=True give one size per pyramid "
                             f"level ({levels}: {len(names)} stages + pool)")
        anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * levels)
        out_channels = fpn_channels
    else:
        net, names = backbone, ["0"]
        anchors = AnchorGenerator((tuple(anchor_sizes),), ((0.5, 1.0, 2.0),))
        out_channels = backbone.out_channels
    roi_pool = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(out_channels * 7 * 7, representation_size)
    predictor = FastRCNNPredictor(representation_size, num_classes)
    options: dict[str, Any] = dict(
        min_size=image_size, max_size=image_size, image_mean=mean, image_std=std,
        rpn_pre_nms_top_n_train=4 * proposals_train, rpn_pre_nms_top_n_test=4 * proposals_test,
        rpn_post_nms_top_n_train=proposals_train, rpn_post_nms_top_n_test=proposals_test,
        rpn_batch_size_per_image=128, box_batch_size_per_image=128,
        box_score_thresh=box_score_thresh,
    )
    options.update(kwargs)
    return FasterRCNN(net, num_classes=None, rpn_anchor_generator=anchors, box_roi_pool=roi_pool,
                      box_head=box_head, box_predictor=predictor, **options)
