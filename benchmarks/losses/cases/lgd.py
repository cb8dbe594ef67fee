"""LGD's distillation loss over five FPN levels, and the dynamic teacher after the label encoder.

The loss case leaves out the shared three-convolution adapter (as the LabelEnc case does): what is
timed is the instance normalisation and the error. ``lgd_teacher`` times the relation adapter and
knowledge mapper (forward and backward, 256 channels, 8 heads) on the shared boxes.
"""

from __future__ import annotations

import torch

from kdimpl import LGDKnowledgeMapper, LGDLoss, LGDRelationAdapter, MultiLevelLoss
from kdimpl.losses.labelenc import labelenc_level_weights
from kdimpl.losses.lgd import lgd_teacher_features

from . import BenchCase, feature_levels

CHANNELS = 256


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS, seed=7)
    criterion = MultiLevelLoss(LGDLoss(), level_weights=labelenc_level_weights(students))
    return lambda: criterion(students, teachers)


def _make_teacher(device, dtype, levels, gt_boxes, image_size):
    students, _ = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS, seed=8)
    torch.manual_seed(9)
    relation, mapper = LGDRelationAdapter(CHANNELS).to(device, dtype), LGDKnowledgeMapper(CHANNELS).to(device, dtype)
    embeddings = [torch.randn(len(b), CHANNELS, device=device, dtype=dtype) for b in gt_boxes]
    context = torch.randn(len(gt_boxes), CHANNELS, device=device, dtype=dtype)

    def run():
        teachers = lgd_teacher_features(embeddings, students, gt_boxes, image_size, relation, mapper,
                                        context_embeddings=context)
        return sum(t.square().mean() for t in teachers)

    return run


BENCH = [BenchCase("lgd", _make, channels=CHANNELS), BenchCase("lgd_teacher", _make_teacher, channels=CHANNELS)]
