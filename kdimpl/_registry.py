"""A small registry of losses, in the spirit of timm's model registry.

Plain imports (``from kdimpl import FGDLoss``) never need it; it exists so that configs
and the test suite can enumerate every loss.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import sys
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

__all__ = ["LossEntry", "register_loss", "get_loss", "get_loss_function", "list_losses", "build_loss"]


@dataclass(frozen=True)
class LossEntry:
    name: str
    module: type[nn.Module]
    function: Callable[..., Any]
    distributed: str = "exact"  # how DDP's gradients relate to one process on the union batch (kdimpl.distributed)

    @property
    def source(self) -> str:
        """The defining file's stem (``"cwd"`` for ``kdimpl/losses/cwd.py``): the paper's prefix."""
        return self.module.__module__.rpartition(".")[2]


_REGISTRY: dict[str, LossEntry] = {}


def _qualified(obj: type) -> str:
    return f"{obj.__module__.rpartition('.')[2]}.{obj.__qualname__}"


def register_loss(name: str, *, function: Callable[..., Any], distributed: str = "exact"):
    """Class decorator that registers an ``nn.Module`` loss and its functional twin under ``name``.

    It also sets the class's ``function`` (used by :class:`kdimpl._base.LossModule`), gives its
    ``forward`` the tensor arguments of ``function`` as signature, and appends both names to
    the defining module's ``__all__`` (as timm's ``register_model`` does), so exports are listed once.
    ``distributed`` declares how gradients under ``DistributedDataParallel`` relate to one process
    on the union batch (one of :data:`kdimpl.distributed.BEHAVIOURS`).
    """
    from .distributed import BEHAVIOURS

    if distributed not in BEHAVIOURS:
        raise ValueError(f"distributed must be one of {', '.join(BEHAVIOURS)}; got {distributed!r}")

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        existing = _REGISTRY.get(name)
        # A module imported twice (importlib.reload, doctest collection by path) re-registers the same class.
        if existing is not None and _qualified(existing.module) != _qualified(cls):
            raise ValueError(f"loss name {name!r} is already registered by {_qualified(existing.module)}")
        cls.function = staticmethod(function)
        if "forward" not in cls.__dict__:
            options = set(inspect.signature(cls.__init__).parameters)
            params = [p for n, p in inspect.signature(function).parameters.items() if n not in options]
            self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)

            def forward(self, *inputs, **kwargs):
                return super(cls, self).forward(*inputs, **kwargs)

            forward.__signature__ = inspect.Signature([self_param, *params])
            forward.__doc__ = f"Return ``loss_weight * {function.__name__}(...)`` with the stored options."
            cls.forward = forward
        exports = vars(sys.modules[cls.__module__]).setdefault("__all__", [])
        for exported in (function.__name__, cls.__name__):
            if exported not in exports:
                exports.append(exported)
        _REGISTRY[name] = LossEntry(name, cls, function, distributed)
        return cls

    return decorator


def _entry(name: str) -> LossEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown loss {name!r}{hint} (kdimpl.list_losses() lists all)") from None


def get_loss(name: str) -> type[nn.Module]:
    """Return the ``nn.Module`` class registered as ``name``."""
    return _entry(name).module


def get_loss_function(name: str) -> Callable[..., Any]:
    """Return the functional twin registered as ``name``."""
    return _entry(name).function


def list_losses(pattern: str = "*") -> list[str]:
    """Sorted names of registered losses matching a shell-style ``pattern``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def build_loss(config: dict[str, Any]) -> nn.Module:
    """Build a loss from ``{"type": name, **kwargs}``, rejecting keyword arguments it does not take."""
    if "type" not in config:
        raise KeyError("loss config needs a 'type' key naming a registered loss")
    kwargs = {k: v for k, v in config.items() if k != "type"}
    cls = get_loss(config["type"])
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params) - {"self"})
        if unknown:
            raise TypeError(f"{cls.__name__} got unexpected config keys {unknown}; it takes {sorted(set(params) - {'self'})}")
    return cls(**kwargs)
