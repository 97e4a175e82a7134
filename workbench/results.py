"""Result objects: small, typed, JSON-serialisable, with a tidy table, Altair charts and provenance.

Every analysis returns a subclass of `Result` registered in RESULT_KINDS by its `kind` (the
`register_result` decorator, run when the analysis module is imported), so that a report can rebuild it
from a run folder's results.json without recomputing anything.

Result kinds are found through the `workbench.results` entry-point group: each entry is named by the
kind and points at its class (`kind = "package.module:ResultClass"`), so an installed package, the
workbench itself or a third party, adds a kind without this module naming it. A kind nobody provides
loads as a `GenericResult`: its JSON kept as it is, shown as a table of its fields.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import platform
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version
from typing import Any, ClassVar

import altair as alt
import pandas as pd

from workbench.registry import Registry

TRACKED_PACKAGES = ("workbench", "torch", "transformers", "transformer-lens", "sae-lens", "triton")


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    """Read once per process: the metadata look-ups cost 16 ms, which a live widget pays on every update."""
    found = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        dist = "interp-workbench" if name == "workbench" else name
        try:
            found[name] = version(dist)
        except PackageNotFoundError:
            found[name] = "not installed"
    return tuple(found.items())


def package_versions() -> dict[str, str]:
    return dict(_installed_versions())


@dataclass(kw_only=True)
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

    def headline(self) -> dict[str, int | float | str]:
        """The few figures that sum the result up in a table of runs (the Lab panel's runs list).

        By default its top-level numbers and short words (`headline_figures`); a kind whose figures sit
        deeper, or that has too many, overrides this. Not part of the JSON: reports and --json are unchanged.
        """
        return headline_figures(self.to_dict())

    def _repr_html_(self) -> str:
        return f"<h4>{self.title}</h4>" + self.table().to_html(index=False)


HEADLINE_SKIP = ("kind", "provenance", "model")  # the run's row shows the model; provenance is not a figure
HEADLINE_MAX_FIGURES = 8
HEADLINE_MAX_TEXT = 40  # longer strings (notes, paths, commands) are prose, not figures


def headline_figures(fields: dict[str, Any]) -> dict[str, int | float | str]:
    """The first few top-level fields of a result's JSON that are finite numbers or short one-line words,
    in their order (booleans, nulls, lists and nested objects are left out)."""
    figures: dict[str, int | float | str] = {}
    for name, value in fields.items():
        if name in HEADLINE_SKIP or isinstance(value, bool):
            continue
        number = isinstance(value, (int, float)) and math.isfinite(value)
        word = isinstance(value, str) and 0 < len(value) <= HEADLINE_MAX_TEXT and "\n" not in value
        if number or word:
            figures[name] = value
        if len(figures) == HEADLINE_MAX_FIGURES:
            break
    return figures


RESULT_KINDS: Registry[type[Result]] = Registry("result kind")


def register_result(cls: type[Result]) -> type[Result]:
    """Class decorator: make a Result subclass readable back from results.json by its kind."""
    RESULT_KINDS.register(cls.kind, cls)
    return cls


RESULT_ENTRY_POINTS = "workbench.results"  # the entry-point group that names every result kind


def result_entry_points() -> dict[str, EntryPoint]:
    """The installed `workbench.results` entry points by kind (the entry point's name)."""
    return {ep.name: ep for ep in entry_points(group=RESULT_ENTRY_POINTS)}


def result_kinds() -> list[str]:
    """Every result kind a run folder can hold and be read back as its own class: those registered
    so far and those any installed package declares, sorted. Imports nothing."""
    return sorted(set(RESULT_KINDS.names()) | set(result_entry_points()))


def load_result_kind(kind: str) -> type[Result] | None:
    """The class of `kind`: registered already, or imported through its entry point; None if no
    installed package provides it (or its entry point fails to load, which is warned about)."""
    if kind in RESULT_KINDS:
        return RESULT_KINDS.get(kind)
    ep = result_entry_points().get(kind)
    if ep is None:
        return None
    try:
        loaded = ep.load()  # importing the module runs its @register_result
    except Exception as exc:  # a broken third-party package must not make a run folder unreadable
        message = f"result kind {kind!r}: entry point {ep.value!r} failed to load ({exc!r})"
        warnings.warn(message, stacklevel=2)
        return None
    if kind not in RESULT_KINDS and isinstance(loaded, type) and issubclass(loaded, Result):
        if getattr(loaded, "kind", None) != kind:
            warnings.warn(
                f"result kind {kind!r}: entry point {ep.value!r} names a class of kind "
                f"{getattr(loaded, 'kind', None)!r}",
                stacklevel=2,
            )
            return None
        register_result(loaded)
    return RESULT_KINDS.get(kind) if kind in RESULT_KINDS else None


@dataclass(kw_only=True)
class GenericResult(Result):
    """A result of a kind no installed package reads: its JSON kept as it is (written back unchanged),
    shown as a table of its top-level fields. `provenance` is read from the JSON where it is there."""

    kind: str  # type: ignore[misc]  # an instance field here: the kind read from the JSON
    body: dict[str, Any]  # every field but "kind", as read
    provenance: Provenance

    @property
    def title(self) -> str:  # type: ignore[override]
        return f"{self.kind} (generic: no installed package reads this kind)"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.body}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenericResult:
        body = {k: v for k, v in data.items() if k != "kind"}
        stated = body.get("provenance")
        stated = stated if isinstance(stated, dict) else {}
        names = {f.name for f in dataclasses.fields(Provenance)}
        known = {k: v for k, v in stated.items() if k in names}
        provenance = Provenance(
            **{"model": {}, "data": {}, "definition": "(not stated)"} | known  # type: ignore[arg-type]
        )
        return cls(kind=str(data.get("kind")), body=body, provenance=provenance)

    def table(self) -> pd.DataFrame:
        rows = [
            {"field": k, "value": v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v)}
            for k, v in self.body.items()
            if k != "provenance"
        ]
        return pd.DataFrame(rows, columns=["field", "value"])


def result_from_dict(data: dict[str, Any]) -> Result:
    """Rebuild a result from its JSON: as its own class where an installed package provides its kind,
    else as a `GenericResult` (with a warning that says how to install the reader)."""
    cls = load_result_kind(str(data.get("kind")))
    if cls is None:
        warnings.warn(
            f"no installed package provides result kind {data.get('kind')!r} (no {RESULT_ENTRY_POINTS!r} "
            "entry point names it); it is read as a generic result. If it is one of the workbench's own "
            "kinds, reinstall the workbench (pip install -e .) so that its entry points exist.",
            stacklevel=2,
        )
        return GenericResult.from_dict(data)
    return cls.from_dict(data)
