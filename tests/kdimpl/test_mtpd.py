"""MTPD: the teacher schedule and checkpoint hand-overs against Shengcao-Cao/MTPD, the stage loss against yzd-v/MGD."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from kdimpl import (  # noqa: E402
    MGDLoss,
    MTPDSchedule,
    MTPDStage,
    mgd_random_mask,
    mtpd_inherit_teacher_weights,
    mtpd_student_weights,
)

FIXTURES = Path(__file__).parent / "fixtures" / "mtpd"
README_ORDERS = {  # the teacher sequences of the official README, by the distiller config's teacher checkpoint
    "retinanet_r50": ("retinanet_r101", "retinanet_x101_64x4d"),
    "retinanet_r50_swin": ("retinanet_swin-t", "retinanet_swin-s"),
    "mask_rcnn_r50": ("cascade_mask_rcnn_r50", "cascade_mask_rcnn_x101_32x4d"),
    "mask_rcnn_r50_swin": ("mask_rcnn_swin-t", "mask_rcnn_swin-s"),
    "reppoints_r50": ("reppoints_moment_r101", "reppoints_moment_x101"),
}


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURES / "official_mtpd.pt", weights_only=True)


@pytest.fixture(scope="module")
def configs():
    return json.loads((FIXTURES / "official_configs.json").read_text())


@pytest.mark.parity
@pytest.mark.parametrize("tag, cascade", [("cascade", True), ("swin", False)])
def test_inheritance_matches_official(official, tag, cascade):
    result = mtpd_inherit_teacher_weights(official[f"{tag}_teacher"], official[f"{tag}_student_before"], cascade_teacher=cascade)
    expected = official[f"{tag}_student_after"]
    assert list(result) == list(expected)
    for name in expected:
        torch.testing.assert_close(result[name], expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.parity
def test_inheritance_quirks_visible_in_the_official_result(official):
    before, after = official["swin_student_before"], official["swin_student_after"]
    # a mismatched lateral conv keeps the student's weight but takes the teacher's bias
    assert torch.equal(after["neck.lateral_convs.0.conv.weight"], before["neck.lateral_convs.0.conv.weight"])
    assert torch.equal(after["neck.lateral_convs.0.conv.bias"], official["swin_teacher"]["neck.lateral_convs.0.conv.bias"])
    assert torch.equal(after["backbone.conv1.weight"], before["backbone.conv1.weight"])
    # cascade: the class-agnostic regressor of the first stage, tiled per class
    teacher_reg = official["cascade_teacher"]["roi_head.bbox_head.0.fc_reg.weight"]
    assert torch.equal(official["cascade_student_after"]["roi_head.bbox_head.fc_reg.weight"], teacher_reg.repeat(80, 1))


def test_cascade_regressor_tiles_follow_the_student_class_count():
    teacher = {"roi_head.bbox_head.0.fc_reg.weight": torch.arange(8.0).view(4, 2),
               "roi_head.bbox_head.0.fc_reg.bias": torch.arange(4.0),
               "roi_head.bbox_head.1.fc_reg.bias": torch.ones(4),
               "roi_head.mask_rcnn_extra.w": torch.ones(1)}
    student = {"roi_head.bbox_head.fc_reg.weight": torch.zeros(12, 2), "roi_head.bbox_head.fc_reg.bias": torch.zeros(12)}
    out = mtpd_inherit_teacher_weights(teacher, student, cascade_teacher=True)
    assert torch.equal(out["roi_head.bbox_head.fc_reg.bias"], torch.arange(4.0).repeat(3))
    assert torch.equal(out["roi_head.bbox_head.fc_reg.weight"][4:8], teacher["roi_head.bbox_head.0.fc_reg.weight"])
    assert set(out) == set(student)
    # without the cascade flag the stage-indexed names do not exist in the student: nothing is copied
    plain = mtpd_inherit_teacher_weights(teacher, student)
    assert all(torch.equal(plain[k], student[k]) for k in student)


def test_inheritance_copies_and_keeps_dtype():
    teacher = {"neck.w": torch.ones(3, dtype=torch.float64)}
    student = {"neck.w": torch.zeros(3)}
    out = mtpd_inherit_teacher_weights(teacher, student)
    assert out["neck.w"].dtype == torch.float32 and out["neck.w"].data_ptr() != teacher["neck.w"].data_ptr()
    assert torch.equal(student["neck.w"], torch.zeros(3))  # the input is not modified


@pytest.mark.parity
@pytest.mark.parametrize("preset", MTPDSchedule.PRESETS)
def test_presets_match_official_configs(configs, preset):
    schedule = MTPDSchedule.from_preset(preset)
    assert len(schedule) == len(README_ORDERS[preset])
    for stage, expected_teacher in zip(schedule, README_ORDERS[preset]):
        config = configs[stage.teacher]
        assert config["teacher_checkpoint"].startswith(expected_teacher)
        assert stage.loss_weight == config["alpha_mgd"]
        assert stage.mask_ratio == config["lambda_mgd"]
        assert stage.num_levels == len(config["student_modules"]) == len(config["teacher_modules"])
        assert config["student_modules"] == config["teacher_modules"]
        assert all(pair == [256, 256] for pair in config["channels"])
        assert stage.cascade_teacher == ("cascade" in config["teacher_checkpoint"])
        assert config["init_student"]  # every official config inherits; the README overrides it after stage 1
        assert stage.init_from_teacher == (stage.index == 0)
        assert stage.epochs == 12 and all(base.endswith("_1x_coco.py") for base in config["base"])
    assert set(configs) == {stage.teacher for name in MTPDSchedule.PRESETS for stage in MTPDSchedule.from_preset(name)}


@pytest.mark.parity
def test_stage_loss_matches_official_mgd_sum(official):
    schedule = MTPDSchedule.from_preset("mask_rcnn_r50")
    criterion = schedule.build_loss(schedule[0], teacher_channels=4)
    students = [s.clone().requires_grad_(True) for s in official["stage_students"]]
    for level, loss in enumerate(criterion.losses):
        loss.generator_student.load_state_dict(official[f"stage_generation_{level}"])
        # the official mask of level l is torch.rand after torch.manual_seed(20 + l): a CPU generator so seeded
        loss.rng = torch.Generator().manual_seed(20 + level)
        mask = mgd_random_mask(students[level], loss.mask_ratio, rng=torch.Generator().manual_seed(20 + level))
        torch.testing.assert_close(mask, official[f"stage_mask_{level}"], rtol=0, atol=0)
    value = criterion(students, official["stage_teachers"])
    value.backward()
    torch.testing.assert_close(value.detach(), official["stage_loss"], rtol=1e-5, atol=1e-12)
    for grad, expected in zip((s.grad for s in students), official["stage_grads"]):
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-12)


def test_build_loss_gives_fresh_per_level_pieces():
    schedule = MTPDSchedule(["a", "b", "c"], num_levels=3)
    first, second = schedule.build_loss(0, teacher_channels=8), schedule.build_loss(1, teacher_channels=8)
    assert all(isinstance(loss, MGDLoss) for loss in first.losses)
    ids_first = {id(p) for p in first.parameters()}
    assert len(list(first.parameters())) == 3 * 4  # two convs with bias per level
    assert ids_first.isdisjoint(id(p) for p in second.parameters())
    adapted = schedule.build_loss(2, teacher_channels=8, student_channels=4)
    assert all(hasattr(loss, "adapter_student") for loss in adapted.losses)
    students = [torch.randn(2, 4, 8 // 2**i, 8 // 2**i) for i in range(3)]
    teachers = [torch.randn(2, 8, *s.shape[2:]) for s in students]
    value = adapted(students, teachers, rng=torch.Generator().manual_seed(0))
    value.backward()
    assert all(p.grad is not None for p in adapted.parameters())


def test_schedule_stages_and_epochs():
    schedule = MTPDSchedule(["t1", "t2"], epochs_per_stage=3, cascade_teachers=[True, False])
    assert [s.teacher for s in schedule] == ["t1", "t2"] and schedule.total_epochs == 6
    assert [schedule.stage_at(e).index for e in range(6)] == [0, 0, 0, 1, 1, 1]
    assert schedule[0] == MTPDStage(0, "t1", True, True, 2e-5, 0.65, 5, 3)
    assert not schedule[1].init_from_teacher
    assert not MTPDSchedule(["t"], inherit_teacher_weights=False)[0].init_from_teacher
    with pytest.raises(ValueError, match="epoch must be in"):
        schedule.stage_at(6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(teachers=[]), "non-empty"),
        (dict(teachers="t1"), "non-empty"),
        (dict(teachers=["a"], num_levels=0), "num_levels"),
        (dict(teachers=["a"], epochs_per_stage=1.5), "epochs_per_stage"),
        (dict(teachers=["a", "b"], cascade_teachers=[True]), "cascade_teachers"),
        (dict(teachers=["a"], mask_ratio=1.5), "mask_ratio"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MTPDSchedule(**kwargs)


def test_unknown_preset_lists_presets():
    with pytest.raises(KeyError, match="retinanet_r50"):
        MTPDSchedule.from_preset("retina")


def test_student_weights_drop_teacher_and_loss_pieces():
    checkpoint = {"student.neck.w": torch.ones(1), "teacher.neck.w": torch.zeros(1), "distill_losses.loss_mgd_fpn_0.g": torch.ones(1)}
    assert list(mtpd_student_weights(checkpoint)) == ["neck.w"]
    with pytest.raises(ValueError, match="prefix"):
        mtpd_student_weights(checkpoint, prefix="")


@pytest.mark.parity
def test_student_weights_match_official_transfer():
    official = torch.load(FIXTURES / "official_transfer.pt", weights_only=True)
    result = mtpd_student_weights(official["distiller_state_dict"])
    assert list(result) == list(official["student_state_dict"])
    for name, value in official["student_state_dict"].items():
        assert torch.equal(result[name], value)
