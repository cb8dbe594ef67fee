import torch

from kdimpl.adapters.drkd import GloReUnit, InstanceRelation

from . import LossCase, box_counts, feature_pair, random_boxes

CHANNELS = 4


def _module_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # the losses upcast half inputs


def _pixel_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    glore = GloReUnit(CHANNELS, 2).to(device, _module_dtype(dtype)).eval()
    # One unit shared by both sides and no adaptation, so the loss is exactly 0 at student == teacher;
    # separate units and the adaptation are covered by the parity test in test_drkd.py.
    kwargs = {"glore_student": glore, "glore_teacher": glore}
    return feature_pair(generator, device, dtype, batch, CHANNELS, height, width), kwargs


def _instance_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    image_size = (height * 8, width * 8)
    boxes = [random_boxes(generator, m, image_size, device, dtype) for m in box_counts(num_boxes, batch)]
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    relation = InstanceRelation(CHANNELS * 9, max_instances=8).to(device, _module_dtype(dtype))
    adaptation = torch.nn.Conv2d(CHANNELS, CHANNELS, 1).to(device, _module_dtype(dtype))
    kwargs = {
        "gt_boxes": boxes,
        "image_size": image_size,
        "relation_student": relation,
        "relation_teacher": relation,
        "feature_adapter_student": adaptation,
    }
    return feature_pair(generator, device, dtype, batch, CHANNELS, height, width), kwargs


CASES = [
    LossCase("drkd_pixel", _pixel_inputs, uses_boxes=False),
    # feature_adapter_student makes the instance-feature term non-zero at student == teacher.
    LossCase("drkd_instance", _instance_inputs, zero_when_equal=False),
]
