"""One module per paper; each exports loss functions and their ``nn.Module`` twins."""

from .chen2017 import (
    chen2017_hint_loss,
    chen2017_soft_ce_loss,
    chen2017_bounded_regression_loss,
    Chen2017HintLoss,
    Chen2017SoftCELoss,
    Chen2017BoundedRegressionLoss,
)
from .cwd import cwd_loss, CWDLoss
from .defeat import (
    defeat_box_levels,
    defeat_gt_masks,
    defeat_loss,
    defeat_multilevel_loss,
    defeat_roi_kd_loss,
    DeFeatLoss,
    DeFeatRoIKDLoss,
)
from .drkd import roi_align_padded, drkd_pixel_loss, DRKDPixelLoss, drkd_instance_loss, DRKDInstanceLoss
from .fgd import FGDLoss, fgd_cell_bounds, fgd_loss, fgd_masks, fgd_multilevel_masks
from .fgfi import grid_anchors, fgfi_imitation_mask, fgfi_loss, FGFILoss
from .fkd import FKDLoss, fkd_attention_masks, fkd_loss
from .frs import FRSClsLoss, FRSFeatureLoss, feature_richness, frs_cls_loss, frs_feature_loss
from .glamd import GLAMDLoss, glamd_local_attention, glamd_loss, glamd_patch_index
from .mgd import mgd_random_mask, mgd_loss, MGDLoss
from .mimic import mimic_region_bounds, mimic_loss, MimicLoss
from .pgd import (
    PGDClsLoss,
    PGDRegLoss,
    pgd_background_weights,
    pgd_cls_loss,
    pgd_prediction_weights,
    pgd_reg_loss,
    pgd_split_levels,
)
from .pkd import pkd_loss, PKDLoss
from .scalekd import (
    scalekd_feature_loss,
    ScaleKDFeatureLoss,
    scalekd_assistant_cls_loss,
    ScaleKDAssistantClsLoss,
    scalekd_assistant_box_loss,
    ScaleKDAssistantBoxLoss,
)
from .structural_kd import ssim_map, structural_kd_loss, StructuralKDLoss

__all__ = [
    "chen2017_hint_loss",
    "chen2017_soft_ce_loss",
    "chen2017_bounded_regression_loss",
    "Chen2017HintLoss",
    "Chen2017SoftCELoss",
    "Chen2017BoundedRegressionLoss",
    "cwd_loss",
    "CWDLoss",
    "defeat_box_levels",
    "defeat_gt_masks",
    "defeat_loss",
    "defeat_multilevel_loss",
    "defeat_roi_kd_loss",
    "DeFeatLoss",
    "DeFeatRoIKDLoss",
    "roi_align_padded",
    "drkd_pixel_loss",
    "DRKDPixelLoss",
    "drkd_instance_loss",
    "DRKDInstanceLoss",
    "FGDLoss",
    "fgd_cell_bounds",
    "fgd_loss",
    "fgd_masks",
    "fgd_multilevel_masks",
    "grid_anchors",
    "fgfi_imitation_mask",
    "fgfi_loss",
    "FGFILoss",
    "FKDLoss",
    "fkd_attention_masks",
    "fkd_loss",
    "FRSClsLoss",
    "FRSFeatureLoss",
    "feature_richness",
    "frs_cls_loss",
    "frs_feature_loss",
    "GLAMDLoss",
    "glamd_local_attention",
    "glamd_loss",
    "glamd_patch_index",
    "mgd_random_mask",
    "mgd_loss",
    "MGDLoss",
    "mimic_region_bounds",
    "mimic_loss",
    "MimicLoss",
    "PGDClsLoss",
    "PGDRegLoss",
    "pgd_background_weights",
    "pgd_cls_loss",
    "pgd_prediction_weights",
    "pgd_reg_loss",
    "pgd_split_levels",
    "pkd_loss",
    "PKDLoss",
    "scalekd_feature_loss",
    "ScaleKDFeatureLoss",
    "scalekd_assistant_cls_loss",
    "ScaleKDAssistantClsLoss",
    "scalekd_assistant_box_loss",
    "ScaleKDAssistantBoxLoss",
    "ssim_map",
    "structural_kd_loss",
    "StructuralKDLoss",
]
