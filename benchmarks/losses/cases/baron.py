"""BARON's two alignment losses at the official sizes (the FPN workload does not apply: both act on bags of RoIs).

``baron_bag``: 200 bags per image (proposals after BARON's filtering, groups and word orders), up to 3 regions x 6
pseudo-words of 512 dims each, against 512-dim teacher embeddings, with the official 1024-entry queue; a frozen
linear layer over the masked mean of the words stands in for CLIP's text encoder (not timed apart).
``baron_region``: the 4 region occurrences of every bag, against pooled teacher features, with the queue.
"""

from __future__ import annotations

import torch

from kdimpl.losses.baron import BARONBagLoss, BARONRegionLoss

from . import BenchCase

DIM, BAGS, WORDS, QUEUE = 512, 200, 18, 1024


class _MeanLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(DIM, DIM).requires_grad_(False)

    def forward(self, words, mask):
        mask = mask[..., None].to(words.dtype)
        return self.proj((words * mask).sum(1) / mask.sum(1).clamp(min=1))


def _queue(g, device, dtype):
    ids = torch.randint(10, 50, (QUEUE,), generator=g).to(device)
    return {"student_queue": torch.randn(QUEUE, DIM, generator=g).to(device, dtype),
            "teacher_queue": torch.randn(QUEUE, DIM, generator=g).to(device, dtype), "queue_image_ids": ids}


def _make_bag(device, dtype, levels, gt_boxes, image_size):
    g = torch.Generator().manual_seed(0)
    n = len(gt_boxes) * BAGS
    words = torch.randn(n, WORDS, DIM, generator=g).to(device, dtype).requires_grad_(True)
    mask = (torch.rand(n, WORDS, generator=g) > 0.5).to(device)
    teacher = torch.randn(n, DIM, generator=g).to(device, dtype)
    bag_ids = (torch.arange(n) // 2).to(device)  # two word orders per group
    image_ids = torch.arange(len(gt_boxes)).repeat_interleave(BAGS).to(device)
    criterion = BARONBagLoss(text_encoder_student=_MeanLinear()).to(device, dtype)
    queue = _queue(g, device, dtype)
    return lambda: criterion(words, teacher, mask, bag_ids, image_ids, **queue)


def _make_region(device, dtype, levels, gt_boxes, image_size):
    g = torch.Generator().manual_seed(0)
    n = len(gt_boxes) * BAGS * 4
    student = torch.randn(n, DIM, generator=g).to(device, dtype).requires_grad_(True)
    teacher = torch.randn(n, DIM, generator=g).to(device, dtype)
    region_ids = torch.randint(0, n // 3, (n,), generator=g).to(device)
    image_ids = torch.arange(len(gt_boxes)).repeat_interleave(n // len(gt_boxes)).to(device)
    queue = _queue(g, device, dtype)
    return lambda: BARONRegionLoss(loss_weight=0.1)(student, teacher, region_ids, image_ids, **queue)


BENCH = [
    BenchCase("baron_bag", _make_bag, channels=DIM),
    BenchCase("baron_region", _make_region, channels=DIM),
]
