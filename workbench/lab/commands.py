"""The whitelist of commands the panel may start, their typed fields, and the argv built from a request.

The browser sends {"command": name, "args": {field: value}}. Only the commands below can be named, only
their fields can be set, and every value is checked against its field's type, range, choices or pattern
before it becomes an argument: the result is an argv list (never a shell string) in which each value is
one `--flag=value` item (so no value can pass for a flag), or a flag followed by validated numbers or
hook patterns. File paths are not among the fields: a job reads the shipped corpora and writes only its
new run folder.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from workbench.essential import defaults as essential
from workbench.experts import defaults as experts
from workbench.sparsity import defaults as sparsity
from workbench.transcoders import defaults as transcoder

FIELD_TYPES = ("choice", "int", "float", "bool", "text")
MAX_TEXT = 200
BIG = 2**31 - 1


class InvalidRequest(ValueError):
    """A job request outside the whitelist or with a value its field refuses (HTTP 400)."""


def _words(choices: tuple[str, ...]) -> str:
    """A pattern for a comma list of some of `choices`."""
    one = "|".join(map(re.escape, choices))
    return rf"({one})(,({one}))*"


INTS = r"\d{1,6}(,\d{1,6})*"  # a comma list of layer or head numbers
HOOKS = r"[A-Za-z0-9_.*?\[\]]{1,100}(,[A-Za-z0-9_.*?\[\]]{1,100})*"  # hook names or globs


@dataclass(frozen=True)
class Field:
    """One form field: a typed, checked value that becomes `--flag=value` (or nothing when null)."""

    name: str
    type: str
    help: str
    default: Any = None
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    pattern: str | None = None  # text: the whole value must match
    many: str | None = (
        None  # text: a comma list passed as "nargs" (--flag a b) or "repeat" (--flag=a --flag=b)
    )
    required: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def to_json(self) -> dict:
        body: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "help": self.help,
        }
        if self.choices:
            body["choices"] = list(self.choices)
        for key in ("min", "max", "pattern"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.required:
            body["required"] = True
        return body

    def check(self, value: Any) -> Any:
        """`value` if this field takes it, else InvalidRequest saying what the field takes."""
        if value is None:
            if self.required:
                raise InvalidRequest(f"{self.name} is required")
            return None
        if self.type == "bool":
            if not isinstance(value, bool):
                raise InvalidRequest(f"{self.name} must be true or false, got {value!r}")
        elif self.type == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise InvalidRequest(
                    f"{self.name} must be one of {', '.join(map(str, self.choices))}; got {value!r}"
                )
        elif self.type in ("int", "float"):
            whole = isinstance(value, int) and not isinstance(value, bool)
            number = whole or (isinstance(value, float) and math.isfinite(value))
            if not (whole if self.type == "int" else number):
                raise InvalidRequest(
                    f"{self.name} must be {'an integer' if self.type == 'int' else 'a number'}, got {value!r}"
                )
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise InvalidRequest(f"{self.name} must be between {self.min} and {self.max}, got {value!r}")
        elif self.type == "text":
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                raise InvalidRequest(f"{self.name} must be a text of at most {MAX_TEXT} characters")
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise InvalidRequest(
                    f"{self.name}: {value!r} is not of the form this field takes ({self.help})"
                )
        return value

    def argv(self, value: Any) -> list[str]:
        """The arguments for a checked `value` (none for null or false)."""
        if value is None or value is False:
            return []
        if value is True:
            return [self.flag]
        if self.many == "nargs":
            return [self.flag, *value.split(",")]
        if self.many == "repeat":
            return [f"{self.flag}={part}" for part in value.split(",")]
        return [f"{self.flag}={value}"]


@dataclass(frozen=True)
class CommandSpec:
    """A whitelisted command: its name, the words after `workbench`, and its fields."""

    name: str
    title: str
    words: tuple[str, ...]
    fields: tuple[Field, ...]
    needs_one_of: tuple[str, ...] = ()  # at least one of these fields must be set (capture)
    _by_name: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({f.name: f for f in self.fields})

    @property
    def label(self) -> str:
        return "-".join(self.words)

    def to_json(self) -> dict:
        return {"name": self.name, "title": self.title, "fields": [f.to_json() for f in self.fields]}

    def arguments(self, args: Any) -> list[str]:
        """The argv after `workbench`, without --out, for the request's `args`; InvalidRequest if any is
        not this command's field or not a value it takes."""
        if not isinstance(args, dict):
            raise InvalidRequest("args must be a JSON object of field names and values")
        unknown = sorted(set(args) - set(self._by_name))
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise InvalidRequest(f"{self.name} has no field {names}; its fields: {', '.join(self._by_name)}")
        values = {f.name: f.check(args.get(f.name)) for f in self.fields}
        if self.needs_one_of and not any(values[name] for name in self.needs_one_of):
            raise InvalidRequest(f"{self.name} needs at least one of {', '.join(self.needs_one_of)}")
        argv = list(self.words)
        for f in self.fields:
            argv += f.argv(values[f.name])
        return argv


def common_fields(models: list[str], corpora: list[str], tokens: int, max_tokens: int) -> tuple[Field, ...]:
    """The flags every analysis command shares (workbench.commands.flags.common_flags), minus file paths."""
    default_model = "tiny-relu" if "tiny-relu" in models else (models[0] if models else None)
    return (
        Field(
            "model",
            "choice",
            "a named model (empty: smollm2-135m if it can be had)",
            default_model,
            tuple(models),
        ),
        Field(
            "corpus",
            "choice",
            "named corpus NAME[:SPLIT] (empty: the command's default)",
            None,
            tuple(corpora),
        ),
        Field("tokens", "int", "tokens of text the analysis reads", tokens, min=1, max=max_tokens),
        Field(
            "context",
            "int",
            "window length in tokens, at most the model's context length",
            128,
            min=2,
            max=32768,
        ),
        Field("batch_size", "int", "windows per forward pass", 8, min=1, max=4096),
        Field("seed", "int", "seed for window selection and anything random", 0, min=0, max=BIG),
        Field("device", "choice", "cpu or cuda (empty: cuda if available)", None, ("cpu", "cuda")),
    )


def whitelist(models: list[str], corpora: list[str]) -> dict[str, CommandSpec]:
    """The commands the panel may start, by name, with `models` and `corpora` as the choices."""

    def common(tokens: int = 16384, max_tokens: int = 10_000_000) -> tuple[Field, ...]:
        return common_fields(models, corpora, tokens, max_tokens)

    calibration = Field(
        "calibration_tokens", "int", "train-split tokens for calibration", 2048, min=1, max=BIG
    )
    specs = [
        CommandSpec("evaluate", "Evaluate: held-out loss, perplexity and accuracy", ("evaluate",), common()),
        CommandSpec("report", "Report: evaluate and write an HTML report", ("report",), common()),
        CommandSpec(
            "sparsity",
            "Sparsity: lazy-neuron activation density",
            ("sparsity",),
            common()
            + (
                Field(
                    "definition",
                    "text",
                    "when a neuron counts as active: exact_zero, positive, magnitude@P, cett@R or topk@K "
                    "(empty: exact_zero for ReLU, positive for others)",
                    pattern=r"exact_zero|positive|(magnitude|cett)@\d*\.?\d+|topk@\d{1,7}",
                ),
                Field(
                    "inputs",
                    "text",
                    f"comma list of {', '.join(sparsity.INPUT_KINDS)}",
                    ",".join(sparsity.INPUTS),
                    pattern=_words(sparsity.INPUT_KINDS),
                ),
                calibration,
            ),
        ),
        CommandSpec(
            "essential",
            "Essential sparsity: one-shot pruning sweep",
            ("essential",),
            common()
            + (
                Field(
                    "pattern",
                    "text",
                    "global, layerwise, rowwise or N:M such as 2:4 (empty: global; rowwise with wanda)",
                    pattern=r"global|layerwise|rowwise|\d{1,3}:\d{1,3}",
                ),
                Field("criterion", "choice", "what is pruned first", essential.CRITERION, essential.CRITERIA),
                Field(
                    "levels",
                    "text",
                    "comma list of sparsities in [0, 1] (empty: 0, 0.1, ..., 0.9)",
                    pattern=r"\d*\.?\d+(,\d*\.?\d+){0,99}",
                ),
                Field(
                    "tolerance",
                    "float",
                    "s* keeps the loss within (1 + this) x dense",
                    essential.TOLERANCE,
                    min=0,
                    max=10,
                ),
                Field("refine", "int", "bisection steps after the sweep", essential.REFINE, min=0, max=20),
                calibration,
            ),
        ),
        CommandSpec(
            "experts",
            "Experts: MoE routing balance and specialization",
            ("experts",),
            common()
            + (
                Field(
                    "labels",
                    "text",
                    f"comma list of {', '.join(experts.LABELS)}",
                    ",".join(experts.LABELS),
                    pattern=_words(experts.LABELS),
                ),
                Field("baseline", "bool", "also measure a randomly initialised copy of the model", False),
                Field(
                    "mask",
                    "choice",
                    "also mask each expert in turn (empty: no masking)",
                    None,
                    ("reroute", "drop"),
                ),
                Field(
                    "mask_layers",
                    "text",
                    "with mask: only these layers, a comma list (empty: every layer)",
                    pattern=INTS,
                    many="nargs",
                ),
            ),
        ),
        CommandSpec(
            "moefy",
            "MoEfy: split dense MLPs into experts",
            ("moefy",),
            common()
            + (
                Field("experts", "int", "groups (experts) per MLP", 8, min=1, max=65536, required=True),
                Field("k", "int", "groups kept per token", experts.MOEFY_K, min=1, max=65536),
                Field(
                    "method", "choice", "how neurons are grouped", experts.MOEFY_METHOD, experts.MOEFY_METHODS
                ),
                Field(
                    "train_tokens",
                    "int",
                    "train-split tokens for the routers",
                    experts.MOEFY_TRAIN_TOKENS,
                    min=1,
                    max=BIG,
                ),
                Field(
                    "labels",
                    "text",
                    f"comma list of {', '.join(experts.LABELS)}",
                    ",".join(experts.MOEFY_LABELS),
                    pattern=_words(experts.LABELS),
                ),
            ),
        ),
        CommandSpec(
            "transcoder train",
            "Transcoder: train a sparse MLP replacement",
            ("transcoder", "train"),
            common(transcoder.TRAIN_TOKENS, 10_000_000_000)
            + (
                Field("layer", "int", "MLP layer (empty: the middle one)", None, min=0, max=10_000),
                Field(
                    "arch",
                    "choice",
                    "topk keeps the k largest features; relu trains with an L1 penalty",
                    transcoder.ARCH,
                    ("topk", "relu"),
                ),
                Field(
                    "width",
                    "int",
                    f"features (empty: {transcoder.WIDTH_PER_D_MODEL} x d_model)",
                    None,
                    min=1,
                    max=10_000_000,
                ),
                Field("k", "int", "topk: features kept per token", transcoder.K, min=1, max=100_000),
                Field("l1", "float", "relu: L1 coefficient (empty: 3e-3)", None, min=0, max=1e3),
                Field("skip", "bool", "add a linear skip connection", False),
                Field(
                    "batch_tokens",
                    "int",
                    "tokens per optimiser step",
                    transcoder.BATCH_TOKENS,
                    min=1,
                    max=10_000_000,
                ),
                Field("lr", "float", "learning rate (empty: by width and architecture)", None, min=0, max=10),
                Field(
                    "dead_tokens",
                    "int",
                    "a feature is dead after this many tokens without firing",
                    transcoder.DEAD_TOKENS,
                    min=1,
                    max=BIG,
                ),
                Field(
                    "remedy",
                    "choice",
                    "for dead features (empty: lift for topk from data, auxk from random, resample for relu)",
                    None,
                    ("lift", "auxk", "resample", "auxk+resample", "none"),
                ),
                Field(
                    "resample_every",
                    "int",
                    "steps between re-initialisations of dead features (resample remedies)",
                    transcoder.RESAMPLE_EVERY,
                    min=1,
                    max=BIG,
                ),
                Field(
                    "pairs_dtype",
                    "choice",
                    "model forward precision for pairs (auto: bfloat16 where native, else float32)",
                    "auto",
                    transcoder.PAIRS_DTYPES,
                ),
                Field(
                    "checkpoint_every",
                    "int",
                    "steps between checkpoints",
                    transcoder.CHECKPOINT_EVERY,
                    min=1,
                    max=BIG,
                ),
            ),
        ),
        CommandSpec(
            "capture",
            "Capture: stream activations, attention, routing to a store",
            ("capture",),
            common(16384, 1_000_000_000)
            + (
                Field(
                    "hooks",
                    "text",
                    "comma list of hook names or globs, e.g. blocks.*.mlp.hook_post",
                    pattern=HOOKS,
                    many="repeat",
                ),
                Field("attention", "bool", "attention patterns per query token", False),
                Field(
                    "attention_summaries",
                    "bool",
                    "with attention: only entropy, first-token weight, max",
                    False,
                ),
                Field("routing", "bool", "router logits, top-k experts and weights (MoE)", False),
                Field(
                    "layers",
                    "text",
                    "only these layers, a comma list (empty: every layer)",
                    pattern=INTS,
                    many="nargs",
                ),
                Field(
                    "heads",
                    "text",
                    "with attention: only these heads, a comma list (empty: all)",
                    pattern=INTS,
                    many="nargs",
                ),
                Field(
                    "dtype",
                    "choice",
                    "dtype of the stored activations",
                    "float32",
                    ("float32", "float16", "bfloat16"),
                ),
                Field("shard_tokens", "int", "tokens per shard (empty: about 64 MB)", None, min=1, max=BIG),
            ),
            needs_one_of=("hooks", "attention", "routing"),
        ),
    ]
    return {spec.name: spec for spec in specs}


def parse_request(body: Any, specs: dict[str, CommandSpec]) -> tuple[CommandSpec, list[str]]:
    """The command and its argv (after `workbench`, without --out) of a POST jobs body."""
    if not isinstance(body, dict) or set(body) - {"command", "args"} or "command" not in body:
        raise InvalidRequest('the body must be {"command": name, "args": {field: value}} and nothing else')
    name = body["command"]
    if not isinstance(name, str) or name not in specs:
        raise InvalidRequest(f"unknown command {name!r}; the panel can start: {', '.join(specs)}")
    spec = specs[name]
    return spec, spec.arguments(body.get("args", {}))


def registry_choices() -> tuple[list[str], list[str]]:
    """The model names and NAME / NAME:SPLIT corpora of the registries (imports the model code)."""
    from workbench.corpus import CORPORA
    from workbench.models import MODELS

    corpora = []
    for name in CORPORA:
        corpora += [name, *(f"{name}:{split}" for split in CORPORA.get(name).splits)]
    return list(MODELS), corpora
