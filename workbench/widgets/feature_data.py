"""What the feature explorer reads: the transcoder (a run folder, or one in memory written where a splice
edit can name it) and the context windows its feature statistics are measured on."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from workbench.corpus import Document, TokenWindows, make_windows, windows_for
from workbench.errors import WorkbenchError
from workbench.transcoders.files import save_transcoder
from workbench.transcoders.model import Transcoder
from workbench.transcoders.run import load_any

CONTEXT = 64  # tokens per context window (fewer when the model has fewer positions)
CONTEXT_TOKENS = 4096  # held-out tokens the feature statistics are measured on by default


def transcoder_of(transcoder: str | Path | Transcoder) -> tuple[Transcoder, str]:
    """The transcoder and the folder a splice edit names: a run folder as given, or an in-memory
    transcoder written to a temporary folder (removed when Python exits) so that its edits replay."""
    if isinstance(transcoder, Transcoder):
        folder = tempfile.mkdtemp(prefix="workbench-transcoder-")
        atexit.register(shutil.rmtree, folder, True)
        save_transcoder(transcoder, Path(folder))
        return transcoder, folder
    if not isinstance(transcoder, str | Path) or not str(transcoder).strip():
        raise WorkbenchError(
            "Give the transcoder as a run folder (workbench transcoder train --out DIR) or a Transcoder: "
            "FeatureExplorer(handle, text, transcoder='runs/tc')."
        )
    return load_any(transcoder), str(transcoder)


def context_windows(handle, contexts: TokenWindows | str | list[str] | None) -> TokenWindows:
    """Windows the feature statistics are measured on: given windows; a corpus name (NAME[:SPLIT]); texts
    (each its own document); or, for None, held-out text of the shipped corpus."""
    context = min(CONTEXT, handle.facts.n_ctx)
    if isinstance(contexts, TokenWindows):
        return contexts
    if contexts is None or isinstance(contexts, str):
        return windows_for(handle, corpus=contexts, context=context, n_tokens=CONTEXT_TOKENS)
    texts = [str(t) for t in contexts]
    if not texts:
        raise WorkbenchError("contexts: give at least one text, a corpus name or token windows")
    docs = [Document(str(i), "text", t) for i, t in enumerate(texts)]
    total = sum(len(handle.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    return make_windows(
        docs, handle.tokenizer, min(context, total), handle.separator_token_id, {"texts": len(texts)}
    )
