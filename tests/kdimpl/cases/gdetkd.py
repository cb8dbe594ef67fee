import torch

from kdimpl.adapters import GDetKDLevelAttention

from . import LossCase, random_boxes

CHANNELS = 4
LEVELS = 3
ROIS = 3  # per image
DIM = 8


def _sgfi_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    rois = batch * ROIS
    student = torch.randn(LEVELS, rois, CHANNELS, 7, 7, generator=generator)
    teacher = 0.5 * student[1] + torch.randn(rois, CHANNELS, 7, 7, generator=generator)
    torch.manual_seed(0)
    module_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    attention = GDetKDLevelAttention(CHANNELS, hidden_channels=5, embedding_channels=3).to(device, module_dtype)
    return (student.to(device, dtype), teacher.to(device, dtype)), {"attention_student": attention}


def _contrastive_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student = torch.randn(batch, ROIS, DIM, generator=generator)
    teacher = 0.5 * student + torch.randn(batch, ROIS, DIM, generator=generator)
    rois = random_boxes(generator, batch * ROIS, (height * 8, width * 8), device).reshape(batch, ROIS, 4)
    rois[:, 1] = rois[:, 0] + 1.0  # overlapping RoIs: not each other's negatives
    memory = torch.nn.functional.normalize(torch.randn(5, DIM, generator=generator), dim=-1)
    return (student.to(device, dtype), teacher.to(device, dtype)), {
        "rois": rois, "memory": memory.to(device, dtype)}


def _sgfi_part(args, kwargs, rank, world_size):
    """The student is (levels, RoIs, ...): one process holds a share of the RoIs on every level."""
    student, teacher = args
    step = teacher.shape[0] // world_size
    return [student[:, rank * step:(rank + 1) * step], teacher[rank * step:(rank + 1) * step]], kwargs


CASES = [
    # the student (RoI features of every level) and the teacher (one level) have different shapes
    LossCase("gdetkd_sgfi", _sgfi_inputs, uses_boxes=False, zero_when_equal=False, part=_sgfi_part),
    # a contrastive loss is not zero at student == teacher (the negatives stay)
    LossCase("gdetkd_contrastive", _contrastive_inputs, uses_boxes=False, zero_when_equal=False),
]
