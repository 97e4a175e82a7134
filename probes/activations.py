"""Activation probe: keep the values of hooks chosen by TransformerLens name or glob pattern."""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field

import torch

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.probes.base import per_token, probing_pass
from workbench.store import FieldSpec
from workbench.store.format import FLOAT_DTYPES

_LAYER = re.compile(r"^blocks\.(\d+)\.")


def match_hooks(handle: ModelHandle, patterns: list[str], layers: list[int] | None = None) -> list[str]:
    """Hook names matching any pattern (fnmatch globs), optionally only in `layers`, in model order."""
    names = list(handle.hook_points)
    chosen = []
    for pattern in patterns:
        found = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not found:
            near = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
            near = near or [n for n in names if n.startswith("blocks.0.")][:8]
            raise WorkbenchError(
                f"Hook pattern {pattern!r} matches no hook of {handle.name}. Nearest hook names: "
                f"{', '.join(near)}. `handle.hook_names()` lists all {len(names)}."
            )
        chosen += [n for n in found if n not in chosen]
    if layers is not None:
        chosen = [n for n in chosen if (m := _LAYER.match(n)) is None or int(m.group(1)) in layers]
        if not chosen:
            raise WorkbenchError(
                f"No matched hook lies in layers {layers} (the model has {handle.facts.n_layers})."
            )
    order = {n: i for i, n in enumerate(names)}
    return sorted(chosen, key=order.__getitem__)


@dataclass
class ActivationProbe:
    """Values of the matched hooks, per token, stored as `dtype` (float32, float16 or bfloat16)."""

    patterns: list[str]
    layers: list[int] | None = None
    dtype: str = "float32"
    _names: list[str] = field(default_factory=list, init=False)
    _seen: dict[str, list[torch.Tensor]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.dtype not in FLOAT_DTYPES:
            raise WorkbenchError(f"Unknown dtype {self.dtype!r}; choose one of {', '.join(FLOAT_DTYPES)}.")

    def resolve(self, handle: ModelHandle) -> list[str]:
        self._names = match_hooks(handle, self.patterns, self.layers)
        return self._names

    def fields(self, handle: ModelHandle, context: int) -> list[FieldSpec]:
        """Shapes come from one probing forward pass on a single short window."""
        names = self.resolve(handle)
        shapes: dict[str, tuple[int, ...]] = {}
        probing_pass(handle, [(handle.hook_points[n], self._shape_hook(n, shapes)) for n in names])
        return [FieldSpec(n, shapes[n], self.dtype) for n in names]

    @staticmethod
    def _shape_hook(name: str, shapes: dict):
        def hook(module, inputs, output):
            shapes[name] = tuple(per_token(output, 1, 2).shape[1:])

        return hook

    def hooks(self, handle: ModelHandle):
        names = self._names or self.resolve(handle)
        self._seen = {n: [] for n in names}
        return [(handle.hook_points[n], self._store_hook(n)) for n in names]

    def _store_hook(self, name: str):
        def hook(module, inputs, output):
            self._seen[name].append(output.detach())

        return hook

    def take(self, batch: int, pos: int) -> dict[str, torch.Tensor]:
        out = {}
        for name, values in self._seen.items():
            if len(values) != 1:
                raise RuntimeError(f"hook {name} fired {len(values)} times in one forward pass")
            out[name] = per_token(values[0], batch, pos).to(FLOAT_DTYPES[self.dtype]).cpu()
            values.clear()
        return out
