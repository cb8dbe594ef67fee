import torch

from kdimpl.adapters.fgd import FGDGlobalContext

from . import LossCase, box_counts, feature_pair, random_boxes

CHANNELS = 8


def global_blocks(generator, device, dtype, channels=CHANNELS):
    """Student and teacher blocks with identical, non-trivial seeded weights (the official init zeroes
    the last convolution, which would make the global term a plain squared error)."""
    dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # the loss computes in float32
    student = FGDGlobalContext(channels)
    with torch.no_grad():
        for p in student.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    teacher = FGDGlobalContext(channels)
    teacher.load_state_dict(student.state_dict())
    return student.to(device, dtype), teacher.to(device, dtype)


def _inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, CHANNELS, height, width)
    sizes = [(height * 8, width * 8), (height * 8 - 5, width * 8 - 9)] * batch
    boxes = [random_boxes(generator, m, sizes[i], device) for i, m in enumerate(box_counts(num_boxes, batch))]
    image_size = torch.tensor(sizes[:batch], dtype=torch.float32, device=device).reshape(batch, 2)
    global_student, global_teacher = global_blocks(generator, device, dtype)
    kwargs = {
        "gt_boxes": boxes,
        "image_size": image_size,
        "global_student": global_student,
        "global_teacher": global_teacher,
    }
    return (student, teacher), kwargs


# attention_weight raised so that the attention term matters at contract-test magnitudes.
CASES = [LossCase("fgd", _inputs, options={"temperature": 0.5, "attention_weight": 1e-2})]
