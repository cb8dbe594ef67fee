"""Official checkpoint keys to the module twins' (kdimpl.checkpoints).

The FGD, FKD (mmrazor FBKD), MGD and DeFeat parity tests load the fixtures' official weights through
these functions; here: FRS (its fixture stores no adapter weights, so a state dict with the official
``ADAP`` layout is built), the align convolutions, and the errors of a changed layout.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from kdimpl import ChannelAdapter, FGDLoss, FRSFeatureLoss, MGDLoss, MultiLevelLoss  # noqa: E402
from kdimpl.checkpoints import (  # noqa: E402
    channel_adapter_state_dict,
    fgd_state_dict,
    frs_state_dict,
    mgd_state_dict,
    multilevel_state_dict,
)


def _official_adap(levels: int, channels: int) -> dict[str, torch.Tensor]:
    """A detector state dict with FRS's ``stu_feature_adap`` (``ADAP``: ``conv`` = one 3x3 conv per level)."""
    detector = nn.Module()
    detector.stu_feature_adap = nn.Module()
    detector.stu_feature_adap.conv = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(levels))
    return detector.state_dict()


def test_frs_adapters_load_per_level_and_compute_the_official_adaptation():
    official = _official_adap(3, 4)
    criterion = MultiLevelLoss([FRSFeatureLoss(student_channels=4, teacher_channels=4) for _ in range(3)])
    prefixes = [f"stu_feature_adap.conv.{level}." for level in range(3)]
    criterion.load_state_dict(multilevel_state_dict(frs_state_dict, {"state_dict": official}, prefixes))
    x = torch.randn(2, 4, 5, 6)
    for level, loss in enumerate(criterion.losses):
        expected = nn.functional.conv2d(x, official[f"stu_feature_adap.conv.{level}.weight"],
                                        official[f"stu_feature_adap.conv.{level}.bias"], padding=1)
        torch.testing.assert_close(loss.adapter_student(x), expected)


def test_fgd_align_goes_to_a_channel_adapter():
    prefix = "distill_losses.loss_fgd_fpn_0."
    twin = FGDLoss(channels=4)
    state = {prefix + key: value.clone() for key, value in _official_fgd_keys(twin).items()}
    state[prefix + "align.weight"], state[prefix + "align.bias"] = torch.randn(4, 3, 1, 1), torch.randn(4)
    twin.load_state_dict(fgd_state_dict(state, prefix))  # align is not the twin's: skipped
    adapter = ChannelAdapter(3, 4)
    adapter.load_state_dict(channel_adapter_state_dict(state, prefix + "align."))
    assert torch.equal(adapter.proj.weight, state[prefix + "align.weight"])


def _official_fgd_keys(twin: FGDLoss) -> dict[str, torch.Tensor]:
    names = {"global_student.conv_mask.": "conv_mask_s.", "global_student.channel_add.": "channel_add_conv_s.",
             "global_teacher.conv_mask.": "conv_mask_t.", "global_teacher.channel_add.": "channel_add_conv_t."}
    out = {}
    for key, value in twin.state_dict().items():
        ours = next(o for o in names if key.startswith(o))
        out[names[ours] + key[len(ours):]] = torch.randn_like(value)
    return out


def test_an_unknown_official_key_is_named():
    state = {"distill_losses.loss_mgd_fpn_0.generation.0.weight": torch.zeros(1),
             "distill_losses.loss_mgd_fpn_0.projector.weight": torch.zeros(1)}
    message = (r"mgd_state_dict: unknown official key\(s\) under 'distill_losses.loss_mgd_fpn_0.': "
               r"distill_losses.loss_mgd_fpn_0.projector.weight")
    with pytest.raises(KeyError, match=message):
        mgd_state_dict(state, "distill_losses.loss_mgd_fpn_0.")


def test_a_prefix_with_no_key_shows_the_checkpoints_keys():
    with pytest.raises(KeyError, match=r"no key starts with prefix 'distill_losses.loss_fgd_fpn_9.' "
                                       r"\(the checkpoint's first keys: backbone.conv1.weight\)"):
        fgd_state_dict({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, "distill_losses.loss_fgd_fpn_9.")


def test_a_missing_piece_fails_at_load_state_dict():
    state = {"distill_losses.loss_mgd_fpn_0.generation.0.weight": torch.zeros(4, 4, 3, 3)}
    with pytest.raises(RuntimeError, match="Missing key"):
        MGDLoss(teacher_channels=4).load_state_dict(mgd_state_dict(state, "distill_losses.loss_mgd_fpn_0."))
