"""The panel's command whitelist: typed fields, strict checks, and argv lists the real CLI parses."""

from __future__ import annotations

import pytest

from workbench.cli import build_parser
from workbench.lab.commands import FIELD_TYPES, InvalidRequest, parse_request, registry_choices, whitelist

MODELS = ["tiny-relu", "tiny-moe", "smollm2-135m"]
CORPORA = ["pydocs", "pydocs:train", "pydocs:heldout"]
SPECS = whitelist(MODELS, CORPORA)
TEXT_SAMPLES = {  # a valid value of every text field, each also checked against the real parser
    "definition": "magnitude@0.05",
    "inputs": "heldout,random",
    "pattern": "2:4",
    "levels": "0.3,0.6",
    "labels": "domain,token_class",
    "mask_layers": "0,2",
    "hooks": "blocks.*.mlp.hook_post,blocks.0.hook_resid_pre",
    "layers": "1,3",
    "heads": "0,1",
}


def every_field(name: str) -> dict:
    """A valid value for every field of a command (true for flags, the first choice, the maximum...)."""
    values = {}
    for field in SPECS[name].fields:
        if field.type == "bool":
            values[field.name] = True
        elif field.type == "choice":
            values[field.name] = field.choices[-1]
        elif field.type in ("int", "float"):
            values[field.name] = field.max if field.type == "int" else (field.min + field.max) / 2
        else:
            values[field.name] = TEXT_SAMPLES[field.name]
    return values


def test_the_whitelist_has_the_run_making_commands():
    assert {
        "evaluate",
        "report",
        "sparsity",
        "essential",
        "experts",
        "moefy",
        "transcoder train",
        "capture",
    } == set(SPECS)
    for spec in SPECS.values():
        body = spec.to_json()
        assert body["name"] == spec.name and body["title"]
        for field in body["fields"]:
            assert field["type"] in FIELD_TYPES and field["help"] and "default" in field
            if field["type"] == "choice":
                assert field["choices"] and (field["default"] is None or field["default"] in field["choices"])
            if field["type"] in ("int", "float") and field["default"] is not None:
                assert field["min"] <= field["default"] <= field["max"]


def test_the_registry_choices_are_the_registered_models_and_corpora():
    models, corpora = registry_choices()
    assert {"tiny-relu", "tiny-moe", "smollm2-135m"} <= set(models)
    assert {"pydocs", "pydocs:train", "pydocs:heldout"} <= set(corpora)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_field_is_a_flag_of_the_real_command(name):
    spec = SPECS[name]
    argv = spec.arguments(every_field(name))
    assert argv[: len(spec.words)] == list(spec.words)
    args = build_parser().parse_args([*argv, "--out", "/tmp/run"])  # argparse exits on an unknown flag
    assert args.model == "smollm2-135m" and args.seed == 2**31 - 1
    for field in spec.fields:
        if field.type == "bool":
            assert getattr(args, field.name) is True, field.name


def test_argv_items_are_single_flag_values_or_validated_lists():
    spec = SPECS["capture"]
    argv = spec.arguments(
        {"model": "tiny-relu", "tokens": 512, "hooks": "a.*,b", "layers": "0,2", "attention": True}
    )
    assert argv == [
        "capture", "--model=tiny-relu", "--tokens=512", "--hooks=a.*", "--hooks=b", "--attention",
        "--layers", "0", "2",
    ]  # fmt: skip
    assert SPECS["transcoder train"].arguments({"skip": False, "lr": 1e-3}) == [
        "transcoder",
        "train",
        "--lr=0.001",
    ]
    assert SPECS["evaluate"].arguments({"model": None, "corpus": None}) == ["evaluate"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"command": "rm", "args": {}}, "unknown command"),
        ({"command": "inspect", "args": {}}, "unknown command"),
        ({"command": None}, "unknown command"),
        ({"args": {}}, "the body must be"),
        ({"command": "evaluate", "args": {}, "cwd": "/"}, "the body must be"),
        ("evaluate", "the body must be"),
        ({"command": "evaluate", "args": "--out /etc"}, "args must be a JSON object"),
        ({"command": "evaluate", "args": {"out": "/etc"}}, "has no field 'out'"),
        ({"command": "evaluate", "args": {"model": "tiny-relu --out=/etc"}}, "model must be one of"),
        ({"command": "evaluate", "args": {"corpus": "/etc/passwd"}}, "corpus must be one of"),
        ({"command": "evaluate", "args": {"tokens": 0}}, "between"),
        ({"command": "evaluate", "args": {"tokens": 10**12}}, "between"),
        ({"command": "evaluate", "args": {"tokens": 2.0}}, "an integer"),
        ({"command": "evaluate", "args": {"seed": False}}, "an integer"),
        ({"command": "essential", "args": {"tolerance": "0.1"}}, "a number"),
        ({"command": "essential", "args": {"tolerance": float("nan")}}, "a number"),
        ({"command": "essential", "args": {"tolerance": -1}}, "between"),
        ({"command": "essential", "args": {"pattern": "global; ls"}}, "not of the form"),
        ({"command": "essential", "args": {"levels": "-1"}}, "not of the form"),
        ({"command": "sparsity", "args": {"definition": "--out=/etc"}}, "not of the form"),
        ({"command": "sparsity", "args": {"inputs": "heldout,/etc"}}, "not of the form"),
        ({"command": "experts", "args": {"mask_layers": "1 --out /etc"}}, "not of the form"),
        ({"command": "experts", "args": {"baseline": 1}}, "true or false"),
        ({"command": "capture", "args": {"hooks": "a|b"}}, "not of the form"),
        ({"command": "capture", "args": {"hooks": "x" * 300}}, "at most"),
        ({"command": "capture", "args": {"model": "tiny-relu"}}, "needs at least one of"),
        ({"command": "moefy", "args": {"experts": None}}, "experts is required"),
    ],
)
def test_requests_outside_the_whitelist_are_refused(body, words):
    with pytest.raises(InvalidRequest, match=words.replace("(", r"\(")):
        parse_request(body, SPECS)


def test_a_good_request_gives_its_spec_and_argv():
    spec, argv = parse_request(
        {"command": "transcoder train", "args": {"model": "tiny-relu", "width": 64}}, SPECS
    )
    assert spec.label == "transcoder-train"
    assert argv == ["transcoder", "train", "--model=tiny-relu", "--width=64"]
    spec, argv = parse_request({"command": "evaluate"}, SPECS)  # args may be left out
    assert argv == ["evaluate"]
