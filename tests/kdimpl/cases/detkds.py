import torch

from . import LossCase, box_counts, feature_pair, random_boxes


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 4, height, width)
    sizes = [(height * 8, width * 8), (height * 8 - 5, width * 8 - 9)] * batch
    boxes = [random_boxes(generator, m, sizes[i], device) for i, m in enumerate(box_counts(num_boxes, batch))]
    image_size = torch.tensor(sizes[:batch], dtype=torch.float32, device=device).reshape(batch, 2)
    return (student, teacher), {"gt_boxes": boxes, "image_size": image_size}


def _logits(generator, device, dtype, *, batch, height, width, num_boxes):
    return feature_pair(generator, device, dtype, batch, 3, height, width), {}


# Every branch on, with deterministic chains (no random mask) that cover the three transform stages.
CASES = [
    LossCase(
        "detkds",
        _inputs,
        options={
            "global_chain": ("catt", "scale_r2", "norm_N", "l1"),
            "fbg_chain": ("satt", "local_s2", "norm_HW", "smooth_l1"),
            "instance_chain": ("catt", "scale_r1", "norm_C", "l2"),
            "instance_weight": 2.0,
        },
    ),
    # Pearson distance of sigmoid scores: 1 - rho is 0 at student == teacher up to its 1e-8 denominator term.
    LossCase("detkds_logits", _logits, uses_boxes=False),
]
