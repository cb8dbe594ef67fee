import torch
import torch.nn.functional as F

from . import LossCase

CATEGORIES, DIM = 6, 16


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    regions = max(num_boxes, 1) + 1
    text = F.normalize(torch.randn(CATEGORIES, DIM, generator=generator), dim=-1)
    labels = torch.randint(0, CATEGORIES, (batch, regions), generator=generator)
    # regions close to a category's text embedding, so the frozen VLM is confident about most of them
    student = text[labels] + 0.3 * torch.randn(batch, regions, DIM, generator=generator)
    teacher = 0.5 * student + 0.5 * text[labels] + 0.1 * torch.randn(batch, regions, DIM, generator=generator)
    valid = torch.rand(batch, regions, generator=generator) < 0.8
    if batch:
        valid[0] = True
    kwargs = {"student_text": text.to(device, dtype), "teacher_text": text.to(device, dtype), "valid_mask": valid.to(device)}
    return (student.to(device, dtype), teacher.to(device, dtype)), kwargs


# Zero at student == teacher: the same text embeddings on both sides in this recipe.
CASES = [LossCase("densevlm", _inputs, options={"num_thing_classes": 4, "temperature": 0.05}, uses_boxes=False)]
