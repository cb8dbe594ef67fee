"""kdimpl: reference PyTorch implementations of knowledge-distillation losses for object detection.

Every loss comes as a function (``fgd_loss``) and an ``nn.Module`` twin (``FGDLoss``) taking
the same tensors; the function's docstring holds the paper's equations. :func:`multilevel_loss`
and :class:`MultiLevelLoss` apply any of them over a list of FPN levels in one line (a keyword
input with one entry per level is wrapped in :class:`PerLevel`).

Vocabulary
----------
The same word means the same thing in every loss (``tests/kdimpl/test_vocabulary.py`` checks it):

- ``student``, ``teacher``: the first two arguments, student first. The teacher is detached
  inside every loss (it receives no gradient); logits are ``student_logits``/``teacher_logits``
  where a loss also takes features.
- ``gt_boxes``: one ``(M_i, 4)`` tensor per image (or a padded ``(N, M, 4)`` tensor), boxes as
  ``x1, y1, x2, y2`` in pixels of the (resized, padded) input tensor that the features were
  computed from. ``image_size``: that tensor's ``(height, width)``. Each loss maps boxes to the
  feature map it receives, so the same boxes serve every FPN level. ``gt_mask``: the ``(N, M)``
  bool mask of the real rows of a padded ``gt_boxes`` (:func:`kdimpl.masks.pad_boxes`; padding
  to a fixed capacity keeps ``torch.compile`` to one graph).
- ``labels``: integer class indices with ``background_index`` naming the background class
  (default 0, torchvision's convention; mmdetection puts it last: pass ``-1``). Labels are
  range-checked against the logits.
- ``temperature``: every softmax temperature (``spatial_temperature``/``channel_temperature``
  where a loss has two). ``rng``: an optional ``torch.Generator`` for random draws.
- ``*_weight``: a scalar weight (``fg_weight``, ``bg_weight``, ``loss_weight``); the docstring
  names the paper's symbol. Per-pixel or per-element weights are tensors named ``*_map`` or
  ``*_mask``, never ``*_weight``.
- Learnable pieces a paper bundles into its loss (adapters, generators, context blocks) are
  modules named ``<role>_<side>``: ``adapter_student``, ``global_teacher``, ``generator_student``.
  Module twins own them when built with the channel counts; functions take them as arguments.
- ``reduction``: ``'mean'`` (default) is the paper's own normalisation, which each loss states
  (it is not always the element mean); ``'sum'`` sums; ``'none'`` returns the unreduced
  elements, so ``loss(..., reduction='none').mean()`` is the plain element mean.
  ``loss_weight`` (module twins only) multiplies the result.

Inputs are checked with messages that say what to fix; NaN in gives NaN out, and an empty batch
gives a zero that stays in the autograd graph. :func:`set_value_checks` turns off the checks that
read tensor values (they synchronise CUDA streams) once a pipeline is known to be correct.
"""

from . import attention, distributed, masks
from ._checks import set_value_checks, value_checks_enabled
from ._registry import build_loss, get_loss, get_loss_function, list_losses, register_loss
from .adapters import *  # noqa: F403
from .adapters import __all__ as _adapters_all
from .levels import MultiLevelLoss, PerLevel, multilevel_loss
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
    "multilevel_loss",
    "MultiLevelLoss",
    "PerLevel",
    "set_value_checks",
    "value_checks_enabled",
    *_adapters_all,
    *_losses_all,
]
