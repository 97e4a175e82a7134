"""Capture probes and the capture loop (installed as `workbench.probes`).

from workbench.probes import ActivationProbe, AttentionProbe, RoutingProbe, MemorySink, capture
sink = capture(handle, windows, [ActivationProbe(["blocks.*.mlp.hook_post"])], MemorySink())
"""

from workbench.probes.activations import ActivationProbe, match_hooks
from workbench.probes.attention import AttentionProbe
from workbench.probes.base import attached
from workbench.probes.capture import capture
from workbench.probes.routing import RoutingProbe, moe_layers
from workbench.probes.sinks import MemorySink, Reducer, ReducerSink, StoreSink

__all__ = [
    "ActivationProbe",
    "AttentionProbe",
    "MemorySink",
    "Reducer",
    "ReducerSink",
    "RoutingProbe",
    "StoreSink",
    "attached",
    "capture",
    "match_hooks",
    "moe_layers",
]
