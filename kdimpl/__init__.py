"""kdimpl: reference PyTorch implementations of knowledge-distillation losses for object detection.

Every loss comes as a function (``fgd_loss``) and an ``nn.Module`` twin (``FGDLoss``) taking
the same arguments: student first, teacher second, detection inputs as explicit tensors
(per-image boxes in pixels and the image size). See each docstring for the paper's equations.
"""

from . import attention, masks
from ._registry import build_loss, get_loss, get_loss_function, list_losses, register_loss
from .adapters import *  # noqa: F403
from .adapters import __all__ as _adapters_all
from .losses import *  # noqa: F403
from .losses import __all__ as _losses_all

__version__ = "0.1.0"

__all__ = [
    "attention",
    "masks",
    "build_loss",
    "get_loss",
    "get_loss_function",
    "list_losses",
    "register_loss",
    *_adapters_all,
    *_losses_all,
]
