import torch

from kdimpl.adapters.scalekd import ScaleDecoupledFeature

from . import LossCase, feature_pair

CHANNELS = 8


def _feature_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    module_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        decoupler = ScaleDecoupledFeature(CHANNELS).to(device, module_dtype)
    return feature_pair(generator, device, dtype, batch, CHANNELS, height, width), {"decoupler_student": decoupler}


def _prediction_pair(generator, device, dtype, batch, height, width, last):
    student = torch.randn(batch, height * width, last, generator=generator)
    teacher = 0.5 * student + torch.randn(batch, height * width, last, generator=generator)
    return student.to(device, dtype), teacher.to(device, dtype)


def _cls_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    return _prediction_pair(generator, device, dtype, batch, height, width, 5), {}


def _box_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    return _prediction_pair(generator, device, dtype, batch, height, width, 4), {}


CASES = [
    LossCase("scalekd_feature", _feature_inputs, uses_boxes=False),
    LossCase("scalekd_assistant_cls", _cls_inputs, options={"temperature": 2.0, "activation": "sigmoid"}, uses_boxes=False),
    LossCase("scalekd_assistant_box", _box_inputs, uses_boxes=False),
]
