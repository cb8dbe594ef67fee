"""SSD-Det's spatial identity head: the IoU estimate of each proposal of a bag, from its RoI features."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SSDDetIdentityHead"]


class SSDDetIdentityHead(nn.Module):
    r"""Two FC layers of its own, the object-relevance enhancement over the bag, and a linear IoU estimate.

    .. math::
        F = \mathrm{ReLU}(W_2 \,\mathrm{ReLU}(W_1 x)), \qquad
        F^*_p = F_p + \frac{1}{P} \sum_{q=1}^{P} F_q, \qquad U_p = w^\top F^*_p + b

    for the ``P`` proposals of one object (flattened RoI features :math:`x`). :math:`U` is trained by
    :func:`kdimpl.losses.ssd_det.ssd_det_sisd_loss` and weighs the stage-II selection
    (:func:`kdimpl.losses.ssd_det.ssd_det_selection_scores`). The official head
    (ucas-vg/PointTinyBenchmark@9ffa750, branch SSD-Det, ``Shared2FCInstanceMILHeadEPLUS``) names
    the layers ``objness_2fcs`` and ``fc_iou``; its enhancement sits in ``EP2BplusHead._bbox_forward``.

    Args:
        in_features: flattened RoI feature size (``256 * 7 * 7`` in the official configs).
        hidden_features: width of the two FC layers (1024).

    Shape:
        - input: :math:`(G, P, *)` RoI features of ``P`` proposals for each of ``G`` objects
        - output: :math:`(G, P)`

    Example:
        >>> import torch
        >>> SSDDetIdentityHead(8 * 3 * 3, 16)(torch.randn(5, 10, 8, 3, 3)).shape
        torch.Size([5, 10])
    """

    def __init__(self, in_features: int = 256 * 7 * 7, hidden_features: int = 1024) -> None:
        super().__init__()
        self.fcs = nn.Sequential(
            nn.Linear(in_features, hidden_features), nn.ReLU(), nn.Linear(hidden_features, hidden_features), nn.ReLU()
        )
        self.fc_iou = nn.Linear(hidden_features, 1)

    def forward(self, roi_features: Tensor) -> Tensor:
        features = self.fcs(roi_features.flatten(2))
        enhanced = features + features.mean(dim=1, keepdim=True)
        return self.fc_iou(enhanced).squeeze(-1)
