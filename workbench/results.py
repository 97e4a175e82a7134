"""Result objects: small, typed, JSON-serialisable, with a tidy table, Altair charts and provenance.

Every analysis returns a subclass of `Result` registered in RESULT_KINDS by its `kind`, so that a
report can rebuild it from a run folder's results.json without recomputing anything.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar

import altair as alt
import pandas as pd

from workbench.registry import Registry

TRACKED_PACKAGES = ("workbench", "torch", "transformers", "transformer-lens", "sae-lens", "triton")


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        dist = "interp-workbench" if name == "workbench" else name
        try:
            found[name] = version(dist)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


@dataclass
class Provenance:
    """What produced a result: model and source, data slice, definition, settings, seed, versions, date."""

    model: dict[str, Any]
    data: dict[str, Any]
    definition: str
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    packages: dict[str, str] = field(default_factory=package_versions)
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    command: str | None = None  # the CLI command line, when a command produced the result

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        return cls(**data)


class Result:
    """Base of every result. Subclasses are dataclasses with a `provenance` field."""

    kind: ClassVar[str]
    title: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        body = {k: v for k, v in data.items() if k != "kind"}
        body["provenance"] = Provenance.from_dict(body["provenance"])
        return cls(**body)

    def table(self) -> pd.DataFrame:
        raise NotImplementedError

    def charts(self) -> dict[str, alt.Chart]:
        """Named Altair charts; an empty dict when the result is a record rather than a measurement."""
        return {}

    def _repr_html_(self) -> str:
        return f"<h4>{self.title}</h4>" + self.table().to_html(index=False)


RESULT_KINDS: Registry[type[Result]] = Registry("result kind")


def register_result(cls: type[Result]) -> type[Result]:
    """Class decorator: make a Result subclass readable back from results.json by its kind."""
    RESULT_KINDS.register(cls.kind, cls)
    return cls


# Modules that define result kinds; imported on first read so a report can rebuild any of them.
RESULT_MODULES = (
    "workbench.evaluate",
    "workbench.facts",
    "workbench.capturing",
    "workbench.sparsity_result",
    "workbench.essential",
    "workbench.experts.specialization",
    "workbench.experts.causal",
    "workbench.experts.moefication",
    "workbench.transcoders.run",
    "workbench.transcoders.evaluate",
    "workbench.transcoders.features",
    "workbench.transcoders.circuits",
    "workbench.replay.session",
    "workbench.replay.finercut",
)


def result_from_dict(data: dict[str, Any]) -> Result:
    for module in RESULT_MODULES:
        importlib.import_module(module)
    return RESULT_KINDS.get(data["kind"]).from_dict(data)
