"""DetKDS searched distillers on every FPN level: the RetinaNet R101->R50 one (global + fg/bg branches), the
RetinaNet X101->R50 one (instance branch, RoIAlign 14x14 on the GT boxes) and the logits branch on RPN scores."""

from __future__ import annotations


from kdimpl import DetKDSLogitLoss, DetKDSLoss, MultiLevelLoss

from . import BenchCase, feature_levels

CHANNELS = 256


def _make(preset):
    def make(device, dtype, levels, gt_boxes, image_size):
        students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), CHANNELS)
        criterion = MultiLevelLoss(DetKDSLoss.from_preset(preset))
        return lambda: criterion(students, teachers, gt_boxes=gt_boxes, image_size=image_size)

    return make


def _make_logits(device, dtype, levels, gt_boxes, image_size):
    # the Faster R-CNN setting: softmax over the 3 anchors of the RPN scores, Pearson distance, weight 0.1
    students, teachers = feature_levels(device, dtype, levels, len(gt_boxes), 3, seed=1)
    criterion = MultiLevelLoss(DetKDSLogitLoss(loss_weight=0.1))
    return lambda: criterion(students, teachers)


BENCH = [
    BenchCase("detkds", _make("retinanet_r101_r50"), channels=CHANNELS),
    BenchCase("detkds_instance", _make("retinanet_x101_r50"), channels=CHANNELS),
    BenchCase("detkds_logits", _make_logits, channels=3),
]
