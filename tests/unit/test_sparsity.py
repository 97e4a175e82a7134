"""Oracle tests for activation sparsity: densities against direct counts from hand-registered hooks."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from workbench.corpus import load_corpus, make_windows
from workbench.errors import WorkbenchError
from workbench.models import load_model
from workbench.neurons import neuron_hooks, output_weights
from workbench.probes.capture import ActivationProbe, MemorySink, capture
from workbench.sparsity.definitions import Definition
from workbench.sparsity.density import measure
from workbench.sparsity.thresholds import cett_ratio


def _windows(handle, n=4, context=16):
    return make_windows(load_corpus()[:4], handle.tokenizer, context, handle.separator_token_id).select(
        n * context
    )


def _hand_hooked(folder, tokens, module_of):
    """Outputs of one HF module per layer, from a plain forward with hooks registered by hand."""
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    layers = hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers
    seen, handles = {}, []
    for i, layer in enumerate(layers):
        handles.append(
            module_of(layer).register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, out))
        )
    with torch.no_grad():
        hf(tokens)
    for h in handles:
        h.remove()
    return seen


def test_exact_zero_equals_a_direct_count(checkpoints):
    handle = load_model(str(checkpoints["gpt2"]), progress=False)
    windows = _windows(handle)
    reducer = measure(handle, windows, Definition.parse("exact_zero"), None, batch_size=3, progress=False)
    acts = _hand_hooked(checkpoints["gpt2"], windows.tokens, lambda layer: layer.mlp.act)
    for j, row in enumerate(reducer.layer_stats()):
        per_token = (acts[j] != 0).double().mean(-1).flatten()
        assert row["density_mean"] == pytest.approx(per_token.mean().item(), abs=1e-9)
        assert row["density_median"] == pytest.approx(
            per_token.sort().values[(len(per_token) - 1) // 2].item()
        )
        fires = (acts[j] != 0).reshape(-1, acts[j].shape[-1]).sum(0)
        assert row["dead_neurons"] == int((fires == 0).sum())
        assert torch.equal(reducer.firing[j], fires)


def test_positive_on_a_gated_mlp_is_the_gate_sign(checkpoints):
    handle = load_model(str(checkpoints["llama"]), progress=False)
    windows = _windows(handle)
    reducer = measure(handle, windows, Definition.parse("positive"), None, progress=False)
    gates = _hand_hooked(checkpoints["llama"], windows.tokens, lambda layer: layer.mlp.gate_proj)
    for j, row in enumerate(reducer.layer_stats()):
        assert row["density_mean"] == pytest.approx((gates[j] > 0).double().mean().item(), abs=1e-12)


def test_topk_density_is_k_over_d_mlp(checkpoints):
    handle = load_model(str(checkpoints["llama"]), progress=False)
    reducer = measure(handle, _windows(handle), Definition.parse("topk@5"), None, progress=False)
    for row in reducer.layer_stats():
        assert row["density_mean"] == pytest.approx(5 / handle.facts.d_mlp)


@pytest.mark.parametrize("r", [0.05, 0.3])
def test_cett_threshold_meets_its_definition(checkpoints, r):
    handle = load_model(str(checkpoints["llama"]), progress=False)
    calibration = _windows(handle, n=6)
    reducer = measure(handle, _windows(handle), Definition.parse(f"cett@{r}"), calibration, progress=False)
    hooks = neuron_hooks(handle)
    sink = capture(
        handle, calibration, [ActivationProbe([h.post for h in hooks])], MemorySink(), progress=False
    )
    for h in hooks:
        a, w = sink.values[h.post].float(), output_weights(handle, h.layer).float()
        eps = reducer.thresholds[h.layer]
        assert cett_ratio(a, w, eps) <= r  # the defining inequality holds on the calibration tokens
        assert cett_ratio(a, w, eps * 1.01 + 1e-9) > r  # and ε is (to 1 %) the largest that keeps it


def test_magnitude_threshold_is_the_calibration_quantile(checkpoints):
    handle = load_model(str(checkpoints["gpt2"]), progress=False)
    calibration = _windows(handle, n=6)
    reducer = measure(handle, calibration, Definition.parse("magnitude@0.8"), calibration, progress=False)
    for row in reducer.layer_stats():  # measured on the calibration tokens themselves: 20 % are above t
        assert row["density_mean"] == pytest.approx(0.2, abs=0.01)


def test_bad_definitions_and_moe_are_refused(checkpoints):
    with pytest.raises(WorkbenchError, match="Unknown sparsity definition 'magnitude'"):
        Definition.parse("magnitude")
    with pytest.raises(WorkbenchError, match="mixture-of-experts model"):
        neuron_hooks(load_model(str(checkpoints["mixtral"]), progress=False))
