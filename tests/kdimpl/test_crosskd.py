"""CrossKD: cross-head helper, formulas against loops, parity with jbwang1997/CrossKD@87e156a (numbers only)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn

from kdimpl import (
    CrossKDBoxLoss,
    CrossKDClsLoss,
    MultiLevelLoss,
    bckd_cls_loss,
    crosskd_align_scale,
    crosskd_box_iou_loss,
    crosskd_box_loss,
    crosskd_cls_loss,
    crosskd_cross_head,
    crosskd_region_weights,
    multilevel_loss,
)

FIXTURES = Path(__file__).parent / "fixtures" / "crosskd"
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURES / "official_crosskd_gfl.pt")


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x):
        return x * self.scale


def _tail(state, tower, predictor, scale=None):
    """The teacher's last tower block (conv, GroupNorm, ReLU) and prediction conv, loaded from the fixture."""
    out_channels = state[f"{predictor}.weight"].shape[0]
    layers = [nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.GroupNorm(4, 8), nn.ReLU(), nn.Conv2d(8, out_channels, 3,
                                                                                                   padding=1)]
    if scale is not None:
        layers.append(_Scale())
    tail = nn.Sequential(*layers).double()
    mapping = {"0.weight": f"{tower}.conv.weight", "1.weight": f"{tower}.gn.weight", "1.bias": f"{tower}.gn.bias",
               "3.weight": f"{predictor}.weight", "3.bias": f"{predictor}.bias"}
    if scale is not None:
        mapping["4.scale"] = f"scales.{scale}.scale"
    tail.load_state_dict({ours: state[theirs] for ours, theirs in mapping.items()})
    return tail.requires_grad_(False).eval()


def _cross_level(fx, level):
    lv = fx["levels"][level]
    cls_tail = _tail(fx["teacher_head"], "cls_convs.3", "gfl_cls")
    reg_tail = _tail(fx["teacher_head"], "reg_convs.3", "gfl_reg", scale=level)
    s_cls_hold = lv["student_cls_hold"].clone().requires_grad_(True)
    s_reg_hold = lv["student_reg_hold"].clone().requires_grad_(True)
    cls = crosskd_cross_head(cls_tail, torch.relu(crosskd_align_scale(s_cls_hold, lv["teacher_cls_hold"])))
    box = crosskd_cross_head(reg_tail, torch.relu(crosskd_align_scale(s_reg_hold, lv["teacher_reg_hold"])))
    return lv, s_cls_hold, s_reg_hold, cls, box.float()  # the official GFL head casts box logits to float32

def test_parity_with_the_official_gfl_distiller(fx):
    total = 0
    holds = []
    for level in range(2):
        lv, s_cls_hold, s_reg_hold, cls, box = _cross_level(fx, level)
        torch.testing.assert_close(cls, lv["cross_cls"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(box, lv["cross_box"], rtol=1e-6, atol=1e-6)
        loss_cls = crosskd_cls_loss(cls, lv["teacher_cls"], lv["valid_mask"], fx["avg_factor"])
        loss_box = crosskd_box_loss(box, lv["teacher_box"], lv["teacher_cls"], lv["valid_mask"],
                                    fx["region_weight_sum"])
        torch.testing.assert_close(loss_cls, fx["loss_cls"][level], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(loss_box.double(), fx["loss_box"][level], rtol=1e-6, atol=1e-9)
        total = total + loss_cls + loss_box
        holds.append((s_cls_hold, s_reg_hold))
    total.backward()
    for (s_cls_hold, s_reg_hold), grads in zip(holds, fx["grads"]):
        torch.testing.assert_close(s_cls_hold.grad, grads["student_cls_hold"], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(s_reg_hold.grad, grads["student_reg_hold"], rtol=1e-5, atol=1e-9)


def test_parity_over_levels_through_the_twins(fx):
    crosses = [_cross_level(fx, level) for level in range(2)]
    t_cls = [lv["teacher_cls"] for lv in fx["levels"]]
    masks = [lv["valid_mask"] for lv in fx["levels"]]
    cls = MultiLevelLoss(CrossKDClsLoss())([c[3] for c in crosses], t_cls, masks, num_positives=fx["avg_factor"])
    rho_sum = sum(crosskd_region_weights(t, m).sum() for t, m in zip(t_cls, masks))
    torch.testing.assert_close(rho_sum, fx["region_weight_sum"], rtol=1e-12, atol=0)
    box = MultiLevelLoss(CrossKDBoxLoss(loss_weight=4.0))(
        [c[4] for c in crosses], [lv["teacher_box"] for lv in fx["levels"]], t_cls, masks, region_weight_sum=rho_sum
    )
    torch.testing.assert_close(cls, sum(fx["loss_cls"]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(box.double(), 4.0 * sum(fx["loss_box"]), rtol=1e-6, atol=1e-9)


def test_cross_head_keeps_the_teacher_frozen_and_feeds_the_student():
    head = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1)).eval()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    feat = torch.randn(2, 4, 5, 6, requires_grad=True)
    out = crosskd_cross_head(head, feat)
    torch.testing.assert_close(out, head(feat))
    out.square().sum().backward()
    assert all(p.grad is None for p in head.parameters()), "gradient reached the teacher head"
    assert feat.grad is not None and feat.grad.abs().sum() > 0
    for key, value in head.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_student_layers_after_the_reuse_point_get_no_kd_gradient():
    student_last = nn.Conv2d(4, 3, 1)
    teacher_last = nn.Conv2d(4, 3, 1).requires_grad_(False)
    tower = nn.Conv2d(4, 4, 3, padding=1)
    feat = tower(torch.randn(2, 4, 5, 6))
    student_logits = student_last(feat)  # the student's own prediction: detection losses only
    cross = crosskd_cross_head(teacher_last, feat)
    crosskd_cls_loss(cross, torch.randn(2, 3, 5, 6), num_positives=3).backward()
    assert student_last.weight.grad is None and tower.weight.grad.abs().sum() > 0
    assert student_logits.requires_grad


def test_align_scale_gives_the_teachers_channel_statistics():
    g = torch.Generator().manual_seed(0)
    s = 3 * torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64) + 2
    t = 0.5 * torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64) - 1
    out = crosskd_align_scale(s, t)
    torch.testing.assert_close(out.mean((0, 2, 3)), t.mean((0, 2, 3)))
    torch.testing.assert_close(out.std((0, 2, 3)), t.std((0, 2, 3)), rtol=1e-5, atol=0)


def test_cls_is_bckds_binary_distillation():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    torch.testing.assert_close(crosskd_cls_loss(s, t, num_positives=3), bckd_cls_loss(s, t, num_positives=3))


def test_box_matches_a_per_anchor_loop():
    g = torch.Generator().manual_seed(2)
    bins, temperature = 5, 2.0
    s = torch.randn(2, 4 * bins, 3, 4, generator=g, dtype=torch.float64)
    t = torch.randn(2, 4 * bins, 3, 4, generator=g, dtype=torch.float64)
    t_cls = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64)
    mask = (torch.rand(2, 3, 4, generator=g) > 0.3).double()
    total, rho_sum = 0.0, 0.0
    for i in range(2):
        for y in range(3):
            for x in range(4):
                rho = 1 / (1 + math.exp(-float(t_cls[i, :, y, x].max()))) if mask[i, y, x] else 0.0
                rho_sum += rho
                for side in range(4):
                    ps = (s[i, side * bins:(side + 1) * bins, y, x] / temperature).softmax(0).tolist()
                    pt = (t[i, side * bins:(side + 1) * bins, y, x] / temperature).softmax(0).tolist()
                    total += rho * temperature**2 * sum(q * math.log(q / p) for p, q in zip(ps, pt))
    ours = crosskd_box_loss(s, t, t_cls, mask, temperature=temperature)
    torch.testing.assert_close(ours, torch.tensor(total / (4 + EPS32) / rho_sum, dtype=torch.float64))


def test_three_levels_in_one_line():
    g = torch.Generator().manual_seed(3)
    shapes = [(6, 8), (3, 4), (2, 2)]
    s = [torch.randn(2, 20, h, w, generator=g) for h, w in shapes]
    t = [torch.randn(2, 20, h, w, generator=g) for h, w in shapes]
    t_cls = [torch.randn(2, 3, h, w, generator=g) for h, w in shapes]
    rho_sum = sum(crosskd_region_weights(z).sum() for z in t_cls)
    total = multilevel_loss(crosskd_box_loss, s, t, t_cls, region_weight_sum=rho_sum)
    expected = sum(crosskd_box_loss(*args, region_weight_sum=rho_sum) for args in zip(s, t, t_cls))
    torch.testing.assert_close(total, expected)
    # one call on the concatenated levels normalises by its own sum: the same number
    flat = [torch.cat([x.flatten(2) for x in xs], dim=2)[..., None] for xs in (s, t, t_cls)]
    torch.testing.assert_close(crosskd_box_loss(*flat), total)


def test_inputs_are_checked():
    s, t, t_cls = torch.randn(2, 20, 3, 4), torch.randn(2, 20, 3, 4), torch.randn(2, 3, 3, 4)
    with pytest.raises(ValueError, match="4 \\(R \\+ 1\\) channels"):
        crosskd_box_loss(s[:, :-1], t[:, :-1], t_cls)
    with pytest.raises(ValueError, match="teacher_logits"):
        crosskd_box_loss(s, t, t_cls[:, :, :2])
    with pytest.raises(ValueError, match="valid_mask"):
        crosskd_box_loss(s, t, t_cls, torch.ones(2, 3, 5))
    with pytest.raises(ValueError, match="temperature"):
        crosskd_box_loss(s, t, t_cls, temperature=0.0)
    with pytest.raises(ValueError, match="teacher"):
        crosskd_align_scale(torch.randn(2, 4, 3, 3), torch.randn(2, 5, 3, 3))


def test_empty_batch_and_no_valid_anchor_give_zero():
    s = torch.randn(0, 20, 3, 4, requires_grad=True)
    loss = crosskd_box_loss(s, torch.randn(0, 20, 3, 4), torch.randn(0, 3, 3, 4))
    assert loss.item() == 0.0
    loss.backward()
    s = torch.randn(2, 20, 3, 4, requires_grad=True)
    loss = crosskd_box_loss(s, torch.randn(2, 20, 3, 4), torch.randn(2, 3, 3, 4), torch.zeros(2, 3, 4))
    assert loss.item() == 0.0 and torch.isfinite(loss)


@pytest.fixture(scope="module")
def fx_iou():
    return torch.load(FIXTURES / "official_crosskd_retinanet_giou.pt")


@pytest.mark.parametrize("level", [0, 1])
def test_box_iou_parity_with_the_official_retinanet_distiller(fx_iou, level):
    lv, expected = fx_iou["levels"][level], fx_iou["outputs"][level]
    s = lv["student_boxes"].clone().requires_grad_(True)
    loss = crosskd_box_iou_loss(s, lv["teacher_boxes"], lv["teacher_logits"], lv["valid_mask"],
                                fx_iou["num_positives"])
    torch.testing.assert_close(loss, expected["loss_box"], rtol=1e-12, atol=1e-12)
    loss.backward()
    torch.testing.assert_close(s.grad, expected["grad_student_boxes"], rtol=1e-10, atol=1e-14)


def test_box_iou_matches_a_per_anchor_loop():
    g = torch.Generator().manual_seed(4)
    n, a, k, h, w = 2, 2, 3, 2, 3
    xy = torch.rand(n, a, 2, h, w, generator=g, dtype=torch.float64) * 10
    t = torch.cat([xy, xy + 1 + torch.rand(n, a, 2, h, w, generator=g, dtype=torch.float64) * 5], 2)
    s = t + torch.randn(t.shape, generator=g, dtype=torch.float64)
    logits = torch.randn(n, a * k, h, w, generator=g, dtype=torch.float64)
    mask = (torch.rand(n, a, h, w, generator=g) > 0.3).double()
    for generalized in (True, False):
        total = 0.0
        for i in range(n):
            for j in range(a):
                for y in range(h):
                    for x in range(w):
                        sb, tb = s[i, j, :, y, x].tolist(), t[i, j, :, y, x].tolist()
                        inter = (max(0.0, min(sb[2], tb[2]) - max(sb[0], tb[0]))
                                 * max(0.0, min(sb[3], tb[3]) - max(sb[1], tb[1])))
                        union = (sb[2] - sb[0]) * (sb[3] - sb[1]) + (tb[2] - tb[0]) * (tb[3] - tb[1]) - inter
                        enclose = (max(sb[2], tb[2]) - min(sb[0], tb[0])) * (max(sb[3], tb[3]) - min(sb[1], tb[1]))
                        iou = inter / union
                        score = iou - (enclose - union) / enclose if generalized else max(iou, 1e-6)
                        rho = 1 / (1 + math.exp(-float(logits[i, j * k:(j + 1) * k, y, x].max())))
                        total += float(mask[i, j, y, x]) * rho * (1 - score)
        ours = crosskd_box_iou_loss(s.reshape(n, 4 * a, h, w), t.reshape(n, 4 * a, h, w), logits, mask, 3,
                                    generalized=generalized)
        torch.testing.assert_close(ours, torch.tensor(total / (3 + EPS32), dtype=torch.float64))


def test_box_iou_levels_and_checks():
    g = torch.Generator().manual_seed(5)
    shapes = [(4, 6), (2, 3), (1, 2)]
    t = [torch.cat([xy, xy + 2], 1) for xy in (torch.rand(2, 2, h, w, generator=g) * 9 for h, w in shapes)]
    s = [b + torch.rand(b.shape, generator=g) for b in t]
    z = [torch.randn(2, 5, h, w, generator=g) for h, w in shapes]
    total = multilevel_loss(crosskd_box_iou_loss, s, t, z, num_positives=4)
    torch.testing.assert_close(total, sum(crosskd_box_iou_loss(*x, num_positives=4) for x in zip(s, t, z)))
    with pytest.raises(ValueError, match="4 A channels"):
        crosskd_box_iou_loss(s[0][:, :3], t[0][:, :3], z[0], num_positives=4)
    with pytest.raises(ValueError, match="valid_mask"):
        crosskd_box_iou_loss(s[0], t[0], z[0], torch.ones(2, 2, 4, 6), num_positives=4)
    with pytest.raises(ValueError, match="num_positives"):
        crosskd_box_iou_loss(s[0], t[0], z[0])
