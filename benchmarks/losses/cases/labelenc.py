"""LabelEnc's feature loss over five FPN levels, and its label map alone.

The loss case leaves out the shared three-convolution adapter (three 256-channel 3x3 convolutions on
every level, a minute per step on two CPU cores): what is timed is the normalisation and the error.
"""

from __future__ import annotations

import torch

from kdimpl import LabelEncLoss, MultiLevelLoss
from kdimpl.losses.labelenc import labelenc_label_map, labelenc_level_weights

from . import BenchCase, feature_levels

CHANNELS = 256


def _make(device, dtype, levels, gt_boxes, image_size):
    students, label_feats = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS, seed=5)
    # the mean over the concatenated levels, as in the official code
    criterion = MultiLevelLoss(LabelEncLoss(), level_weights=labelenc_level_weights(students))
    return lambda: criterion(students, label_feats)


def _make_label_map(device, dtype, levels, gt_boxes, image_size):
    labels = [torch.arange(len(b), device=device) % 80 + 1 for b in gt_boxes]  # COCO: 80 classes + background
    return lambda: labelenc_label_map(gt_boxes, labels, image_size, 81)


BENCH = [BenchCase("labelenc", _make, channels=CHANNELS), BenchCase("labelenc_label_map", _make_label_map, backward=False)]
