"""The capture loop: run token windows through a model with probes attached, feed a sink.

This module is also the probes' public face: it re-exports every probe and sink, so one import serves
a notebook (`workbench.probes` is a namespace package with no `__init__`, so that the repository's
top-level `probes/` folder can never shadow an installed distribution of that name):

    from workbench.probes.capture import ActivationProbe, AttentionProbe, MemorySink, capture
    sink = capture(handle, windows, [ActivationProbe(["blocks.*.mlp.hook_post"])], MemorySink())
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from workbench.corpus import TokenWindows
from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.probes.activations import ActivationProbe, match_hooks
from workbench.probes.attention import AttentionProbe
from workbench.probes.base import ForwardDone, attached
from workbench.probes.routing import RoutingProbe, moe_layers
from workbench.probes.sinks import MemorySink, Reducer, ReducerSink, Sink, StoreSink, TeeSink
from workbench.progress import Bar

__all__ = [
    "ActivationProbe",
    "AttentionProbe",
    "MemorySink",
    "Reducer",
    "ReducerSink",
    "RoutingProbe",
    "StoreSink",
    "TeeSink",
    "attached",
    "capture",
    "match_hooks",
    "moe_layers",
]


def batch_meta(batch, pos: int) -> dict[str, torch.Tensor]:
    """Per-token metadata of a batch, flattened like the captured values: [batch * pos]."""
    return {
        "token": batch.tokens.flatten(),
        "doc": batch.doc.flatten(),
        "domain": batch.domain.flatten(),
        "position": batch.position.flatten(),
        "window": batch.window.repeat_interleave(pos),
    }


def capture(
    handle: ModelHandle,
    windows: TokenWindows,
    probes: list[Any],
    sink: Sink,
    batch_size: int = 8,
    progress: bool = True,
    stop_early: bool = True,
    n_tokens: int | None = None,
) -> Sink:
    """Run every window through the model with `probes` attached; each batch's values go to `sink`.

    A resumed store reports the tokens it already holds; whole windows up to there are skipped, so a
    killed capture ends with exactly the tokens and values of a clean run. With `stop_early`, each
    forward pass stops once the last probe has its values (a capture of early layers is cheap).
    `n_tokens` keeps exactly that many tokens: the last window is cut short (default: every window).
    """
    fields = [spec for probe in probes for spec in probe.fields(handle, windows.context)]
    if not fields:
        raise WorkbenchError("Nothing to capture: give at least one hook pattern, --attention or --routing.")
    total = windows.n_tokens if n_tokens is None else min(n_tokens, windows.n_tokens)
    done = sink.open(fields, total)
    if done < total and done % windows.context:
        raise WorkbenchError(
            f"The store holds {done} tokens, not a whole number of {windows.context}-token windows."
        )
    bar = Bar(total, initial=done, unit="tokens", desc=f"capture {handle.name}", show=progress)
    try:
        with attached(handle, probes, stop_when_done=stop_early), torch.inference_mode():
            batches = (
                windows.batches(batch_size, first_window=done // windows.context) if done < total else []
            )
            for batch in batches:
                b, pos = batch.tokens.shape
                with contextlib.suppress(ForwardDone):  # every probe has its values: skip the rest
                    handle.logits(batch.tokens)
                values: dict[str, torch.Tensor] = {}
                for probe in probes:
                    values |= probe.take(b, pos)
                meta = batch_meta(batch, pos)
                keep = min(b * pos, total - done)
                if keep < b * pos:  # the requested token count ends inside this batch
                    values = {k: v[:keep] for k, v in values.items()}
                    meta = {k: v[:keep] for k, v in meta.items()}
                sink.consume(values, meta)
                done += keep
                bar.update(keep)
                if done >= total:
                    break
    except BaseException:
        getattr(sink, "abort", lambda: None)()
        raise
    finally:
        bar.close()
    sink.close()
    return sink
