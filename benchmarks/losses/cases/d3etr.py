"""D³ETR on a Conditional-DETR-sized workload: 6 decoder layers of 300 queries, 80 classes, 8 heads, batch 2.

Adaptive Matching (SciPy, per layer) is timed inside ``d3etr_pred``; the attention cases reuse fixed matches
(seeded permutations): self-attention over the 300 queries, cross-attention over the 25 x 42 keys of the C5 map of
an 800 x 1333 input, scores before the softmax.
"""

from __future__ import annotations

import torch

from kdimpl import multilevel_loss
from kdimpl.losses.d3etr import d3etr_cross_attention_loss, d3etr_match, d3etr_pred_loss, d3etr_self_attention_loss

from . import BenchCase
from .detrdistill import decoder_outputs

LAYERS, QUERIES, HEADS, KEYS = 6, 300, 8, 25 * 42


def _make_pred(device, dtype, levels, gt_boxes, image_size):
    s_logits, t_logits, s_boxes, t_boxes, _ = decoder_outputs(device, dtype, len(gt_boxes))

    def run():
        matches = [d3etr_match(*outputs) for outputs in zip(s_logits, t_logits, s_boxes, t_boxes)]
        return multilevel_loss(d3etr_pred_loss, s_logits, t_logits, s_boxes, t_boxes, matches)

    return run


def _attention(device, dtype, batch, keys, seed):
    generator = torch.Generator().manual_seed(seed)
    students = [torch.randn(batch, HEADS, QUERIES, keys, generator=generator).to(device, dtype).requires_grad_(True)
                for _ in range(LAYERS)]
    teachers = [torch.randn(batch, HEADS, QUERIES, keys, generator=generator).to(device, dtype) for _ in range(LAYERS)]
    matches = [torch.stack([torch.randperm(QUERIES, generator=generator) for _ in range(batch)]).to(device)
               for _ in range(LAYERS)]
    return students, teachers, matches


def _make_self(device, dtype, levels, gt_boxes, image_size):
    students, teachers, matches = _attention(device, dtype, len(gt_boxes), QUERIES, 1)
    return lambda: multilevel_loss(d3etr_self_attention_loss, students, teachers, matches)


def _make_cross(device, dtype, levels, gt_boxes, image_size):
    students, teachers, matches = _attention(device, dtype, len(gt_boxes), KEYS, 2)
    return lambda: multilevel_loss(d3etr_cross_attention_loss, students, teachers, matches)


BENCH = [
    BenchCase("d3etr_pred", _make_pred, channels=80),
    BenchCase("d3etr_self_attention", _make_self, channels=HEADS),
    BenchCase("d3etr_cross_attention", _make_cross, channels=HEADS),
]
