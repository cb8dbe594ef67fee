"""LabelEnc's feature loss over five FPN levels.

The loss case leaves out the shared three-convolution adapter (three 256-channel 3x3 convolutions on
every level, a minute per step on two CPU cores): what is timed is the normalisation and the error.
"""

from __future__ import annotations

from kdimpl import LabelEncLoss, MultiLevelLoss
from kdimpl.losses.labelenc import labelenc_level_weights

from . import BenchCase, feature_levels

CHANNELS = 256


def _make(device, dtype, levels, gt_boxes, image_size):
    students, label_feats = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS, seed=5)
    # the mean over the concatenated levels, as in the official code
    criterion = MultiLevelLoss(LabelEncLoss(), level_weights=labelenc_level_weights(students))
    return lambda: criterion(students, label_feats)


BENCH = [BenchCase("labelenc", _make, channels=CHANNELS)]
