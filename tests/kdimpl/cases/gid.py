import torch

from . import LossCase, box_counts, feature_pair, random_boxes

CHANNELS = 4
STRIDE = 8


def _feature_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    image_size = (height * STRIDE, width * STRIDE)
    boxes = [random_boxes(generator, m, image_size, device, dtype) for m in box_counts(num_boxes, batch)]
    features = feature_pair(generator, device, dtype, batch, CHANNELS, height, width)
    return features, {"instance_boxes": boxes, "image_size": image_size}


def grid_anchors(height, width, device, dtype, size=2 * STRIDE):
    """One square anchor per cell, centred on it, position-major."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    cx, cy = (xs.flatten() + 0.5) * STRIDE, (ys.flatten() + 0.5) * STRIDE
    return torch.stack([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], dim=1).to(device, dtype)


def _response_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    logits = feature_pair(generator, device, dtype, batch, 3, height, width)
    deltas = feature_pair(generator, device, dtype, batch, 4, height, width)
    anchors = grid_anchors(height, width, device, dtype)
    boxes = []
    for m in box_counts(num_boxes, batch):  # instances one pixel off random anchors (IoU > 0.5 with them)
        pick = torch.randint(0, height * width, (m,), generator=generator)
        boxes.append(anchors[pick.to(device)] + 1.0)
    return (*logits, *deltas, anchors), {"instance_boxes": boxes}


CASES = [
    LossCase("gid_feature", _feature_inputs, options={"output_size": 3}),
    LossCase("gid_relation", _feature_inputs, options={"output_size": 3}),
    # BCE with soft targets is not zero at student == teacher (the target's entropy), nor is the
    # regression term (the deltas differ).
    LossCase("gid_response", _response_inputs, zero_when_equal=False),
]
