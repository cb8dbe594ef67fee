"""One module per paper; each exports its loss functions, their ``nn.Module`` twins and its helpers."""

from . import (
    baron,
    bckd,
    cckt_det,
    chen2017,
    clipself,
    crosskd,
    cwd,
    d3etr,
    declip,
    defeat,
    densevlm,
    detkds,
    detrdistill,
    dfine,
    diffkd,
    drkd,
    dsig,
    fgd,
    fgfi,
    fkd,
    freekd,
    frs,
    gdetkd,
    gid,
    gkd,
    glamd,
    head,
    icd,
    kd_detr,
    labelenc,
    lad,
    ld,
    maskd,
    lgd,
    mgd,
    mimic,
    mimicdet,
    mtkd_rl,
    mtpd,
    oadp,
    pgd,
    pkd,
    rm_pfi,
    rt_detrv4,
    scalekd,
    ssd_det,
    structural_kd,
    tadf,
    teach_detr,
    unikd,
    vild,
    yolov6,
)
from .baron import *  # noqa: F403
from .bckd import *  # noqa: F403
from .cckt_det import *  # noqa: F403
from .chen2017 import *  # noqa: F403
from .clipself import *  # noqa: F403
from .crosskd import *  # noqa: F403
from .cwd import *  # noqa: F403
from .d3etr import *  # noqa: F403
from .declip import *  # noqa: F403
from .defeat import *  # noqa: F403
from .densevlm import *  # noqa: F403
from .detkds import *  # noqa: F403
from .detrdistill import *  # noqa: F403
from .dfine import *  # noqa: F403
from .diffkd import *  # noqa: F403
from .drkd import *  # noqa: F403
from .dsig import *  # noqa: F403
from .fgd import *  # noqa: F403
from .fgfi import *  # noqa: F403
from .fkd import *  # noqa: F403
from .freekd import *  # noqa: F403
from .frs import *  # noqa: F403
from .gdetkd import *  # noqa: F403
from .gid import *  # noqa: F403
from .gkd import *  # noqa: F403
from .glamd import *  # noqa: F403
from .head import *  # noqa: F403
from .icd import *  # noqa: F403
from .kd_detr import *  # noqa: F403
from .labelenc import *  # noqa: F403
from .lad import *  # noqa: F403
from .ld import *  # noqa: F403
from .maskd import *  # noqa: F403
from .lgd import *  # noqa: F403
from .mgd import *  # noqa: F403
from .mimic import *  # noqa: F403
from .mimicdet import *  # noqa: F403
from .mtkd_rl import *  # noqa: F403
from .mtpd import *  # noqa: F403
from .oadp import *  # noqa: F403
from .pgd import *  # noqa: F403
from .pkd import *  # noqa: F403
from .rm_pfi import *  # noqa: F403
from .rt_detrv4 import *  # noqa: F403
from .scalekd import *  # noqa: F403
from .ssd_det import *  # noqa: F403
from .structural_kd import *  # noqa: F403
from .tadf import *  # noqa: F403
from .teach_detr import *  # noqa: F403
from .unikd import *  # noqa: F403
from .vild import *  # noqa: F403
from .yolov6 import *  # noqa: F403

_MODULES = (
    baron, bckd, cckt_det, chen2017, clipself, crosskd, cwd, d3etr, declip, defeat, densevlm, detkds, detrdistill, dfine, diffkd, drkd, dsig, fgd, fgfi, fkd, freekd, frs, gdetkd, gid,
    gkd, glamd, head, icd, kd_detr, labelenc, lad, ld, maskd, lgd, mgd, mimic, mimicdet, mtkd_rl, mtpd, oadp, pgd, pkd, rm_pfi, rt_detrv4, scalekd,
    ssd_det, structural_kd,
    tadf, teach_detr, unikd, vild, yolov6,
)
__all__ = [name for module in _MODULES for name in module.__all__]
