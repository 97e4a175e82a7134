"""The science settings of an analysis: one frozen, keyword-only dataclass per runner, defaults stated once.

Every runner takes `(handle, windows, settings)`: `settings` holds what decides the numbers (definitions,
levels, seeds, batch sizes recorded in provenance); how the run is shown (progress bars) and inputs
already built (calibration windows) are separate keyword arguments. Torch-free.

    @dataclass(frozen=True, kw_only=True)
    class ThingSettings(Settings):
        k: int = 2

    ThingSettings(k=3).to_dict()  # {"k": 3}
"""

from __future__ import annotations

import dataclasses
from typing import Any


def _plain(value: Any) -> Any:
    """A JSON-ready copy: dataclasses as dicts, tuples and lists as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Settings:
    """Base of the settings dataclasses: `to_dict()` for provenance, `replace(**changes)` for a variant."""

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, JSON-ready (tuples as lists, nested dataclasses as dicts)."""
        return _plain(self)

    def replace(self, **changes: Any):
        """A copy with `changes` applied (the settings themselves are frozen)."""
        return dataclasses.replace(self, **changes)
