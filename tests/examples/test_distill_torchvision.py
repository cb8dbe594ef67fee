"""examples/distill_torchvision.py in a short mode: a few steps on tiny images."""

from __future__ import annotations

import math

import pytest
import torch

from kdimpl.integrations.torchvision import DetectorTap

SHORT = ["--steps", "2", "--teacher-steps", "1", "--image-size", "48", "--batch-size", "2", "--num-train", "4",
         "--log-every", "1", "--teacher-backbone", "resnet18", "--fpn-channels", "32"]


def _check_history(history, distilled: bool) -> None:
    assert len(history) == 2
    for record in history:
        assert math.isfinite(record["detection_total"]) and record["detection"]
        if distilled:
            assert record["distill"] and all(math.isfinite(v) for v in record["distill"].values())
            assert record["distill_levels"] and all(math.isfinite(v) for v in record["distill_levels"])
            assert record["fpn_grad_norm"] > 0  # the distillation gradient reaches the student's FPN
            assert math.isfinite(record["grad_ratio"]) and record["grad_ratio"] > 0


def test_one_stage_distillation_runs(distill_example):
    result = distill_example.main(["--loss", "fgd", *SHORT])
    _check_history(result["history"], distilled=True)


def test_baseline_and_evaluation(distill_example):
    result = distill_example.main(["--loss", "none", "--eval", "--num-val", "2", *SHORT])
    _check_history(result["history"], distilled=False)
    assert all(math.isfinite(v) for v in result["student_ap"].values())


def test_two_stage_feature_and_roi_distillation(distill_example):
    args = ["--detector", "fasterrcnn", "--loss", "mimic", "--roi-loss", "defeat_roi_kd", *SHORT]
    result = distill_example.main(args)
    _check_history(result["history"], distilled=True)
    assert {"feature", "roi"} <= set(result["history"][0]["distill"])


def test_grad_ratio_sets_the_weight(distill_example):
    result = distill_example.main(["--detector", "fcos", "--loss", "pkd", "--grad-ratio", "0.5", *SHORT])
    _check_history(result["history"], distilled=True)
    assert result["history"][0]["grad_ratio"] == pytest.approx(0.5, rel=1e-4)


def test_tap_reads_boxes_in_the_padded_frame(distill_example):
    torch.manual_seed(0)
    detector = distill_example.build_detector("fasterrcnn", "resnet18", 64, 16).train()
    images, targets = zip(*(distill_example.make_image(i, 64, seed=3) for i in range(2)))
    with DetectorTap(detector) as tap:
        detector(list(images), list(targets))
    height, width = tap.image_size
    assert tap.images.tensors.shape[-2:] == (height, width) and height % 32 == 0 and width % 32 == 0
    for image, target, boxes, (h, w) in zip(images, targets, tap.gt_boxes, tap.images.image_sizes):
        scale = torch.tensor([w / image.shape[-1], h / image.shape[-2]] * 2)
        torch.testing.assert_close(boxes, target["boxes"] * scale, rtol=1e-4, atol=1e-3)
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert [f.shape[-1] for f in tap.fpn_features] == [math.ceil(width / s) for s in (4, 8, 16, 32, 64)]
    labels = tap.roi_labels()
    assert [len(r) for r in tap.rois] == [len(lab) for lab in labels]
    assert tap.class_logits.shape[0] == sum(len(r) for r in tap.rois)
    assert all(((lab >= 0) & (lab < distill_example.NUM_CLASSES)).all() for lab in labels)
    assert any((lab > 0).any() for lab in labels)  # the ground-truth boxes are among the sampled RoIs


def test_compiled_loss_gets_padded_boxes(distill_example):
    result = distill_example.main(["--loss", "defeat", "--compile", *SHORT])
    for record in result["history"]:
        assert record["distill"] and all(math.isfinite(v) for v in record["distill"].values())
        assert record["fpn_grad_norm"] > 0
    loss = distill_example.build_feature_loss("defeat", 8, two_stage=False)
    tap = type("Tap", (), {"gt_boxes": [torch.zeros(1, 4), torch.zeros(3, 4)], "image_size": (64, 96), "rois": None})()
    inputs = distill_example.feature_loss_inputs(loss, tap, box_capacity=5)
    assert inputs["gt_boxes"].shape == (2, 5, 4) and inputs["gt_mask"].sum(dim=1).tolist() == [1, 3]
    assert torch.equal(inputs["image_size"], torch.tensor([64, 96]))
