"""Learnable pieces that papers bundle into their losses, kept apart so both sides can share or skip them."""

from .channel import ChannelAdapter
from .defeat import DeFeatAdapter
from .drkd import GloReUnit, InstanceRelation
from .fgd import FGDGlobalContext
from .fgfi import FGFIAdapter
from .fkd import FKDStudentAdapter, NonLocalBlock2d
from .frs import FRSAdapter
from .gdetkd import GDetKDLevelAttention
from .labelenc import LabelEncAdapter
from .maskd import MasKDTokens
from .mgd import MGDGenerator
from .scalekd import MultiScaleCrossAttention, ScaleDecoupledFeature

__all__ = [
    "ChannelAdapter",
    "DeFeatAdapter",
    "FGDGlobalContext",
    "FGFIAdapter",
    "FKDStudentAdapter",
    "FRSAdapter",
    "GDetKDLevelAttention",
    "GloReUnit",
    "InstanceRelation",
    "LabelEncAdapter",
    "MasKDTokens",
    "MGDGenerator",
    "MultiScaleCrossAttention",
    "NonLocalBlock2d",
    "ScaleDecoupledFeature",
]
