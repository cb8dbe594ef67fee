import torch

from kdimpl.losses.d3etr import d3etr_match

from . import LossCase, feature_pair

QUERIES = 6
CLASSES = 4
HEADS = 2


def _pred_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    s_logits, t_logits = feature_pair(generator, device, dtype, batch, QUERIES, CLASSES, 1)
    s_logits, t_logits = s_logits[..., 0], t_logits[..., 0]
    raw = torch.randn(2, batch, QUERIES, 4, generator=generator)
    boxes = torch.cat([0.2 + 0.6 * raw[..., :2].sigmoid(), 0.05 + 0.3 * raw[..., 2:].sigmoid()], dim=-1).to(device, dtype)
    match = d3etr_match(s_logits, t_logits, boxes[0], boxes[1])
    return (s_logits, t_logits, boxes[0], boxes[1]), {"match": match}


def _attention(generator, device, dtype, batch, keys):
    return feature_pair(generator, device, dtype, batch, HEADS, QUERIES, keys)


def _permutation(generator, batch, device):
    return torch.stack([torch.randperm(QUERIES, generator=generator) for _ in range(batch)] or
                       [torch.zeros(0, QUERIES, dtype=torch.long)]).reshape(batch, QUERIES).to(device)


def _self_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    return _attention(generator, device, dtype, batch, QUERIES), {"match": _permutation(generator, batch, device)}


def _cross_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    return _attention(generator, device, dtype, batch, height * width), {}


CASES = [
    LossCase("d3etr_pred", _pred_inputs, uses_boxes=False, zero_when_equal=False),
    LossCase("d3etr_self_attention", _self_inputs, uses_boxes=False, zero_when_equal=False),
    LossCase("d3etr_cross_attention", _cross_inputs, uses_boxes=False),
]
