"""Where calibration tokens come from: one rule for every analysis that fits something to data first.

Wanda's input norms (`essential --criterion wanda`), the `magnitude@P` / `cett@R` thresholds and the
`train` input kind (`sparsity`), MoEfication's routers (`moefy`), FinerCut's removal choices
(`finercut`) and the training tokens of `bench transcoder` all come from `calibration_windows`, and from
one source, in this order:

1. `--calibration NAME[:SPLIT]`, a named corpus (SPLIT defaults to `train`), or `--calibration FILE...`,
   the user's own .txt / .jsonl files;
2. otherwise the train split of the corpus in use: `--corpus NAME[:SPLIT]` gives `NAME:train`, and no
   `--corpus` gives `pydocs:train`;
3. with `--text` and no `--calibration`, nothing: the user's files have no train split, and calibrating
   on the measured text would fit the analysis to the very tokens it reports on, so the command refuses
   and says to give `--calibration`.

The source and the rule that chose it are written into the windows' `slice_info`
(`calibration_source`, `calibration_rule`), which every result's provenance carries. A core given no
source applies the same rule to the windows it measures (`source_of`).

Each core draws its own windows from the source, with the seed it states: `wanda_calibration`
(essential/wanda.py), `sparsity_calibration` (sparsity/thresholds.py) and `moefy_calibration`
(experts/moefication.py) with seed + 1, `finercut_calibration` (replay/finercut.py) and sparsity's
`train` inputs with the seed. Transcoder training reads its text through `calibration_windows` too, from
`training_source` (the train split by default, or the --corpus split or --text files named).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.corpus import CORPORA, DEFAULT_CORPUS, TokenWindows, windows_for
from workbench.errors import WorkbenchError

TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class CalibrationSource:
    """A named corpus split (`corpus`, as NAME:SPLIT) or the user's files (`text`), and why it was chosen."""

    corpus: str | None = None
    text: tuple[str, ...] | None = None
    rule: str = ""
    warning: str | None = None

    @property
    def label(self) -> str:
        return self.corpus if self.corpus else "text files " + ", ".join(self.text or ())

    def describe(self) -> dict[str, Any]:
        body = {"calibration_source": self.label, "calibration_rule": self.rule}
        return body | ({"calibration_warning": self.warning} if self.warning else {})


def train_split_of(corpus: str | None) -> str:
    """`NAME:train` for the corpus in use (`--corpus NAME[:SPLIT]`; pydocs when none is named)."""
    name = (corpus or DEFAULT_CORPUS).partition(":")[0]
    spec = CORPORA.get(name)
    if TRAIN_SPLIT not in spec.splits:
        raise WorkbenchError(
            f"Corpus {name!r} has no {TRAIN_SPLIT} split to calibrate on (its splits: "
            f"{', '.join(spec.splits)}); give --calibration NAME[:SPLIT] or --calibration FILE..."
        )
    return f"{name}:{TRAIN_SPLIT}"


def calibration_source(
    corpus: str | None = None,
    text: list[str] | None = None,
    calibration: list[str] | str | None = None,
    purpose: str = "calibration",
) -> CalibrationSource:
    """The calibration source for a command run on `--corpus corpus` or `--text text` (see the module)."""
    measured = (corpus or DEFAULT_CORPUS) if not text else None
    if measured and ":" not in measured:
        measured = f"{measured}:heldout"
    if calibration:
        entries = [calibration] if isinstance(calibration, str) else [str(c) for c in calibration]
        name, _, split = entries[0].partition(":")
        if len(entries) == 1 and name in CORPORA and not Path(entries[0]).expanduser().exists():
            spec = CORPORA.get(name)
            split = split or TRAIN_SPLIT
            if split not in spec.splits:
                raise WorkbenchError(
                    f"--calibration {entries[0]}: corpus {name!r} has no split {split!r}; its splits: "
                    f"{', '.join(spec.splits)}."
                )
            chosen = f"{name}:{split}"
            same = chosen == measured
            warning = f"{purpose} uses {chosen}, the split being measured" if same else None
            return CalibrationSource(corpus=chosen, rule="--calibration", warning=warning)
        missing = [e for e in entries if not Path(e).expanduser().is_file()]
        if missing:
            raise WorkbenchError(
                f"--calibration {missing[0]}: neither a file nor a named corpus (named corpora: "
                f"{', '.join(CORPORA.names())}; give NAME[:SPLIT] or .txt / .jsonl files)."
            )
        same = bool(text) and sorted(map(str, text)) == sorted(entries)
        warning = f"{purpose} uses the measured --text files themselves" if same else None
        return CalibrationSource(text=tuple(entries), rule="--calibration", warning=warning)
    if text:
        raise WorkbenchError(
            f"{purpose} needs tokens other than the measured text, and --text files have no train split: "
            "give --calibration NAME[:SPLIT] (e.g. pydocs:train, the default for the shipped corpus) or "
            "--calibration FILE... (other text of your own; the same files are accepted, with a warning)."
        )
    chosen = train_split_of(corpus)
    rule = f"the {TRAIN_SPLIT} split of --corpus {corpus}" if corpus else "the default corpus's train split"
    warning = f"{purpose} uses {chosen}, the split being measured" if chosen == measured else None
    return CalibrationSource(corpus=chosen, rule=rule, warning=warning)


def source_of(windows: TokenWindows, purpose: str = "calibration") -> CalibrationSource:
    """The source for an analysis of `windows` given none: the rule above, applied to the corpus split or
    the text files the windows were cut from (text files refuse, as `--text` without `--calibration` does)."""
    info = windows.slice_info
    corpus = f"{info['corpus']}:{info['split']}" if info.get("corpus") and info.get("split") else None
    return calibration_source(corpus, info.get("text_files"), None, purpose)


def training_source(corpus: str | None = None, text: list[str] | None = None) -> CalibrationSource:
    """The text a model is trained on (transcoders): `text` files, else `corpus` NAME:SPLIT as named, else
    NAME's train split (pydocs:train without a corpus). The measured text is allowed: training reports on
    other windows."""
    if text:
        return CalibrationSource(text=tuple(str(t) for t in text), rule="--text")
    if corpus and ":" in corpus:
        return CalibrationSource(corpus=corpus, rule=f"--corpus {corpus}")
    rule = f"the {TRAIN_SPLIT} split of --corpus {corpus}" if corpus else "the default corpus's train split"
    return CalibrationSource(corpus=train_split_of(corpus), rule=rule)


def calibration_windows(
    handle: Any, source: CalibrationSource, context: int, n_tokens: int | None, seed: int
) -> TokenWindows:
    """`n_tokens` of the source in whole `context` windows, chosen with `seed`; the source in slice_info.

    The one way calibration and training windows are made: `n_tokens` None takes every window, in one
    seeded order that mixes documents and domains.
    """
    windows = windows_for(
        handle,
        corpus=source.corpus,
        text=list(source.text) if source.text else None,
        context=context,
        n_tokens=n_tokens,
        seed=seed,
    )
    if source.warning:
        print(f"note: {source.warning}; this is recorded in the result's provenance.", file=sys.stderr)
    windows.slice_info = windows.slice_info | source.describe()
    return windows
