import torch

from . import LossCase, feature_pair

POINTS = 6
CLASSES = 4


def _outputs(generator, device, dtype, batch):
    s_logits, t_logits = feature_pair(generator, device, dtype, batch, POINTS, CLASSES, 1)
    raw = torch.randn(2, batch, POINTS, 4, generator=generator)
    boxes = torch.cat([0.2 + 0.6 * raw[..., :2].sigmoid(), 0.05 + 0.3 * raw[..., 2:].sigmoid()], dim=-1)
    return s_logits[..., 0], t_logits[..., 0], boxes[0].to(device, dtype), boxes[1].to(device, dtype)


def _point_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    return _outputs(generator, device, dtype, batch), {}


def _logits_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    def draw():
        rows = [torch.randperm(POINTS, generator=generator)[:3] for _ in range(batch)]
        return torch.stack(rows or [torch.zeros(0, 3)]).reshape(batch, 3).long()

    s_match, t_match = draw(), draw()
    if batch:
        s_match[0, -1] = t_match[0, -1] = -1  # one padding slot
    args = _outputs(generator, device, dtype, batch)
    return args, {"student_match": s_match.to(device), "teacher_match": t_match.to(device)}


CASES = [
    LossCase("kd_detr", _point_inputs, options={"temperature": 10.0}, uses_boxes=False, zero_when_equal=False),
    LossCase("kd_detr_logits", _logits_inputs, options={"temperature": 10.0}, uses_boxes=False, zero_when_equal=False),
]
