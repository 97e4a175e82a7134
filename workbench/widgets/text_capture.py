"""What the attention viewer and the expert explorer share: one text (or a session's first row) as
token ids, and one capture pass of probes over it.

Probes attach their hooks through `workbench.probes` (and so through `hooks_attached`); a lock keeps two
widgets from attaching hooks to one model at the same time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

from workbench.corpus import TokenWindows
from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.replay.session import ReplaySession

CAPTURE_LOCK = threading.Lock()  # one capture at a time: hooks of two captures on one model would mix


@dataclass(frozen=True)
class TextInput:
    """The model, the token ids [T] the widget looks at, their texts, and the session they came from."""

    handle: ModelHandle
    ids: torch.Tensor  # [T] int64, on the CPU
    tokens: list[str]  # each token decoded on its own
    session: ReplaySession | None  # the session given (or the linked explorer's), else None
    text: str | None


def text_input(model: Any, text: str | None, explorer: Any = None, what: str = "widget") -> TextInput:
    """Token ids of `text` for a model handle, or of a session's first row; with a linked `explorer`
    (an EditExplorer), its session's text, which must be the same model and text as any given."""
    session = model if isinstance(model, ReplaySession) else None
    handle = session.handle if session is not None else model
    if not isinstance(handle, ModelHandle):
        raise WorkbenchError(
            f"{what}: give a model handle (workbench.models.load_model) or a ReplaySession, "
            f"not {type(model).__name__}."
        )
    if explorer is not None:
        linked = getattr(explorer, "session", None)
        if not isinstance(linked, ReplaySession):
            raise WorkbenchError(f"{what}: explorer= must be an EditExplorer, not {type(explorer).__name__}.")
        if linked.handle is not handle:
            raise WorkbenchError(
                f"{what}: the linked explorer edits {linked.handle.name}, not this {handle.name} model."
            )
        if session is not None and session is not linked:
            raise WorkbenchError(f"{what}: give the explorer's own session (or the model) with explorer=.")
        explorer_text = linked.data.get("text")
        if text is not None and explorer_text is not None and text != explorer_text:
            raise WorkbenchError(
                f"{what}: the linked explorer replays another text; leave text out to use the explorer's."
            )
        session = linked
    if session is not None:
        ids = session.engine.tokens[0].detach().cpu()
        text = session.data.get("text", text)
    else:
        if not isinstance(text, str) or not text:
            raise WorkbenchError(f"Give the text to look at: {what}(handle, 'some text').")
        ids = torch.tensor(handle.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() == 0:
        raise WorkbenchError(f"{what}: the text has no tokens.")
    if ids.numel() > handle.facts.n_ctx:
        raise WorkbenchError(
            f"{what}: the text has {ids.numel()} tokens, more than {handle.name}'s {handle.facts.n_ctx} "
            "positions; give a shorter text."
        )
    decode = session.token_text if session is not None else (lambda t: handle.tokenizer.decode([t]))
    return TextInput(handle, ids, [decode(t) for t in ids.tolist()], session, text)


def text_windows(ids: torch.Tensor) -> TokenWindows:
    """One window holding the text: one document, one domain, positions 0..T-1."""
    n = int(ids.numel())
    return TokenWindows(
        tokens=ids.reshape(1, n).long(),
        doc=torch.zeros(1, n, dtype=torch.int32),
        domain=torch.zeros(1, n, dtype=torch.int16),
        position=torch.arange(n, dtype=torch.int32).reshape(1, n),
        doc_ids=["text"],
        domains=["text"],
        slice_info={"text_tokens": n},
    )


def capture_text(handle: ModelHandle, ids: torch.Tensor, probes: list[Any]):
    """One forward pass over the text with `probes` attached; the MemorySink with their values."""
    from workbench.probes.capture import MemorySink, capture

    with CAPTURE_LOCK:
        return capture(handle, text_windows(ids), probes, MemorySink(), batch_size=1, progress=False)
