"""Learnable pieces from official checkpoints: their state-dict keys renamed to the module twins'.

Each function takes an official checkpoint's ``state_dict`` (or the whole checkpoint: a
``"state_dict"`` entry is unwrapped, as mmcv and mmengine save it) and the ``prefix`` of one level's
pieces in it, and returns the state dict of the matching module twin, ready for
``load_state_dict``. Every official key under ``prefix`` must be known and every key of the twin
must be found, so a changed layout fails with the keys named rather than loading half the
weights. With :class:`kdimpl.MultiLevelLoss`, :func:`multilevel_state_dict` converts every level
at once:

    >>> import torch
    >>> from kdimpl import FGDLoss, MultiLevelLoss
    >>> from kdimpl.checkpoints import fgd_state_dict, multilevel_state_dict
    >>> official = {}  # what yzd-v/FGD's distiller saves, five FPN levels of 4 channels
    >>> for level in range(5):
    ...     for side in "st":
    ...         piece = f"distill_losses.loss_fgd_fpn_{level}."
    ...         official[piece + f"conv_mask_{side}.weight"] = torch.randn(1, 4, 1, 1)
    ...         official[piece + f"conv_mask_{side}.bias"] = torch.randn(1)
    ...         for i, shape in ((0, (2, 4, 1, 1)), (1, (2, 1, 1)), (3, (4, 2, 1, 1))):
    ...             official[piece + f"channel_add_conv_{side}.{i}.weight"] = torch.randn(shape)
    ...             official[piece + f"channel_add_conv_{side}.{i}.bias"] = torch.randn(shape[0] if i != 1 else shape)
    >>> criterion = MultiLevelLoss([FGDLoss(channels=4) for _ in range(5)])
    >>> prefixes = [f"distill_losses.loss_fgd_fpn_{level}." for level in range(5)]
    >>> criterion.load_state_dict(multilevel_state_dict(fgd_state_dict, {"state_dict": official}, prefixes))
    <All keys matched successfully>

Where the layouts were read: yzd-v/FGD@c03a6cf ``mmdet/distillation/losses/fgd.py`` (``FeatureLoss``,
saved by ``DetectionDistiller`` under ``distill_losses.<name>.``), yzd-v/MGD@2c9da0b
``det/mmdet/distillation/losses/mgd.py`` (``FeatureLoss``, same distiller), ggjy/DeFeat.pytorch@c46a793
``mmdet/models/detectors/two_stage_kd.py`` (``neck_adapt``), duzhixing/FRS@decd60c ``neck/adap.py``
(``ADAP``, the detector's ``stu_feature_adap``) and open-mmlab/mmrazor@90c7af1
``fbkd_connector.py`` (``FBKDStudentConnector``, ``FBKDTeacherConnector``).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from torch import Tensor

__all__ = [
    "channel_adapter_state_dict",
    "defeat_state_dict",
    "fgd_state_dict",
    "fkd_state_dict",
    "frs_state_dict",
    "mgd_state_dict",
    "multilevel_state_dict",
]

StateDict = Mapping[str, Tensor]

# official key prefix (after the level's prefix) -> the twin's
_GLOBAL_CONTEXT = {
    "conv_mask_s.": "global_student.conv_mask.",
    "channel_add_conv_s.": "global_student.channel_add.",
    "conv_mask_t.": "global_teacher.conv_mask.",
    "channel_add_conv_t.": "global_teacher.channel_add.",
}
_NON_LOCAL = {"theta.conv.": "theta.", "phi.0.0.conv.": "phi.", "g.0.0.conv.": "g.", "conv_out.conv.": "out.",
              "conv_out.bn.": "norm."}
_FBKD_STUDENT = {
    "adaptation_layers.": "adapter_student.feature.",
    "channel_wise_adaptation.": "adapter_student.channel.",
    "spatial_wise_adaptation.": "adapter_student.spatial.",
    "non_local_adaptation.": "adapter_student.relation.",
    **{"student_non_local." + k: "adapter_student.non_local." + v for k, v in _NON_LOCAL.items()},
}
_FBKD_TEACHER = {"teacher_non_local." + k: "non_local_teacher." + v for k, v in _NON_LOCAL.items()}


def _unwrap(state_dict: StateDict) -> StateDict:
    inner = state_dict.get("state_dict") if isinstance(state_dict, Mapping) else None
    return inner if isinstance(inner, Mapping) else state_dict


def _rename(state_dict: StateDict, prefix: str, mapping: Mapping[str, str], what: str,
            skip: Sequence[str] = ()) -> dict[str, Tensor]:
    """The keys under ``prefix``, renamed by the longest matching official prefix in ``mapping``."""
    state_dict = _unwrap(state_dict)
    keys = [key for key in state_dict if key.startswith(prefix)]
    if not keys:
        sample = ", ".join(list(state_dict)[:4]) or "none"
        raise KeyError(f"{what}: no key starts with prefix {prefix!r} (the checkpoint's first keys: {sample})")
    out, unknown = {}, []
    for key in keys:
        rest = key[len(prefix):]
        if any(rest.startswith(s) for s in skip):
            continue
        old = max((o for o in mapping if rest.startswith(o)), key=len, default=None)
        if old is None:
            unknown.append(key)
        else:
            out[mapping[old] + rest[len(old):]] = state_dict[key]
    if unknown:
        raise KeyError(f"{what}: unknown official key(s) under {prefix!r}: {', '.join(unknown)}")
    return out


def fgd_state_dict(state_dict: StateDict, prefix: str = "") -> dict[str, Tensor]:
    """Official FGD ``FeatureLoss`` global-context blocks to :class:`kdimpl.FGDLoss` ``(channels=C)``.

    Args:
        state_dict: the official checkpoint or its ``state_dict``.
        prefix: one level's ``FeatureLoss``, e.g. ``"distill_losses.loss_fgd_fpn_0."`` (yzd-v/FGD
            names the loss of ``neck.fpn_convs.<i>`` ``loss_fgd_fpn_<i>``).

    ``conv_mask_{s,t}`` and ``channel_add_conv_{s,t}`` become ``global_{student,teacher}``. The
    ``align`` convolution (student and teacher widths differ) is not part of the twin: load it into
    :class:`kdimpl.ChannelAdapter` with :func:`channel_adapter_state_dict` (``prefix + "align."``).
    """
    return _rename(state_dict, prefix, _GLOBAL_CONTEXT, "fgd_state_dict", skip=("align.",))


def mgd_state_dict(state_dict: StateDict, prefix: str = "") -> dict[str, Tensor]:
    """Official MGD ``FeatureLoss`` generator (and ``align``) to :class:`kdimpl.MGDLoss`.

    Args:
        state_dict: the official checkpoint or its ``state_dict``.
        prefix: one level's ``FeatureLoss``, e.g. ``"distill_losses.loss_mgd_fpn_0."``.

    ``generation`` becomes ``generator_student`` and ``align`` becomes ``adapter_student.proj``, so
    build the twin with ``student_channels`` and ``teacher_channels`` when the checkpoint has an
    ``align``.
    """
    return _rename(state_dict, prefix, {"generation.": "generator_student.", "align.": "adapter_student.proj."},
                   "mgd_state_dict")


def channel_adapter_state_dict(state_dict: StateDict, prefix: str) -> dict[str, Tensor]:
    """An official 1x1 ``align`` convolution (FGD, MGD) to :class:`kdimpl.ChannelAdapter`.

    Args:
        state_dict: the official checkpoint or its ``state_dict``.
        prefix: the convolution's, e.g. ``"distill_losses.loss_fgd_fpn_0.align."``.
    """
    return _rename(state_dict, prefix, {"": "proj."}, "channel_adapter_state_dict")


def defeat_state_dict(state_dict: StateDict, prefix: str) -> dict[str, Tensor]:
    """One level of DeFeat's ``neck_adapt`` to :class:`kdimpl.DeFeatLoss` ``(student_channels=...)``.

    Args:
        state_dict: the official checkpoint or its ``state_dict``.
        prefix: the level's adapter, ``"neck_adapt.<level>."`` (a ``Sequential`` whose ``0`` is the
            3x3 convolution).
    """
    return _rename(state_dict, prefix, {"0.": "adapter_student."}, "defeat_state_dict")


def frs_state_dict(state_dict: StateDict, prefix: str) -> dict[str, Tensor]:
    """One level of FRS's ``ADAP`` adapter to :class:`kdimpl.FRSFeatureLoss` ``(student_channels=...)``.

    Args:
        state_dict: the official checkpoint or its ``state_dict``.
        prefix: the level's convolution, ``"stu_feature_adap.conv.<level>."``. The official configs
            use ``kernel=3`` and no ReLU, which is the twin's adapter; a ``with_relu=True`` adapter
            needs the ReLU added by hand.
    """
    return _rename(state_dict, prefix, {"": "adapter_student."}, "frs_state_dict")


def fkd_state_dict(state_dict: StateDict, student_prefix: str, teacher_prefix: str) -> dict[str, Tensor]:
    """mmrazor's FBKD connectors to :class:`kdimpl.FKDLoss` ``(channels=C, non_local_pool=4)``.

    Args:
        state_dict: the mmrazor checkpoint or its ``state_dict``.
        student_prefix: the ``FBKDStudentConnector``'s, e.g. ``"distiller.connectors.loss_s0_sfeat."``.
        teacher_prefix: the ``FBKDTeacherConnector``'s, e.g. ``"distiller.connectors.loss_s0_tfeat."``.

    mmrazor's ``sub_sample=True`` with ``maxpool_stride=2`` pools keys and values twice (mmcv's 2x2,
    then its own), which is the twin's ``non_local_pool=4``; ``reduction=2`` is ``non_local_reduction=2``.
    BatchNorm running statistics are renamed with the weights.
    """
    out = _rename(state_dict, student_prefix, _FBKD_STUDENT, "fkd_state_dict (student connector)")
    out.update(_rename(state_dict, teacher_prefix, _FBKD_TEACHER, "fkd_state_dict (teacher connector)"))
    return out


def multilevel_state_dict(
    convert: Callable[..., dict[str, Tensor]], state_dict: StateDict, prefixes: Sequence, **kwargs
) -> dict[str, Tensor]:
    """``convert`` applied per level, keyed for :class:`kdimpl.MultiLevelLoss` (``losses.<level>.``).

    Args:
        convert: one of this module's functions.
        state_dict: the official checkpoint or its ``state_dict``.
        prefixes: one prefix per level, in the order of the ``MultiLevelLoss``'s losses (a tuple of
            prefixes per level for :func:`fkd_state_dict`).
    """
    out = {}
    for level, prefix in enumerate(prefixes):
        args = prefix if isinstance(prefix, tuple) else (prefix,)
        out.update({f"losses.{level}.{key}": value for key, value in convert(state_dict, *args, **kwargs).items()})
    return out
