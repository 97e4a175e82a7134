"""Edits and sparse replay: edits as data, a replay engine that reuses the cached prefix, and a session API.

from workbench.replay import ReplaySession, NeuronMask, SublayerSkip
session = ReplaySession.from_text(handle, "def add(a, b):")
session.apply([SublayerSkip(3, "mlp")]).ce_delta

The names below are imported on first use (PEP 562), so that `workbench --help`, which reads the replay
command's module (workbench/commands/replay.py), does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.replay.batched import replay_in_batches
    from workbench.replay.edits import (
        EDIT_KINDS,
        Edit,
        ExpertMask,
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

_MODULE_OF = {
    **dict.fromkeys(
        [
            "EDIT_KINDS",
            "Edit",
            "ExpertMask",
            "HeadMask",
            "NeuronMask",
            "SublayerSkip",
            "Threshold",
            "TopK",
            "TranscoderSplice",
            "WeightPrune",
            "dump_edits",
            "load_edits",
            "parse_edits",
        ],
        "edits",
    ),
    "ReplayEngine": "engine",
    "edits_applied": "hooked",
    "replay_in_batches": "batched",
    "ReplayResult": "session",
    "ReplaySession": "session",
}

__all__ = [
    "EDIT_KINDS",
    "Edit",
    "ExpertMask",
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
    "replay_in_batches",
]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
