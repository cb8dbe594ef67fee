"""DenseVLM on the official COCO setting's scale: EVA-CLIP ViT-B/16 student (512-d) and ViT-L/14 frozen VLM
(768-d) region embeddings of a 6x6 grid of crops per image, 316 categories (204 things, 112 stuff; the official
boundary 203), batch 2. The region pooling is clipself_region_embeddings (timed in the clipself case), so the
embeddings are given here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdimpl import DenseVLMLoss

from . import BenchCase

REGIONS, STUDENT_DIM, TEACHER_DIM, CATEGORIES = 36, 512, 768, 316


def _make(device, dtype, levels, gt_boxes, image_size):
    generator = torch.Generator().manual_seed(0)
    batch = len(gt_boxes)
    text_s = F.normalize(torch.randn(CATEGORIES, STUDENT_DIM, generator=generator), dim=-1).to(device, dtype)
    text_t = F.normalize(torch.randn(CATEGORIES, TEACHER_DIM, generator=generator), dim=-1).to(device, dtype)
    labels = torch.randint(0, CATEGORIES, (batch, REGIONS), generator=generator)
    teacher = (text_t[labels] + 0.02 * torch.randn(batch, REGIONS, TEACHER_DIM, generator=generator).to(device, dtype))
    student = torch.randn(batch, REGIONS, STUDENT_DIM, generator=generator).to(device, dtype).requires_grad_(True)
    criterion = DenseVLMLoss(num_thing_classes=203)
    return lambda: criterion(student, teacher, text_s, text_t)


BENCH = [BenchCase("densevlm", _make, channels=STUDENT_DIM)]
