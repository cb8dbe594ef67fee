"""Learnable pieces that papers bundle into their losses, kept apart so both sides can share or skip them."""

from .channel import ChannelAdapter
from .defeat import DeFeatAdapter
from .diffkd import DiffKDAutoEncoder, DiffKDDiffusion
from .drkd import GloReUnit, InstanceRelation
from .fgd import FGDGlobalContext
from .fgfi import FGFIAdapter
from .fkd import FKDStudentAdapter, NonLocalBlock2d
from .freekd import FreeKDPrompts, freekd_haar_dwt, freekd_haar_idwt
from .frs import FRSAdapter
from .gdetkd import GDetKDLevelAttention
from .icd import ICDDecoder, ICDInstanceEncoder
from .labelenc import LabelEncAdapter, LabelEncEncoder
from .lgd import LGDKnowledgeMapper, LGDLabelEncoder, LGDRelationAdapter
from .maskd import MasKDTokens
from .mgd import MGDGenerator
from .mtkd_rl import MTKDRLPolicy
from .scalekd import MultiScaleCrossAttention, ScaleDecoupledFeature
from .ssd_det import SSDDetIdentityHead
from .unikd import UniKDKnowledgeExtractor, UniKDPredictionHead

__all__ = [
    "ChannelAdapter",
    "DeFeatAdapter",
    "DiffKDAutoEncoder",
    "DiffKDDiffusion",
    "FGDGlobalContext",
    "FGFIAdapter",
    "FKDStudentAdapter",
    "FRSAdapter",
    "FreeKDPrompts",
    "SSDDetIdentityHead",
    "freekd_haar_dwt",
    "freekd_haar_idwt",
    "GDetKDLevelAttention",
    "GloReUnit",
    "ICDDecoder",
    "ICDInstanceEncoder",
    "InstanceRelation",
    "LabelEncAdapter",
    "LabelEncEncoder",
    "LGDKnowledgeMapper",
    "LGDLabelEncoder",
    "LGDRelationAdapter",
    "MasKDTokens",
    "MGDGenerator",
    "MTKDRLPolicy",
    "MultiScaleCrossAttention",
    "NonLocalBlock2d",
    "ScaleDecoupledFeature",
    "UniKDKnowledgeExtractor",
    "UniKDPredictionHead",
]
