"""The committed demo models meet their cards' promises, re-measured here on a held-out sample."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from workbench.corpus import windows_for
from workbench.demo.model_card import expert_load, init_handle, mlp_exact_zero_density, ngram_baselines
from workbench.evaluate import evaluate
from workbench.models import load_model
from workbench.paths import demo_model_dir

SAMPLE_TOKENS = 16384


def test_weights_fit_in_30_mb():
    sizes = [(demo_model_dir(n) / "model.safetensors").stat().st_size for n in ("tiny-relu", "tiny-moe")]
    assert sum(sizes) <= 30_000_000


@pytest.fixture(scope="module", params=["tiny-relu", "tiny-moe"])
def measured(request):
    handle = load_model(request.param, progress=False)
    windows = windows_for(handle, n_tokens=SAMPLE_TOKENS, seed=0)
    card = json.loads((demo_model_dir(request.param) / "card.json").read_text())
    return handle, windows, evaluate(handle, windows, progress=False), card


def test_really_learned_beats_the_add_one_bigram_by_0_3_nats(measured):
    handle, windows, result, card = measured
    assert ngram_baselines(windows, handle.facts.d_vocab)["bigram_add_one"] - result.loss >= 0.3
    assert card["margin_below_bigram"] >= 0.3 and card["heldout_loss"] == pytest.approx(result.loss, abs=0.15)


def test_tiny_relu_is_lazy(measured):
    handle, windows, _, card = measured
    if handle.facts.moe:
        pytest.skip("the lazy-neuron promise is tiny-relu's")
    trained = mlp_exact_zero_density(handle, windows)
    config = json.loads((demo_model_dir("tiny-relu") / "train_config.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        initial = mlp_exact_zero_density(init_handle("tiny-relu", config, Path(tmp)), windows)
    mean, mean_init = sum(trained) / len(trained), sum(initial) / len(initial)
    assert mean <= 0.25 and mean <= 0.5 * mean_init
    assert card["mlp_density"]["mean"] == pytest.approx(mean, abs=0.03)


def test_tiny_moe_card_records_load_balance(measured):
    handle, windows, _, card = measured
    if not handle.facts.moe:
        pytest.skip("expert load is tiny-moe's")
    load = expert_load(handle, windows)
    for layer, f in enumerate(load):
        assert sum(f) == pytest.approx(handle.facts.experts_per_token)  # each token picks k experts
        assert card["expert_load"]["layers"][layer]["load"] == pytest.approx(f, abs=0.05)
