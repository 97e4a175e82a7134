"""The defaults of long replays (`workbench.replay.batched`), stated once; torch-free, for the help text."""

from __future__ import annotations

PROMPT_TOKENS = 32  # the prompt of a generation, when none is given: the first window's first tokens
