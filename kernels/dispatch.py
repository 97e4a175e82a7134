"""Choosing between a kernel's Triton path and its torch path.

Auto (backend=None) takes Triton only when every tensor is on a CUDA device and triton imports;
backend="triton" forces it (the parity tests run it on CPU tensors under TRITON_INTERPRET=1).
WORKBENCH_DISABLE_TRITON=1 always wins, forced or not: it is the switch that rules Triton out when
a kernel is suspected, so it must not be overridable by a call site.
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("torch", "triton")
DISABLE_ENV = "WORKBENCH_DISABLE_TRITON"


@functools.cache
def triton_importable() -> bool:
    """Whether `import triton` works here (checked once)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_disabled() -> bool:
    return os.environ.get(DISABLE_ENV) == "1"


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(*tensors: torch.Tensor | None, backend: str | None = None) -> bool:
    """True to run the Triton path for these tensors, False for the torch path (None entries are ignored)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None (automatic), not {backend!r}")
    if triton_disabled() or backend == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if backend is None:
        return on_cuda and triton_importable()
    if not triton_importable():
        raise RuntimeError(
            "backend='triton' was asked for but triton does not import here; "
            "install it (`pip install triton`, Linux) or pass backend='torch'."
        )
    if not on_cuda and not interpreting():
        raise RuntimeError(
            "backend='triton' on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 in the "
            "environment before triton is first imported, move the tensors to a CUDA device, "
            "or pass backend='torch'."
        )
    return True
