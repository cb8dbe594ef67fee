"""One vocabulary across the package, as written in ``kdimpl``'s docstring (section "Vocabulary")."""

from __future__ import annotations

import inspect
import re

import pytest

torch = pytest.importorskip("torch")

import kdimpl  # noqa: E402

NAMES = kdimpl.list_losses()
# student-side inputs that are not called "student": ScaleKD's assistant-head losses compare the
# student's head outputs with an assistant head's, which plays the teacher's part.
SECOND_INPUT = {"scalekd_assistant_cls": "assistant", "scalekd_assistant_box": "assistant"}


def _public_callables():
    for name in kdimpl.__all__:
        obj = getattr(kdimpl, name)
        if inspect.isclass(obj):
            yield name, inspect.signature(obj.__init__)
        elif inspect.isfunction(obj):
            yield name, inspect.signature(obj)


PUBLIC = dict(_public_callables())


def _annotation(param: inspect.Parameter) -> str:
    return "" if param.annotation is inspect.Parameter.empty else str(param.annotation)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_one_name_for_temperature_and_random_generators(name):
    for param in PUBLIC[name].parameters.values():
        lowered = param.name.lower()
        if "temp" in lowered or re.search(r"(^|_)tau($|_)", lowered):
            assert param.name == "temperature" or param.name.endswith("_temperature"), (
                f"{name}({param.name}=...): temperatures are called 'temperature' or '<what>_temperature'"
            )
        if "Generator" in _annotation(param) or param.name in ("generator", "gen", "seed_generator"):
            assert param.name == "rng", f"{name}({param.name}=...): a torch.Generator argument is called 'rng'"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_weights_are_scalars_and_maps_are_not_weights(name):
    for param in PUBLIC[name].parameters.values():
        annotation = _annotation(param)
        if param.name == "weight" or param.name.endswith("_weight"):
            assert "Tensor" not in annotation, (
                f"{name}({param.name}: {annotation}): per-element weights are tensors named '*_map' or '*_mask'; "
                "'*_weight' is a scalar"
            )
            if param.default is not inspect.Parameter.empty:
                assert isinstance(param.default, (int, float)) and not isinstance(param.default, bool), (
                    f"{name}({param.name}={param.default!r}): a '*_weight' has a scalar default"
                )


@pytest.mark.parametrize("name", sorted(set(PUBLIC) & set(kdimpl.losses.__all__)))
def test_learnable_pieces_are_named_role_then_side(name):
    for param in PUBLIC[name].parameters.values():
        annotation = _annotation(param)
        if re.search(r"\b(nn\.)?Module\b|Callable", annotation):
            assert re.fullmatch(r"[a-z_]+_(student|teacher)", param.name), (
                f"{name}({param.name}: {annotation}): learnable pieces are named '<role>_student' or '<role>_teacher'"
            )


@pytest.mark.parametrize("name", NAMES)
def test_student_first_teacher_second(name):
    params = list(inspect.signature(kdimpl.get_loss_function(name)).parameters)
    assert params[0].startswith("student"), f"{name}: the first argument is {params[0]!r}, not the student"
    second = SECOND_INPUT.get(name, "teacher")
    assert params[1].startswith(second), f"{name}: the second argument is {params[1]!r}, not the {second}"


@pytest.mark.parametrize("name", NAMES)
def test_reduction_is_the_papers_normalisation_by_default(name):
    function = kdimpl.get_loss_function(name)
    param = inspect.signature(function).parameters.get("reduction")
    assert param is not None and param.default == "mean", f"{name}: no reduction='mean' keyword"
    doc = inspect.getdoc(function)
    args = doc.split("Args:", 1)[1]
    described = args.split("reduction:", 1)[1][:600] if "reduction:" in args else ""
    assert "paper's own normalisation" in described, (
        f"{name}: the Args entry of 'reduction' does not say that 'mean' is the paper's own normalisation"
    )


@pytest.mark.parametrize("name", NAMES)
def test_background_index_follows_torchvision(name):
    for signature in (inspect.signature(kdimpl.get_loss_function(name)), inspect.signature(kdimpl.get_loss(name))):
        param = signature.parameters.get("background_index")
        if param is not None:
            assert param.default == 0, f"{name}: background_index defaults to {param.default}, not 0 (torchvision)"


@pytest.mark.parametrize("name", NAMES)
def test_module_twin_takes_the_functions_options_with_the_same_defaults(name):
    function = inspect.signature(kdimpl.get_loss_function(name)).parameters
    module = inspect.signature(kdimpl.get_loss(name)).parameters
    assert "loss_weight" in module and module["loss_weight"].default == 1.0, f"{name}: twin lacks loss_weight=1.0"
    for option, param in function.items():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.default is inspect.Parameter.empty:
            continue
        if re.search(r"_(student|teacher)$", option) or "Tensor" in _annotation(param):
            continue  # learnable pieces (a twin may build them) and per-call tensors are not options
        assert option in module, f"{name}: {kdimpl.get_loss(name).__name__} does not take the option {option!r}"
        default = module[option].default
        same = default is param.default or (type(default) is type(param.default) and default == param.default)
        assert same, f"{name}: default of {option!r} differs between function ({param.default!r}) and twin ({default!r})"
