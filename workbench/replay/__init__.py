"""Edits and sparse replay: edits as data, a replay engine that reuses the cached prefix, and a session API.

from workbench.replay import ReplaySession, NeuronMask, SublayerSkip
session = ReplaySession.from_text(handle, "def add(a, b):")
session.apply([SublayerSkip(3, "mlp")]).ce_delta
"""

from workbench.replay.edits import (
    EDIT_KINDS,
    Edit,
    ExpertMaskEdit,
    HeadMask,
    NeuronMask,
    SublayerSkip,
    Threshold,
    TopK,
    TranscoderSplice,
    WeightPrune,
    dump_edits,
    load_edits,
    parse_edits,
)
from workbench.replay.engine import ReplayEngine
from workbench.replay.hooked import edits_applied
from workbench.replay.session import ReplayResult, ReplaySession

__all__ = [
    "EDIT_KINDS",
    "Edit",
    "ExpertMaskEdit",
    "HeadMask",
    "NeuronMask",
    "ReplayEngine",
    "ReplayResult",
    "ReplaySession",
    "SublayerSkip",
    "Threshold",
    "TopK",
    "TranscoderSplice",
    "WeightPrune",
    "dump_edits",
    "edits_applied",
    "load_edits",
    "parse_edits",
]
