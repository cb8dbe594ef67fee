"""RM and PFI: analytic cases and per-object / per-cell loops (no official code exists)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from kdimpl import MultiLevelLoss, PFILoss, RMLoss, multilevel_loss, pfi_loss, rm_concat_levels, rm_loss  # noqa: E402


def test_rm_hand_case_two_candidates():
    # one object, two candidates; teacher logits [2, 0] and student [0, 0] for its class
    student = torch.zeros(1, 2, 1, dtype=torch.float64)
    teacher = torch.tensor([[[2.0], [0.0]]], dtype=torch.float64)
    p_t = torch.softmax(torch.sigmoid(torch.tensor([2.0, 0.0], dtype=torch.float64)), 0)
    expected = float((p_t * (p_t / 0.5).log()).sum())
    assert expected == pytest.approx(0.017802, abs=1e-6)
    assert rm_loss(student, teacher, torch.tensor([[0, 0]]), [torch.tensor([0])]).item() == pytest.approx(expected)


def _random_problem(seed, counts, anchors=40, classes=4):
    g = torch.Generator().manual_seed(seed)
    batch = len(counts)
    s = torch.randn(batch, anchors, classes, generator=g, dtype=torch.float64)
    t = torch.randn(batch, anchors, classes, generator=g, dtype=torch.float64)
    assigned = torch.randint(-1, max(max(counts), 1), (batch, anchors), generator=g)
    for i, count in enumerate(counts):
        assigned[i][assigned[i] >= count] = -1
    labels = [torch.randint(0, classes, (count,), generator=g) for count in counts]
    return s, t, assigned, labels


def _naive_rm(s, t, assigned, labels):
    """Per-image, per-object loop of the formula; returns the per-object KLs and the object count."""
    per_object, count = {}, 0
    for n, objects in enumerate(labels):
        for j, label in enumerate(objects.tolist()):
            anchors = (assigned[n] == j).nonzero()[:, 0]
            if len(anchors) == 0:
                per_object[n, j] = 0.0
                continue
            p_s = torch.softmax(torch.sigmoid(s[n, anchors, label]), 0)
            p_t = torch.softmax(torch.sigmoid(t[n, anchors, label]), 0)
            per_object[n, j] = float((p_t * (p_t.log() - p_s.log())).sum())
            count += 1
    return per_object, count


@pytest.mark.parametrize("counts", [(3, 5), (6, 0), (1, 2, 4)])
def test_rm_matches_the_per_object_loop(counts):
    s, t, assigned, labels = _random_problem(0, counts)
    assigned[0, :] = torch.where(assigned[0] == 0, -1, assigned[0])  # object 0 of image 0 has no candidate
    per_object, count = _naive_rm(s, t, assigned, labels)
    none = rm_loss(s, t, assigned, labels, reduction="none")
    assert none.shape == (len(counts), max(counts))
    for (n, j), value in per_object.items():
        assert none[n, j].item() == pytest.approx(value, rel=1e-10, abs=1e-14)
    assert none[0, 0].item() == 0.0
    assert rm_loss(s, t, assigned, labels).item() == pytest.approx(sum(per_object.values()) / count, rel=1e-10)
    padded = torch.zeros(len(counts), max(counts), dtype=torch.long)
    for i, lab in enumerate(labels):
        padded[i, : len(lab)] = lab
    torch.testing.assert_close(rm_loss(s, t, assigned, padded, reduction="sum"), none.sum())
    torch.testing.assert_close(RMLoss(loss_weight=2.0)(s, t, assigned, labels), 2 * rm_loss(s, t, assigned, labels))


def test_rm_candidates_span_levels():
    """Logits of mmdetection's per-level layout flatten in the assigner's anchor order."""
    num_classes, num_anchors = 2, 3
    sizes = [(2, 3), (1, 2)]
    levels = []
    for level, (h, w) in enumerate(sizes):
        value = torch.zeros(1, num_anchors * num_classes, h, w, dtype=torch.float64)
        for y in range(h):
            for x in range(w):
                for a in range(num_anchors):
                    for c in range(num_classes):
                        value[0, a * num_classes + c, y, x] = 1000 * level + 100 * y + 10 * x + a + 0.1 * c
        levels.append(value)
    flat = rm_concat_levels(levels, num_classes)
    expected = [1000 * l + 100 * y + 10 * x + a for l, (h, w) in enumerate(sizes)
                for y in range(h) for x in range(w) for a in range(num_anchors)]
    torch.testing.assert_close(flat[0, :, 0], torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(flat[0, :, 1] - flat[0, :, 0], torch.full((len(expected),), 0.1, dtype=torch.float64))
    # one object whose candidates lie on both levels forms one distribution over all of them
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(1, 6, h, w, generator=g) for h, w in sizes]
    teacher = [torch.randn(1, 6, h, w, generator=g) for h, w in sizes]
    assigned = torch.full((1, flat.shape[1]), -1)
    assigned[0, [0, 5, 20]] = 0  # anchors 0 and 5 on level 0, anchor 20 on level 1
    s, t = rm_concat_levels(student, 2), rm_concat_levels(teacher, 2)
    p_s, p_t = (torch.softmax(torch.sigmoid(x[0, [0, 5, 20], 1]), 0) for x in (s, t))
    expected_kl = (p_t * (p_t.log() - p_s.log())).sum()
    torch.testing.assert_close(rm_loss(s, t, assigned, [torch.tensor([1])]), expected_kl)


def test_rm_checks_and_edge_cases():
    s, t, assigned, labels = _random_problem(1, (2, 3))
    with pytest.raises(ValueError, match=r"gt_labels must lie in \[0, 4\)"):
        rm_loss(s, t, assigned, [torch.tensor([0, 4]), torch.tensor([0, 1, 2])])
    with pytest.raises(ValueError, match="assigned_gt has P=.* but student_logits has P="):
        rm_loss(s, t, assigned[:, :-1], labels)
    with pytest.raises(ValueError, match="gt_labels has 1 images"):
        rm_loss(s, t, assigned, labels[:1])
    with pytest.raises(TypeError, match="student_logits"):
        rm_loss(s.long(), t, assigned, labels)
    with pytest.raises(TypeError, match="assigned_gt"):
        rm_loss(s, t, assigned.double(), labels)
    s_nan = s.clone()
    s_nan[0, (assigned[0] < 0).nonzero()[0, 0], 0] = float("nan")  # an anchor that is no candidate
    assert torch.isnan(rm_loss(s_nan, t, assigned, labels))
    no_objects = rm_loss(s, t, torch.full_like(assigned, -1), [torch.zeros(0, dtype=torch.long)] * 2)
    assert no_objects.item() == 0.0
    empty = torch.zeros(0, 40, 4, requires_grad=True)
    loss = rm_loss(empty, torch.zeros(0, 40, 4), torch.zeros(0, 40, dtype=torch.long), [])
    loss.backward()
    assert loss.item() == 0.0 and not empty.grad.any()


def test_rm_gradient_reaches_candidates_only():
    s, t, assigned, labels = _random_problem(2, (3, 2))
    s.requires_grad_(True)
    rm_loss(s, t, assigned, labels).backward()
    touched = s.grad.abs().sum(dim=2) > 0
    assert not touched[assigned < 0].any() and touched.any()


def _naive_pfi(s, t, zs, zt):
    n, _, h, w = s.shape
    out = torch.zeros(n, h, w, dtype=s.dtype)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                p = ((torch.sigmoid(zt[b, :, i, j]) - torch.sigmoid(zs[b, :, i, j])) ** 2).mean()
                f = ((t[b, :, i, j] - s[b, :, i, j]) ** 2).mean()
                out[b, i, j] = p * f
    return out


def test_pfi_matches_the_per_cell_loop_and_weights_get_no_gradient():
    g = torch.Generator().manual_seed(3)
    s, t = (torch.randn(2, 5, 4, 6, generator=g, dtype=torch.float64) for _ in range(2))
    zs, zt = (torch.randn(2, 9 * 2, 4, 6, generator=g, dtype=torch.float64) for _ in range(2))
    expected = _naive_pfi(s, t, zs, zt)
    torch.testing.assert_close(pfi_loss(s, t, zs, zt, reduction="none"), expected)
    zs.requires_grad_(True)
    s.requires_grad_(True)
    loss = pfi_loss(s, t, zs, zt)
    torch.testing.assert_close(loss, expected.mean())
    loss.backward()
    assert zs.grad is None and s.grad.abs().sum() > 0


def test_pfi_hand_case():
    # one cell, A K = 2 outputs; |dp| = 0.5 on one of them gives P = 0.125
    s, t = torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0)
    zs = torch.zeros(1, 2, 1, 1)
    zt = torch.tensor([math.inf, 0.0]).view(1, 2, 1, 1)
    assert pfi_loss(s, t, zs, zt).item() == pytest.approx(0.125 * 4.0)


def test_pfi_over_levels_and_checks():
    g = torch.Generator().manual_seed(4)
    sizes = [(8, 12), (4, 6), (2, 3)]
    students = [torch.randn(2, 4, h, w, generator=g) for h, w in sizes]
    teachers = [torch.randn(2, 4, h, w, generator=g) for h, w in sizes]
    zs = [torch.randn(2, 6, h, w, generator=g) for h, w in sizes]
    zt = [torch.randn(2, 6, h, w, generator=g) for h, w in sizes]
    expected = sum(pfi_loss(*args) for args in zip(students, teachers, zs, zt))
    torch.testing.assert_close(multilevel_loss(pfi_loss, students, teachers, zs, zt), expected)
    torch.testing.assert_close(MultiLevelLoss(PFILoss(), loss_weight=1.5)(students, teachers, zs, zt), 1.5 * expected)
    with pytest.raises(ValueError, match="student_logits has [HW]=.* but student has [HW]="):
        pfi_loss(students[0], teachers[0], zs[1], zt[1])
    with pytest.raises(ValueError, match="teacher_logits has D=3 but student_logits has D=6"):
        pfi_loss(students[0], teachers[0], zs[0], zt[0][:, :3])
    with pytest.raises(TypeError, match="teacher_logits"):
        pfi_loss(students[0], teachers[0], zs[0], zt[0].long())
    nan = zt[0].clone()
    nan[0, 0, 0, 0] = float("nan")
    assert torch.isnan(pfi_loss(students[0], teachers[0], zs[0], nan))
    empty = torch.zeros(0, 4, 8, 12, requires_grad=True)
    loss = pfi_loss(empty, torch.zeros(0, 4, 8, 12), torch.zeros(0, 6, 8, 12), torch.zeros(0, 6, 8, 12))
    loss.backward()
    assert loss.item() == 0.0 and not empty.grad.any()


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_pfi_gradient_equals_the_plain_formula(scale):
    g = torch.Generator().manual_seed(5)
    s = (scale * torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64)).requires_grad_(True)
    t = scale * torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64)
    zs, zt = (torch.randn(2, 4, 5, 7, generator=g, dtype=torch.float64) for _ in range(2))
    weight = (torch.sigmoid(zt) - torch.sigmoid(zs)).square().mean(dim=1)
    plain = (weight * (t - s).square().mean(dim=1)).mean()
    loss = pfi_loss(s, t, zs, zt)
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(torch.autograd.grad(loss, s)[0], torch.autograd.grad(plain, s)[0])
