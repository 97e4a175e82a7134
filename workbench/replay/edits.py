"""Edits as data: each kind is a small frozen dataclass, registered by name, JSON round-trip.

Definitions: docs/methods.md#edit-kinds.

An edit says *what* changes, never how it is run: the replay engine (`plan.py`) and the hook-based
reference (`hooked.py`) each read the same edit. A list of edits is applied together. On one MLP, neuron
masks act first (a static set), then top-k and threshold edits in list order.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from workbench.errors import WorkbenchError
from workbench.registry import Registry

# Edit files nest three levels ({"edits": [{"neurons": [...]}]}); deeper JSON is refused before parsing
# (Python's parser would recurse past its stack limit on a 100,000-deep file).
MAX_JSON_DEPTH = 16
EDIT_KINDS: Registry[type[Edit]] = Registry(
    "edit kind", "Register a new one with @EDIT_KINDS.decorator(name) in workbench/replay/edits.py."
)


@dataclass(frozen=True)
class Edit:
    """Base: `kind` names the registered class; `layers(n)` the layers it touches, `sublayer` where."""

    kind: ClassVar[str] = ""
    sublayer: ClassVar[str] = "mlp"  # "attn", "mlp" or "weights" (any matrix of the layer)

    def layers(self, n_layers: int) -> list[int]:
        return [self.layer]  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.kind}
        for key, value in asdict(self).items():
            data[key] = list(value) if isinstance(value, tuple) else value
        return data

    def __post_init__(self) -> None:
        if hasattr(self, "layer"):
            object.__setattr__(self, "layer", _int(self.layer, f"{self.kind}: layer"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Edit:
        """This kind from its JSON object (the "kind" field may be left out)."""
        edit = edit_from_dict({"kind": cls.kind, **data})
        if not isinstance(edit, cls):
            raise WorkbenchError(f"expected a {cls.kind} edit, got {edit.kind}")
        return edit

    def check(self, n_layers: int) -> None:
        """Refuse layers the model does not have (model-specific checks happen when compiling)."""
        bad = [layer for layer in self.layers(n_layers) if not 0 <= layer < n_layers]
        if bad:
            raise WorkbenchError(
                f"{self.kind}: layer(s) {bad} do not exist; the model has layers 0..{n_layers - 1}"
            )


def _int(value: Any, what: str) -> int:
    """An integer field: ints (or integral floats from JSON) only, never bools, strings, NaN or infinity."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkbenchError(f"{what} must be an integer, got {value!r}")
    return value


def _number(value: Any, what: str, low: float, high: float = math.inf) -> float:
    """A finite number in [low, high] (NaN and infinities refused: they would pass or fail silently)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WorkbenchError(f"{what} must be a finite number, got {value!r}")
    if not low <= value <= high:
        bound = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise WorkbenchError(f"{what} must be a number {bound}, got {value!r}")
    return float(value)


def _ints(values: Any, what: str = "indices") -> tuple[int, ...]:
    if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
        raise WorkbenchError(f"{what} must be a list of integers, got {values!r}")
    return tuple(_int(v, what) for v in values)


@EDIT_KINDS.decorator("neuron_mask")
@dataclass(frozen=True)
class NeuronMask(Edit):
    """Zero these MLP neurons' activations (the same set for every token)."""

    kind: ClassVar[str] = "neuron_mask"
    layer: int
    neurons: tuple[int, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "neurons", tuple(sorted(set(_ints(self.neurons, "neuron_mask: neurons")))))


@EDIT_KINDS.decorator("topk")
@dataclass(frozen=True)
class TopK(Edit):
    """Keep each token's k MLP activations of largest magnitude, zero the rest (CATS / TEAL style)."""

    kind: ClassVar[str] = "topk"
    layer: int
    k: int

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "k", _int(self.k, "topk: k"))
        if self.k < 1:
            raise WorkbenchError(f"topk: k must be at least 1, got {self.k}")


@EDIT_KINDS.decorator("threshold")
@dataclass(frozen=True)
class Threshold(Edit):
    """Zero MLP activations whose magnitude is below `tau` (per token, so the kept set varies)."""

    kind: ClassVar[str] = "threshold"
    layer: int
    tau: float

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "tau", _number(self.tau, "threshold: tau", 0.0))


@EDIT_KINDS.decorator("head_mask")
@dataclass(frozen=True)
class HeadMask(Edit):
    """Remove these attention heads' outputs (their z is zero; the output bias stays)."""

    kind: ClassVar[str] = "head_mask"
    sublayer: ClassVar[str] = "attn"
    layer: int
    heads: tuple[int, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "heads", tuple(sorted(set(_ints(self.heads, "head_mask: heads")))))


EXPERT_MASK_MODES = ("reroute", "drop")


@EDIT_KINDS.decorator("expert_mask")
@dataclass(frozen=True)
class ExpertMask(Edit):
    """Mask routed experts of one layer: `reroute` each token to its next-best expert, or `drop` the choice.

    Applied by router hooks (`workbench.experts.masking.experts_masked`) or by the replay engine.
    """

    kind: ClassVar[str] = "expert_mask"
    layer: int
    experts: tuple[int, ...]
    mode: str = "reroute"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "experts", tuple(sorted(set(_ints(self.experts, "expert_mask: experts")))))
        if self.mode not in EXPERT_MASK_MODES:
            raise WorkbenchError(
                f"Unknown expert-mask mode {self.mode!r}; use one of {', '.join(EXPERT_MASK_MODES)}."
            )


@EDIT_KINDS.decorator("skip")
@dataclass(frozen=True)
class SublayerSkip(Edit):
    """Remove a whole attention or MLP sublayer: its output is zero (FinerCut)."""

    kind: ClassVar[str] = "skip"
    layer: int
    target: str  # "attn" or "mlp"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target not in ("attn", "mlp"):
            raise WorkbenchError(f"skip: target must be 'attn' or 'mlp', got {self.target!r}")

    @property
    def sublayer(self) -> str:  # type: ignore[override]
        return self.target


@EDIT_KINDS.decorator("weight_prune")
@dataclass(frozen=True)
class WeightPrune(Edit):
    """One-shot weight pruning (`workbench.essential.pruning`): global/layerwise/rowwise/N:M at `sparsity`.

    `layers` and `matrices` (kinds such as mlp_in, mlp_gate, mlp_out, attn_q, attn_k, attn_v, attn_qkv,
    attn_o) narrow the reference scope of `workbench.essential.pruning`; None means all of it.
    """

    kind: ClassVar[str] = "weight_prune"
    sublayer: ClassVar[str] = "weights"
    sparsity: float
    pattern: str = "layerwise"
    criterion: str = "magnitude"
    layer_list: tuple[int, ...] | None = None
    matrices: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", _number(self.sparsity, "weight_prune: sparsity", 0.0, 1.0))
        object.__setattr__(self, "seed", _int(self.seed, "weight_prune: seed"))
        if self.layer_list is not None:
            layers = tuple(sorted(set(_ints(self.layer_list, "weight_prune: layers"))))
            object.__setattr__(self, "layer_list", layers)
        if self.matrices is not None:
            object.__setattr__(self, "matrices", tuple(self.matrices))
        if self.criterion == "wanda":
            raise WorkbenchError(
                "weight_prune: criterion 'wanda' needs calibration activations; replay supports "
                "'magnitude' and 'random' (run `workbench essential` for Wanda curves)"
            )

    def layers(self, n_layers: int) -> list[int]:
        return list(self.layer_list) if self.layer_list is not None else list(range(n_layers))

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["layers"] = data.pop("layer_list")  # the JSON name; the field avoids shadowing layers()
        return data


@EDIT_KINDS.decorator("transcoder")
@dataclass(frozen=True)
class TranscoderSplice(Edit):
    """Replace layer `layer`'s MLP output by the reconstruction of a transcoder (`workbench.transcoders`).

    `features` (feature index, scale) pairs multiply those features' activations z_i by the scale before
    decoding (0 ablates a feature); None (the default, left out of the JSON) splices the plain ŷ.
    """

    kind: ClassVar[str] = "transcoder"
    layer: int
    path: str  # a training run folder, a workbench transcoder folder or an SAE-Lens folder
    features: tuple[tuple[int, float], ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "path", str(self.path))
        if self.features is not None:
            object.__setattr__(self, "features", _feature_scales(self.features))

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.kind, "layer": self.layer, "path": self.path}
        if self.features is not None:  # unused: the JSON stays what it was before the field existed
            data["features"] = [[i, s] for i, s in self.features]
        return data


def _feature_scales(pairs: Any) -> tuple[tuple[int, float], ...] | None:
    """(feature, scale) pairs, sorted by feature; each feature once; None when there are none."""
    what = "transcoder: features"
    if isinstance(pairs, dict):
        pairs = list(pairs.items())
    if isinstance(pairs, str | bytes) or not hasattr(pairs, "__iter__"):
        raise WorkbenchError(f"{what} must be a list of [feature, scale] pairs, got {pairs!r}")
    out: dict[int, float] = {}
    for pair in pairs:
        if isinstance(pair, str | bytes) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise WorkbenchError(f"{what} must be a list of [feature, scale] pairs, got {pair!r}")
        feature = _int(pair[0], f"{what}: feature index")
        if feature < 0:
            raise WorkbenchError(f"{what}: feature indices are >= 0, got {feature}")
        if feature in out:
            raise WorkbenchError(f"{what}: feature {feature} is given twice; give each feature once")
        out[feature] = _number(pair[1], f"{what}: scale of feature {feature}", -math.inf)
    return tuple(sorted(out.items())) or None


def edit_from_dict(data: dict[str, Any]) -> Edit:
    """One edit from its JSON object {"kind": ..., fields...}; unknown kinds and fields are refused."""
    if not isinstance(data, dict) or "kind" not in data:
        raise WorkbenchError(f"An edit is a JSON object with a 'kind' field; got {data!r}")
    cls = EDIT_KINDS.get(data["kind"])
    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in data.items() if k != "kind"}
    if cls is WeightPrune and "layers" in given:
        given["layer_list"] = given.pop("layers")
    unknown = sorted(set(given) - names)
    if unknown:
        raise WorkbenchError(f"{data['kind']}: unknown field(s) {unknown}; fields are {sorted(names)}")
    try:
        return cls(**given)
    except (TypeError, ValueError) as err:
        raise WorkbenchError(f"{data['kind']}: {err}; fields are {sorted(names)}") from None


def parse_edits(data: Any) -> list[Edit]:
    """Edits from JSON data: one edit object, a list of them, or {"edits": [...]}."""
    if isinstance(data, dict) and "edits" in data:
        data = data["edits"]
    items = data if isinstance(data, list) else [data]
    return [item if isinstance(item, Edit) else edit_from_dict(item) for item in items]  # []: no edit


def load_edits(source: str | Path) -> list[Edit]:
    """Edits from a JSON file (or a JSON string that starts with '{' or '[')."""
    text = str(source)
    if not text.lstrip().startswith(("{", "[")):
        path = Path(source).expanduser()
        if not path.is_file():
            raise WorkbenchError(f"Edit file {path} does not exist; write the edits as JSON (see README)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise WorkbenchError(
                f"Edit file {path} is not UTF-8 text ({err}); write the edits as JSON."
            ) from None
    depth = json_depth(text, MAX_JSON_DEPTH)
    if depth > MAX_JSON_DEPTH:
        raise WorkbenchError(
            f"Edits nest more than {MAX_JSON_DEPTH} levels of JSON arrays and objects; edits need "
            'at most 4 ({"edits": [{"kind": ..., "neurons": [...]}]}). Check that the file holds edits.'
        )
    try:
        return parse_edits(json.loads(text, parse_constant=_refuse_constant))
    except json.JSONDecodeError as err:
        raise WorkbenchError(f"Edits are not valid JSON: {err}") from None


def _refuse_constant(name: str) -> Any:
    raise WorkbenchError(f"Edits contain {name}, which is not a number in JSON; give finite numbers only.")


def json_depth(text: str, limit: int) -> int:
    """How deeply JSON text nests arrays and objects, up to limit + 1 (brackets inside strings skipped)."""
    depth = deepest = 0
    for bracket in re.finditer(r"[\[\]{}]", re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)):
        depth += 1 if bracket.group() in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > limit:
            break
    return deepest


def dump_edits(edits: list[Edit]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in edits]


def first_layer(edits: list[Edit], n_layers: int) -> int:
    """The first layer any edit touches: replay recomputes only layers >= this (n_layers: none)."""
    return min((layer for e in edits for layer in e.layers(n_layers)), default=n_layers)
