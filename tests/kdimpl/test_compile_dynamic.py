"""``torch.compile`` builds one graph for a box loss while feature sizes and box counts change.

The recipe the docs give (:func:`kdimpl.masks.pad_boxes`, ``gt_mask``,
:func:`kdimpl.integrations.torchvision.mark_dynamic_sizes`): boxes padded to a fixed capacity
with their mask, ``image_size`` as a tensor, feature sizes marked dynamic. Each loss that takes
``gt_mask`` runs six steps of different feature sizes and box counts (0, 1 and several per image)
through inductor, forward and backward, and must match eager on every step with one graph.
"""

from __future__ import annotations

import inspect

import pytest

torch = pytest.importorskip("torch")

import kdimpl  # noqa: E402
from kdimpl.integrations.torchvision import mark_dynamic_sizes  # noqa: E402
from kdimpl.masks import pad_boxes  # noqa: E402

from .cases import all_cases  # noqa: E402

CASES = all_cases()
BOX_LOSSES = [n for n in kdimpl.list_losses() if "gt_mask" in inspect.signature(kdimpl.get_loss_function(n)).parameters]
# (height, width, boxes per image) of the finest map, one entry per step
STEPS = [(12, 20, 3), (14, 18, 1), (10, 22, 0), (16, 20, 5), (12, 24, 2), (14, 22, 4)]
CAPACITY = 8
# Inductor's CPU layout optimisation (channels-last around convolutions) ignores dynamic sizes and
# guards on them; DRKD's adapters are convolutions on the RoI features. Its documented workaround:
CPU_OPTIONS = {"drkd_instance": {"layout_optimization": False}}
# Inductor (torch 2.13) fails on DetKDS's searched transforms with dynamic sizes: a ValueRangeError
# ("Invalid ranges [0:-1]") bounding an index expression; with static sizes it compiles.
NOT_DYNAMIC = {"detkds": "inductor's ValueRangeError on DetKDS's transforms with dynamic sizes (torch 2.13)"}


def test_box_losses_take_gt_mask():
    assert {"fgd", "defeat", "fgfi", "tadf_feature", "gkd_bmfi", "drkd_instance"} <= set(BOX_LOSSES)


@pytest.fixture
def cold_compiles():
    """No graph from the on-disk caches: one cached by an earlier static-shape compile carries its guards."""
    import torch._functorch.config
    import torch._inductor.config

    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        yield


@pytest.mark.parametrize("name", BOX_LOSSES)
@pytest.mark.usefixtures("cold_compiles")
def test_one_graph_over_changing_sizes_and_box_counts(name):
    from torch._dynamo.utils import counters

    case = CASES[name]
    function = kdimpl.get_loss_function(name)
    if name in NOT_DYNAMIC:
        pytest.skip(NOT_DYNAMIC[name])
    options = case.options
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(lambda *a, **k: function(*a, **k, **options), options=CPU_OPTIONS.get(name))
    modules = None
    for step, (height, width, count) in enumerate(STEPS):
        generator = torch.Generator().manual_seed(step)
        args, kwargs = case.make_inputs(generator, "cpu", torch.float32, batch=2, height=height, width=width,
                                        num_boxes=count)
        args = [args[0].detach().requires_grad_(True), *args[1:]]
        if modules is None:  # the same learnable pieces every step, as in training
            modules = {k: v for k, v in kwargs.items() if isinstance(v, torch.nn.Module)}
        kwargs.update(modules)
        gt_boxes = [kwargs["gt_boxes"][0][: max(count - 1, 0)], *kwargs["gt_boxes"][1:]]  # counts differ per image
        kwargs["gt_boxes"], kwargs["gt_mask"] = pad_boxes(gt_boxes, min_boxes=CAPACITY)
        if "image_size" in kwargs:
            kwargs["image_size"] = torch.as_tensor(kwargs["image_size"], dtype=torch.float32)
        maps = [a for a in args if torch.is_tensor(a) and a.dim() == 4]
        mark_dynamic_sizes(maps, [])
        if "anchors" in kwargs:  # (H, W, A, 4): the level's grid
            torch._dynamo.maybe_mark_dynamic(kwargs["anchors"], 0)
            torch._dynamo.maybe_mark_dynamic(kwargs["anchors"], 1)

        loss = compiled(*args, **kwargs)
        loss.backward()
        eager_args = [args[0].detach().requires_grad_(True), *args[1:]]
        expected = function(*eager_args, **kwargs, **options)
        expected.backward()
        torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(args[0].grad, eager_args[0].grad, rtol=1e-4, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1, f"{name} compiled {counters['stats']['unique_graphs']} graphs"


@pytest.mark.usefixtures("cold_compiles")
def test_adapter_applied_before_the_compiled_loss_keeps_one_graph():
    """The recipe for a loss module holding an adapter convolution: adapt eagerly, pass ``adapter_student=None``."""
    from torch._dynamo.utils import counters

    from kdimpl import DeFeatLoss

    criterion = DeFeatLoss(student_channels=4, teacher_channels=6)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(criterion)
    generator = torch.Generator().manual_seed(0)
    for height, width, count in STEPS:
        student = torch.randn(2, 4, height, width, generator=generator, requires_grad=True)
        teacher = torch.randn(2, 6, height, width, generator=generator)
        boxes = [torch.tensor([[8.0, 8.0, 40.0, 30.0]]).repeat(count, 1), torch.tensor([[0.0, 4.0, 20.0, 60.0]]).repeat(count // 2, 1)]
        gt_boxes, gt_mask = pad_boxes(boxes, min_boxes=CAPACITY)
        image_size = torch.tensor([height * 8, width * 8])
        adapted = criterion.adapter_student(student)
        mark_dynamic_sizes([adapted, teacher], [])
        loss = compiled(adapted, teacher, gt_boxes=gt_boxes, gt_mask=gt_mask, image_size=image_size,
                        adapter_student=None)
        loss.backward()
        torch.testing.assert_close(loss, criterion(student, teacher, gt_boxes=boxes, image_size=image_size))
        assert student.grad is not None and criterion.adapter_student.weight.grad is not None
    assert counters["stats"]["unique_graphs"] == 1
