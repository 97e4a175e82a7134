"""One way to attach hooks, one home for the bridge's internals, one class or table per concept."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench.models import ModelFacts, load_model
from workbench.models.hooks import hooks_attached

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("workbench", "probes", "kernels", "data")  # probes/kernels/data are linked into workbench/
HOOK_CALLS = {
    "register_forward_hook",
    "register_forward_pre_hook",
    "register_full_backward_hook",
    "add_hook",
    "add_perma_hook",
    "remove_hooks",
    "reset_hooks",
    "remove_all_hook_fns",
}
# kernels/gpu_check.py times capture strategies (forward pre-hooks) on a plain Hugging Face model, as a
# standalone script for the GPU machine.
HOOK_EXEMPT = {"workbench/models/hooks.py", "kernels/gpu_check.py"}
BRIDGE_PRIVATE = {"original_model", "original_component", "_original_component"}


def sources() -> dict[str, ast.Module]:
    """Every Python module of the package, once, by its real path relative to the repository."""
    out = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.resolve().relative_to(ROOT.resolve()).as_posix()
            if rel not in out:
                out[rel] = ast.parse(path.read_text(encoding="utf-8"), rel)
    return out


class Boom(Exception):
    pass


def test_hooks_are_removed_when_the_block_raises():
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    calls = []
    hooks = [(first, lambda m, i, o: calls.append("first")), (second, lambda m, i, o: calls.append("second"))]
    with pytest.raises(Boom), hooks_attached(hooks):
        first(torch.zeros(1, 3))
        second(torch.zeros(1, 3))
        assert first._forward_hooks and second._forward_hooks
        raise Boom
    assert calls == ["first", "second"]
    assert not first._forward_hooks and not second._forward_hooks
    first(torch.zeros(1, 3))
    assert calls == ["first", "second"]


def test_hooks_registered_before_a_failing_registration_are_removed():
    module = nn.Linear(3, 3)

    def pairs():
        yield module, lambda m, i, o: None
        raise Boom

    with pytest.raises(Boom), hooks_attached(pairs()):
        pass
    assert not module._forward_hooks


def test_hook_output_replacement_and_removal_on_exit():
    module = nn.Linear(3, 3)
    x = torch.ones(1, 3)
    with hooks_attached([(module, lambda m, i, o: torch.zeros_like(o))]):
        assert torch.equal(module(x), torch.zeros(1, 3))
    assert torch.equal(module(x), nn.functional.linear(x, module.weight, module.bias))


def test_analyses_remove_their_hooks_when_the_body_raises(checkpoints):
    """Expert masks, transcoder-free splices and hook-based edits on the bridge leave no hook behind."""
    from workbench.experts.masking import ExpertMask, experts_masked
    from workbench.replay.edits import NeuronMask
    from workbench.replay.hooked import edits_applied
    from workbench.transcoders.splice import mlp_replaced, zero_replacement

    handle = load_model(str(checkpoints["mixtral"]), progress=False)
    modules = list(handle.model.modules())

    def hooked() -> int:
        return sum(len(m._forward_hooks) for m in modules)

    tokens = torch.tensor([[1, 2, 3]])
    handle.logits(tokens)  # the bridge may attach hooks of its own on a first forward
    before = hooked()
    for block in [
        lambda: experts_masked(handle, [ExpertMask(0, (1,))]),
        lambda: mlp_replaced(handle, 1, zero_replacement),
        lambda: edits_applied(handle, [NeuronMask(0, (1, 2)), ExpertMask(1, (0,), "drop")]),
    ]:
        with pytest.raises(Boom), block():
            assert hooked() > before
            handle.logits(tokens)
            raise Boom
        assert hooked() == before


def _calls_and_names(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            yield node.lineno, node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_only_the_hooks_module_attaches_hooks_by_hand():
    offenders = [
        f"{path}:{line} .{name}"
        for path, tree in sources().items()
        if path not in HOOK_EXEMPT
        for line, name in _calls_and_names(tree)
        if name in HOOK_CALLS
    ]
    assert not offenders, f"attach hooks with workbench.models.hooks.hooks_attached: {offenders}"


def test_only_models_reads_the_bridges_internals():
    offenders = [
        f"{path}:{line} {name}"
        for path, tree in sources().items()
        if not path.startswith("workbench/models/")
        for line, name in _calls_and_names(tree)
        if name in BRIDGE_PRIVATE
    ]
    assert not offenders, f"use ModelHandle.hf_model / hf_parameters() or models.bridge.unwrap: {offenders}"


def test_one_dtype_table():
    tables = [
        f"{path}:{node.lineno}"
        for path, tree in sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name) and target.id == "DTYPES"
    ]
    assert len(tables) == 1 and tables[0].startswith("workbench/store/format.py:"), tables


def test_expert_mask_is_one_class_with_the_edit_json_form():
    from workbench.experts.masking import ExpertMask
    from workbench.replay.edits import EDIT_KINDS, edit_from_dict

    assert EDIT_KINDS.get("expert_mask") is ExpertMask
    mask = ExpertMask(layer=1, experts=(3, 2), mode="drop")
    assert mask.to_dict() == {"kind": "expert_mask", "layer": 1, "experts": [2, 3], "mode": "drop"}
    assert edit_from_dict(mask.to_dict()) == mask
    assert ExpertMask.from_dict({"layer": 1, "experts": [2, 3], "mode": "drop"}) == mask


def test_declared_facts_are_model_facts_fields_given_by_keyword():
    names = [f.name for f in dataclasses.fields(ModelFacts)]
    facts = ModelFacts.declared(
        architecture="X",
        n_layers=1,
        d_model=2,
        d_mlp=3,
        n_heads=1,
        n_kv_heads=1,
        d_vocab=5,
        n_ctx=6,
        act_fn="relu",
        gated_mlp=False,
    )
    assert list(facts) == [n for n in names if n in facts]
    assert facts["moe"] is False and facts["n_experts"] is None
    with pytest.raises(TypeError):
        ModelFacts.declared("X", 1, 2, 3, 1, 1, 5, 6, "relu", False)  # type: ignore[misc]
