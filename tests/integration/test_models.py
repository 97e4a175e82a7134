"""Each model source loads: registry names, local folders, and the hub (faked at the network boundary)."""

from __future__ import annotations

import shutil

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.models import MODELS, load_model
from workbench.models import sources as sources_module

FACT_KEYS = (
    "architecture",
    "n_layers",
    "d_model",
    "d_mlp",
    "n_heads",
    "n_kv_heads",
    "d_vocab",
    "n_ctx",
    "act_fn",
    "gated_mlp",
    "moe",
    "n_experts",
    "experts_per_token",
)


@pytest.mark.parametrize(
    "kind, act, gated, moe",
    [("gpt2", "relu", False, False), ("llama", "silu", True, False), ("mixtral", "silu", True, True)],
)
def test_local_folder_loads_with_transformerlens_hooks(checkpoints, kind, act, gated, moe):
    handle = load_model(str(checkpoints[kind]), device="cpu", progress=False)
    f = handle.facts
    assert (f.n_layers, f.d_model, f.act_fn, f.gated_mlp, f.moe) == (2, 32, act, gated, moe)
    assert f.weights_processed is False and f.source.startswith("local folder")
    if moe:
        assert (f.n_experts, f.experts_per_token) == (4, 2)
    tokens = torch.randint(0, 4096, (2, 10))
    _, cache = handle.model.run_with_cache(
        tokens, names_filter=lambda n: n.endswith(("hook_post", "hook_pattern"))
    )
    assert cache["blocks.1.attn.hook_pattern"].shape == (2, 4, 10, 10)
    if not moe:
        assert cache["blocks.0.mlp.hook_post"].shape[-1] == f.d_mlp
    reference = handle.model.original_model(tokens).logits
    assert torch.allclose(handle.logits(tokens), reference, atol=1e-4)


def test_weights_stay_as_released_unless_processing_is_asked_for(checkpoints):
    from safetensors.torch import load_file

    raw = load_model(str(checkpoints["gpt2"]), progress=False)
    processed = load_model(str(checkpoints["gpt2"]), process_weights=True, progress=False)
    assert raw.facts.weights_processed is False and processed.facts.weights_processed is True
    on_disk = load_file(checkpoints["gpt2"] / "model.safetensors")["transformer.h.0.mlp.c_fc.weight"]
    assert torch.equal(raw.model.original_model.transformer.h[0].mlp.c_fc.weight, on_disk)
    tokens = torch.randint(0, 4096, (1, 12))  # processing keeps the outputs (up to a constant per position)
    assert torch.allclose(
        raw.logits(tokens).log_softmax(-1), processed.logits(tokens).log_softmax(-1), atol=1e-4
    )


def test_hub_id_is_fetched_through_snapshot_download(checkpoints, tmp_path, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None):  # the network boundary, nothing else faked
        calls.append((repo_id, allow_patterns))
        dest = tmp_path / "hub" / repo_id.replace("/", "--")
        shutil.copytree(checkpoints["llama"], dest, dirs_exist_ok=True)
        return str(dest)

    monkeypatch.setattr(sources_module, "snapshot_download", fake_snapshot_download)
    handle = load_model("someorg/tiny-llama", progress=False)
    assert calls[0][0] == "someorg/tiny-llama" and "*.safetensors" in calls[0][1]
    assert handle.facts.source == "Hugging Face hub someorg/tiny-llama" and handle.facts.n_kv_heads == 2
    load_model("gpt2-small", progress=False)  # a TransformerLens name maps to its hub id
    assert calls[-1][0] == "gpt2"


def test_hub_failure_is_a_clear_error(monkeypatch):
    def offline(repo_id, allow_patterns=None):
        raise OSError("network unreachable")

    monkeypatch.setattr(sources_module, "snapshot_download", offline)
    with pytest.raises(WorkbenchError, match=r"Could not fetch 'org/model'.*pass its local folder"):
        load_model("org/model", progress=False)


def test_unknown_name_lists_known_models_and_how_to_add_a_folder():
    with pytest.raises(WorkbenchError) as err:
        load_model("tiny-rleu", progress=False)
    message = str(err.value)
    assert "Did you mean 'tiny-relu'" in message
    assert all(name in message for name in ("tiny-relu", "tiny-moe", "smollm2-135m"))
    assert "local Hugging Face checkpoint folder" in message


@pytest.mark.parametrize("name", ["tiny-relu", "tiny-moe"])
def test_demo_models_load_with_their_declared_facts(name):
    handle = load_model(name, progress=False)
    loaded = handle.facts.to_dict()
    assert {k: loaded[k] for k in FACT_KEYS} == MODELS.get(name).facts
    assert MODELS.get(name).available()
