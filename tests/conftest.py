"""Shared fixtures: tiny random checkpoints that the tests write themselves (`tiny_checkpoints.py`)."""

from __future__ import annotations

import os

# Triton kernels run on the CPU under the interpreter, which must be chosen before triton is first
# imported (docs/architecture.md#kernels-and-triton). A machine with a GPU can run the parity tests for
# real with TRITON_INTERPRET=0.
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tiny_checkpoints import KINDS, write_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {kind: write_checkpoint(root / kind, kind) for kind in KINDS}


@pytest.fixture(scope="session")
def gpt2_handle(checkpoints):
    from workbench.models import load_model

    return load_model(str(checkpoints["gpt2"]), device="cpu", progress=False)
