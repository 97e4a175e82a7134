"""The one way the workbench attaches forward hooks: `hooks_attached`, which always detaches them.

Every analysis that changes or reads a forward pass (probes, expert masks, transcoder splices, hook-based
edits, circuit recordings) registers its PyTorch forward hooks here, so none is left behind when the
block ends, also when it raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

from torch import nn


@contextlib.contextmanager
def hooks_attached(hooks: Iterable[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Register each (module, forward-hook) pair, in order, for the duration of the block.

    A hook is called as hook(module, inputs, output) and may return a replacement output. Every hook
    registered so far is removed on exit, on an exception in the block, and when registering fails.
    """
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
