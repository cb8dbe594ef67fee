r"""Multi-Teacher Progressive Distillation (MTPD), Cao et al., ICML 2023.

MTPD is a schedule, not a new loss: the student is distilled from a sequence of teachers, one
after the other, each stage a full training run with MGD on the FPN outputs (official README and configs):

.. math::
    \theta_k = \arg\min_\theta \; \mathcal{L}_{det}(\theta)
        + \alpha \sum_{l=1}^{L} \mathcal{L}_{MGD}\big(F^S_l(\theta), F^{T_k}_l\big),
    \qquad k = 1, \ldots, K,

each stage starting from the previous stage's student :math:`\theta_{k-1}`; :math:`\theta_0` is
the student with every non-backbone weight (neck, heads) copied from teacher :math:`T_1`.
:class:`MTPDSchedule` holds the stages and builds each stage's loss from
:class:`kdimpl.MGDLoss`; :func:`mtpd_inherit_teacher_weights` and :func:`mtpd_student_weights`
are the two checkpoint hand-overs.

Reference:
    Shengcao Cao, Mengtian Li, James Hays, Deva Ramanan, Yu-Xiong Wang, Liang-Yan Gui. "Learning
    Lightweight Object Detectors via Multi-Teacher Progressive Distillation". ICML 2023.
    arXiv:2308.09105. Official code: Shengcao-Cao/MTPD@42cd287
    (``mtpd_mgd/mmdet/distillation/distillers/detection_distiller.py::DetectionDistiller``,
    ``mtpd_mgd/configs/distillers/mgd/*``, ``mtpd_mgd/tools/pth_transfer.py``) on top of
    yzd-v/MGD@2c9da0b.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from .._checks import check_options, check_positive
from ..levels import MultiLevelLoss
from .mgd import MGDLoss

__all__ = ["MTPDStage", "MTPDSchedule", "mtpd_inherit_teacher_weights", "mtpd_student_weights"]


@dataclass(frozen=True)
class MTPDStage:
    """One stage of :class:`MTPDSchedule`: distil from ``teacher`` with MGD for ``epochs`` epochs.

    Attributes:
        index: the stage's position, 0 for the first teacher.
        teacher: the teacher's name (for the presets, the official distiller config's file stem).
        init_from_teacher: start the student from the teacher's non-backbone weights
            (:func:`mtpd_inherit_teacher_weights`); true for the first stage only. Later stages
            start from the previous stage's student (:func:`mtpd_student_weights`).
        cascade_teacher: the teacher is a Cascade (Mask) R-CNN whose first-stage RoI heads map onto
            the student's single-stage heads.
        loss_weight: :math:`\\alpha_{mgd}`, the weight of the MGD sum over levels.
        mask_ratio: MGD's drop probability :math:`\\lambda_{mgd}`.
        num_levels: number of distilled FPN outputs.
        epochs: length of the stage (the official runs: a 1x schedule, 12 epochs, per teacher).
    """

    index: int
    teacher: str
    init_from_teacher: bool
    cascade_teacher: bool
    loss_weight: float
    mask_ratio: float
    num_levels: int
    epochs: int


# Teacher sequences of the official README and the MGD settings of the official distiller configs
# (one config per teacher; file stems in ``teachers``).
_PRESETS: dict[str, dict] = {
    "retinanet_r50": dict(
        teachers=("retina_r101_distill_retina_r50_fpn_1x_coco", "retina_rx101_64x4d_distill_retina_r50_fpn_1x_coco"),
        loss_weight=2e-5, mask_ratio=0.65, num_levels=5,
    ),
    "retinanet_r50_swin": dict(
        teachers=("retina_swin-t-p4-w7_distill_retina_r50_fpn_1x_coco", "retina_swin-s-p4-w7_distill_retina_r50_fpn_1x_coco"),
        loss_weight=2e-5, mask_ratio=0.65, num_levels=5,
    ),
    "mask_rcnn_r50": dict(
        teachers=(
            "cascade_mask_rcnn_r50_dcn_distill_mask_rcnn_r50_fpn_1x_coco",
            "cascade_mask_rcnn_rx101_32x4d_dcn_distill_mask_rcnn_r50_fpn_1x_coco",
        ),
        loss_weight=5e-7, mask_ratio=0.45, num_levels=4, cascade_teachers=True,
    ),
    "mask_rcnn_r50_swin": dict(
        teachers=("mask_rcnn_swin-t-p4-w7_distill_mask_rcnn_r50_fpn_1x_coco", "mask_rcnn_swin-s-p4-w7_distill_mask_rcnn_r50_fpn_1x_coco"),
        loss_weight=5e-7, mask_ratio=0.45, num_levels=4,
    ),
    "reppoints_r50": dict(
        teachers=("reppoints_r101_distill_reppoints_r50_fpn_1x_coco", "reppoints_rx101_64x4d_dcn_distill_reppoints_r50_fpn_1x_coco"),
        loss_weight=2e-5, mask_ratio=0.65, num_levels=5,
    ),
}


class MTPDSchedule:
    r"""The progressive teacher schedule of MTPD, one :class:`MTPDStage` per teacher.

    Stage :math:`k` trains the student with teacher :math:`T_k` (detection loss plus
    :math:`\alpha \sum_l \mathcal{L}_{MGD}` over the FPN outputs) for ``epochs_per_stage`` epochs,
    starting from the student of stage :math:`k-1`; the first stage starts from the student
    with teacher :math:`T_1`'s neck and heads. Each stage has its own MGD generation blocks
    (:meth:`build_loss` makes fresh ones; the official hand-over keeps only the student) and,
    in the official runs, its own optimiser and learning-rate schedule.

    Args:
        teachers: the teachers in the order they are used (every official sequence starts with the
            weaker teacher: R101 before X101, Swin-T before Swin-S).
        loss_weight: :math:`\alpha_{mgd}` (official: 2e-5 for RetinaNet/RepPoints, 5e-7 for Mask R-CNN).
        mask_ratio: :math:`\lambda_{mgd}` (official: 0.65 for RetinaNet/RepPoints, 0.45 for Mask R-CNN).
        num_levels: FPN outputs distilled (official: 5; 4 for Mask R-CNN, whose extra level is a
            max-pool and is not distilled).
        epochs_per_stage: epochs of each stage (official: 12, a 1x schedule per teacher).
        cascade_teachers: whether the teachers are Cascade (Mask) R-CNNs (one bool for all, or
            one per teacher); only the first stage's flag is used (weight inheritance).
        inherit_teacher_weights: start the first stage from teacher 1's non-backbone weights
            (the official ``init_student=True``).

    Example:
        >>> schedule = MTPDSchedule.from_preset("retinanet_r50")
        >>> len(schedule), schedule.total_epochs, schedule.stage_at(13).index
        (2, 24, 1)
        >>> criterion = schedule.build_loss(schedule[1], teacher_channels=8)
        >>> len(criterion.losses), criterion.loss_weight
        (5, 2e-05)

    Notes:
        The official configs all set ``init_student=True``; the README overrides it with
        ``init_student=False`` and ``student_pretrained=<stage k-1 student>`` on the command
        line for every later stage. Here only the first stage inherits. The official code
        detects a Cascade teacher by the substring ``'cascade'`` in its checkpoint path; here it
        is the explicit ``cascade_teachers``.
    """

    PRESETS = tuple(_PRESETS)

    def __init__(
        self,
        teachers: Sequence[str],
        *,
        loss_weight: float = 2e-5,
        mask_ratio: float = 0.65,
        num_levels: int = 5,
        epochs_per_stage: int = 12,
        cascade_teachers: bool | Sequence[bool] = False,
        inherit_teacher_weights: bool = True,
    ) -> None:
        if isinstance(teachers, str) or len(teachers) == 0:
            raise ValueError(f"teachers must be a non-empty sequence of teacher names, got {teachers!r}")
        check_options(loss_weight=loss_weight, mask_ratio=mask_ratio)
        for name, value in (("num_levels", num_levels), ("epochs_per_stage", epochs_per_stage)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        cascade = [cascade_teachers] * len(teachers) if isinstance(cascade_teachers, bool) else list(cascade_teachers)
        if len(cascade) != len(teachers):
            raise ValueError(f"cascade_teachers has {len(cascade)} entries for {len(teachers)} teachers")
        self.stages = tuple(
            MTPDStage(
                index=k, teacher=str(teacher), init_from_teacher=inherit_teacher_weights and k == 0,
                cascade_teacher=bool(cascade[k]), loss_weight=loss_weight, mask_ratio=mask_ratio,
                num_levels=num_levels, epochs=epochs_per_stage,
            )
            for k, teacher in enumerate(teachers)
        )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> MTPDSchedule:
        """The official schedule ``name`` (one of :attr:`PRESETS`): teachers and MGD settings of its configs.

        ``retinanet_r50`` (R101 then X101-64x4d), ``retinanet_r50_swin`` (Swin-T then Swin-S),
        ``mask_rcnn_r50`` (Cascade Mask R-CNN R50-DCN then X101-32x4d-DCN), ``mask_rcnn_r50_swin``
        (Mask R-CNN Swin-T then Swin-S), ``reppoints_r50`` (R101 then X101-64x4d-DCN); keyword
        ``overrides`` replace constructor arguments.
        """
        if name not in _PRESETS:
            raise KeyError(f"unknown MTPD preset {name!r}; presets: {', '.join(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    def __len__(self) -> int:
        return len(self.stages)

    def __iter__(self) -> Iterator[MTPDStage]:
        return iter(self.stages)

    def __getitem__(self, index: int) -> MTPDStage:
        return self.stages[index]

    @property
    def total_epochs(self) -> int:
        """Epochs of all stages together."""
        return sum(stage.epochs for stage in self.stages)

    def stage_at(self, epoch: int) -> MTPDStage:
        """The stage that epoch ``epoch`` (0-based, counted over the whole schedule) belongs to."""
        if not 0 <= epoch < self.total_epochs:
            raise ValueError(f"epoch must be in [0, {self.total_epochs}), got {epoch}")
        for stage in self.stages:
            if epoch < stage.epochs:
                return stage
            epoch -= stage.epochs
        raise AssertionError("unreachable")

    def build_loss(
        self, stage: MTPDStage | int, *, teacher_channels: int = 256, student_channels: int | None = None
    ) -> MultiLevelLoss:
        """A fresh distillation loss for ``stage``: one :class:`kdimpl.MGDLoss` per level, summed, times :math:`\\alpha`.

        Each level owns new generation blocks (and a 1x1 channel adapter when ``student_channels``
        differs), as the official code builds one ``FeatureLoss`` per hooked FPN output per run.
        Call it with the per-level student and teacher features, finest first; each level draws
        its own mask (set ``loss.losses[l].rng`` to a ``torch.Generator`` for reproducible masks).
        """
        stage = self.stages[stage] if isinstance(stage, int) else stage
        check_positive(teacher_channels, "teacher_channels")
        levels = [
            MGDLoss(student_channels=student_channels, teacher_channels=teacher_channels, mask_ratio=stage.mask_ratio)
            for _ in range(stage.num_levels)
        ]
        return MultiLevelLoss(levels, loss_weight=stage.loss_weight)


def mtpd_inherit_teacher_weights(
    teacher_state_dict: Mapping[str, Tensor],
    student_state_dict: Mapping[str, Tensor],
    *,
    cascade_teacher: bool = False,
) -> dict[str, Tensor]:
    """The first stage's initialisation: the student's state dict with the teacher's non-backbone weights.

    Every teacher entry outside ``backbone.`` whose name and shape exist in the student replaces
    the student's; everything else keeps the student's value (mmdet key layout). For a Cascade
    teacher only its first RoI stage is used: ``roi_head.bbox_head.0.*`` and
    ``roi_head.mask_head.0.*`` become ``roi_head.bbox_head.*`` and ``roi_head.mask_head.*``
    (later stages dropped), and the class-agnostic ``fc_reg`` weight and bias (4 outputs) are
    tiled once per class to fit the student's class-specific regressor.

    Args:
        teacher_state_dict: the teacher detector's ``state_dict``.
        student_state_dict: the freshly initialised student detector's ``state_dict``.
        cascade_teacher: map a Cascade (Mask) R-CNN teacher's first stage onto the student's heads.

    Returns:
        A new state dict for the student, loadable with ``strict=True``.

    Example:
        >>> import torch
        >>> teacher = {"backbone.w": torch.ones(2), "neck.w": torch.ones(2)}
        >>> student = {"backbone.w": torch.zeros(2), "neck.w": torch.zeros(2)}
        >>> {k: v.tolist() for k, v in mtpd_inherit_teacher_weights(teacher, student).items()}
        {'backbone.w': [0.0, 0.0], 'neck.w': [1.0, 1.0]}

    Notes:
        The official code loads the mapped weights with mmcv's non-strict ``load_state_dict``,
        which skips (and prints) entries whose shape differs: with a Swin teacher the neck's
        lateral convolution weights (other input widths) stay the student's while their biases
        are copied; this function reproduces that. The official code tiles the Cascade
        regressor a hard-coded 80 times (COCO) and so skips it for other class counts; here the
        number of tiles follows the student's regressor.
    """
    inherited: dict[str, Tensor] = {}
    for name, value in teacher_state_dict.items():
        if name.startswith("backbone."):
            continue
        if cascade_teacher and name.startswith("roi_head"):
            for head in ("bbox_head", "mask_head"):
                prefix = f"roi_head.{head}.0."
                if name.startswith(prefix):
                    name = f"roi_head.{head}." + name[len(prefix):]
                    break
            else:
                continue  # later cascade stages and any other RoI-head entry
            target = student_state_dict.get(name)
            if name.startswith("roi_head.bbox_head.fc_reg.") and target is not None and value.shape[0] > 0:
                tiles, rest = divmod(target.shape[0], value.shape[0])
                if rest == 0 and tiles > 0:
                    value = value.repeat(tiles, *([1] * (value.dim() - 1)))
        inherited[name] = value
    result = dict(student_state_dict)
    for name, value in inherited.items():
        if name in result and result[name].shape == value.shape:
            result[name] = value.detach().clone().to(result[name].dtype)
    return result


def mtpd_student_weights(distiller_state_dict: Mapping[str, Tensor], prefix: str = "student.") -> dict[str, Tensor]:
    """The hand-over between stages: the student's own entries of a distillation checkpoint.

    Keeps the entries under ``prefix`` with the prefix removed and drops the teacher and the
    distillation losses' pieces (MGD generation blocks), so the next stage starts from the
    student alone with fresh generation blocks, as the official ``tools/pth_transfer.py`` does.

    Args:
        distiller_state_dict: the state dict of the module holding student, teacher and losses.
        prefix: the student's prefix in it (official: ``'student.'``).

    Returns:
        The student's state dict.

    Example:
        >>> import torch
        >>> mtpd_student_weights({"student.neck.w": torch.ones(1), "distill_losses.g": torch.ones(1)})
        {'neck.w': tensor([1.])}
    """
    if not prefix:
        raise ValueError("prefix must name the student's entries, e.g. 'student.'")
    return {name[len(prefix):]: value for name, value in distiller_state_dict.items() if name.startswith(prefix)}
