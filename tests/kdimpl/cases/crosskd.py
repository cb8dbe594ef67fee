from . import LossCase, feature_pair
from .bckd import BINS, CLASSES, _cls_inputs, _valid_mask


def _box_inputs(generator, device, dtype, *, batch, height, width, num_boxes):
    student, teacher = feature_pair(generator, device, dtype, batch, 4 * BINS, height, width)
    _, teacher_logits = feature_pair(generator, device, dtype, batch, CLASSES, height, width)
    mask = _valid_mask(generator, device, dtype, batch, height, width)
    return (student, teacher, teacher_logits, mask), {}


CASES = [
    LossCase("crosskd_cls", _cls_inputs, options={"beta": 1.0}, uses_boxes=False),
    LossCase("crosskd_box", _box_inputs, options={"temperature": 1.0}, uses_boxes=False),
]
