"""The base class of the module twins: options stored once, the function called with them."""

from __future__ import annotations

from typing import Any, Callable, ClassVar

from torch import Tensor, nn

from ._checks import check_options


class LossModule(nn.Module):
    """An ``nn.Module`` twin of a loss function.

    A subclass sets ``function`` (done by :func:`kdimpl.register_loss`) and keeps an explicit
    constructor signature that passes its options to ``super().__init__``; ``forward`` takes the
    tensors and returns ``loss_weight * function(*tensors, **options)``. Options that are
    modules (learnable pieces) are registered as submodules, so the optimiser and
    ``DistributedDataParallel`` see them. A keyword given to ``forward`` overrides the stored
    option of the same name (a learnable piece passed per call, for example).
    """

    function: ClassVar[Callable[..., Tensor]]

    def __init__(self, *, loss_weight: float = 1.0, **options: Any) -> None:
        super().__init__()
        check_options(loss_weight=loss_weight, **options)
        self.loss_weight = loss_weight
        self._option_names = tuple(options)
        for name, value in options.items():
            setattr(self, name, value)

    @property
    def options(self) -> dict[str, Any]:
        """The keyword options passed to the function on every call."""
        return {name: getattr(self, name) for name in self._option_names}

    def forward(self, *inputs: Any, **kwargs: Any) -> Tensor:
        return self.loss_weight * type(self).function(*inputs, **{**self.options, **kwargs})

    def extra_repr(self) -> str:
        shown = {n: v for n, v in self.options.items() if not isinstance(v, nn.Module)}
        return ", ".join([*(f"{n}={_short_repr(v)}" for n, v in shown.items()), f"loss_weight={self.loss_weight}"])


def _short_repr(value: Any) -> str:
    """A tensor option (class weights, a learnable embedding) by its shape, not its values."""
    if isinstance(value, Tensor):
        kind = "Parameter" if isinstance(value, nn.Parameter) else "tensor"
        return f"{kind}(shape={tuple(value.shape)}, dtype={value.dtype})"
    return repr(value)
