"""multilevel_loss and MultiLevelLoss: any loss over FPN levels in one line."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import kdimpl  # noqa: E402
from kdimpl import CWDLoss, MultiLevelLoss, cwd_loss, multilevel_loss  # noqa: E402

SIZES = [(16, 24), (8, 12), (4, 6)]


def _levels(seed=0, batch=2, channels=4):
    generator = torch.Generator().manual_seed(seed)
    students = [torch.randn(batch, channels, h, w, generator=generator, requires_grad=True) for h, w in SIZES]
    teachers = [torch.randn(batch, channels, h, w, generator=generator) for h, w in SIZES]
    return students, teachers


def test_sum_over_levels_with_weights_equals_the_loop():
    students, teachers = _levels()
    weights = [1.0, 0.5, 2.0]
    expected = sum(w * cwd_loss(s, t, temperature=2.0) for w, s, t in zip(weights, students, teachers))
    actual = multilevel_loss(cwd_loss, students, teachers, level_weights=weights, temperature=2.0)
    torch.testing.assert_close(actual, expected)
    module = MultiLevelLoss(CWDLoss(temperature=2.0), level_weights=weights, loss_weight=3.0)
    torch.testing.assert_close(module(students, teachers), 3.0 * expected)


def test_per_level_modules_are_held_for_the_optimiser():
    adapters = [torch.nn.Conv2d(4, 4, 1) for _ in SIZES]

    def adapted_mse(student, teacher, adapter, *, reduction="mean"):
        return torch.nn.functional.mse_loss(adapter(student), teacher, reduction=reduction)

    class AdaptedMSE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.adapter = torch.nn.Conv2d(4, 4, 1)

        def forward(self, student, teacher):
            return adapted_mse(student, teacher, self.adapter)

    criterion = MultiLevelLoss([AdaptedMSE() for _ in SIZES])
    assert len(list(criterion.parameters())) == 2 * len(SIZES)
    students, teachers = _levels()
    criterion(students, teachers).backward()
    assert all(p.grad is not None for p in criterion.parameters())
    loss = multilevel_loss(adapted_mse, students, teachers, adapters)  # per-level inputs are positional sequences
    assert loss.dim() == 0


def test_level_and_num_levels_reach_losses_that_take_them():
    seen = []

    def loss(student, teacher, *, level, num_levels, reduction="mean"):
        seen.append((level, num_levels))
        return (student - teacher).pow(2).mean()

    students, teachers = _levels()
    multilevel_loss(loss, students, teachers)
    assert seen == [(0, 3), (1, 3), (2, 3)]


def test_shared_keywords_reach_every_level():
    received = []

    def loss(student, teacher, *, gt_boxes, image_size, reduction="mean"):
        received.append((gt_boxes, image_size))
        return student.sum() * 0

    students, teachers = _levels()
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.zeros(0, 4)]
    multilevel_loss(loss, students, teachers, gt_boxes=boxes, image_size=(64, 96))
    assert all(b is boxes and size == (64, 96) for b, size in received) and len(received) == 3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s, t: (s, t[:2]), "students has 3 levels but teachers has 2"),
        (lambda s, t: (s[0], t), "sequences of per-level feature maps"),
        (lambda s, t: ([], []), "students is empty"),
    ],
)
def test_mismatched_levels_are_refused(change, message):
    students, teachers = change(*_levels())
    with pytest.raises((ValueError, TypeError), match=message):
        multilevel_loss(cwd_loss, students, teachers)


def test_wrong_counts_of_weights_or_modules_are_refused():
    students, teachers = _levels()
    with pytest.raises(ValueError, match="level_weights has 2 entries for 3 levels"):
        multilevel_loss(cwd_loss, students, teachers, level_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="holds 2 per-level losses, got 3 levels"):
        MultiLevelLoss([CWDLoss(), CWDLoss()])(students, teachers)
    with pytest.raises(ValueError, match="one entry per level"):
        multilevel_loss(lambda s, t, x: s.sum(), students, teachers, [1, 2])
    with pytest.raises(ValueError, match="level_weights"):
        MultiLevelLoss(CWDLoss(), level_weights=[1.0, float("nan"), 1.0])


def test_unreduced_levels_are_refused():
    students, teachers = _levels()
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        multilevel_loss(cwd_loss, students, teachers, reduction="none")


def test_compiles_without_graph_breaks():
    students, teachers = _levels()
    expected = multilevel_loss(cwd_loss, students, teachers, temperature=2.0)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda s, t: multilevel_loss(cwd_loss, s, t, temperature=2.0), backend="eager", fullgraph=True
    )
    torch.testing.assert_close(compiled(students, teachers), expected)


def test_every_registered_loss_runs_over_levels_in_one_line():
    """The contract recipes at three spatial sizes: one call gives the sum of the per-level calls."""
    from .cases import all_cases

    exercised = []
    for name, case in all_cases().items():
        per_level = []
        for size in [(12, 20), (6, 10)]:
            generator = torch.Generator().manual_seed(0)
            args, kwargs = case.make_inputs(generator, torch.device("cpu"), torch.float32, batch=2, height=size[0],
                                            width=size[1], num_boxes=2)
            per_level.append((list(args), dict(kwargs)))
        shared = {k: v for k, v in per_level[0][1].items() if all(_same(v, lv[1].get(k)) for lv in per_level)}
        if set(shared) != set(per_level[0][1]):
            continue  # keyword inputs that depend on the level's size are passed per level by the user
        function = kdimpl.get_loss_function(name)
        expected = sum(function(*a, **k, **case.options) for a, k in per_level)
        columns = list(zip(*(a for a, _ in per_level)))
        actual = multilevel_loss(function, list(columns[0]), list(columns[1]), *[list(c) for c in columns[2:]],
                                 **shared, **case.options)
        torch.testing.assert_close(actual, expected, msg=lambda m: f"{name}: {m}")
        exercised.append(name)
    assert len(exercised) >= len(all_cases()) // 2, f"only {exercised} could be run over levels"


def _same(a, b):
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool((a == b).all())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b or a == b
