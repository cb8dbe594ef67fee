"""UniKD stage 2 on the shared workload: a frozen content extractor (200 queries) reads knowledge from the teacher's
and the student's features, and the balanced MSE compares them. The dense attention of this extractor covers the
four coarser levels (the finest one alone would need a 200 x 67k attention map per head)."""

from __future__ import annotations

import torch

from kdimpl import UniKDKnowledgeExtractor, unikd_loss

from . import BenchCase, feature_levels

CHANNELS = 256


def _make(device, dtype, levels, gt_boxes, image_size):
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
    torch.manual_seed(0)
    ake = UniKDKnowledgeExtractor(CHANNELS, 200, num_levels=4).to(device).requires_grad_(False)

    def step():
        with torch.no_grad():
            queries = ake.queries(teachers[1:])
            z_t = ake.extract(queries, teachers[1:])
        return 10.0 * unikd_loss(ake.extract(queries, students[1:]), z_t)

    return step


BENCH = [BenchCase("unikd", _make, channels=CHANNELS)]
