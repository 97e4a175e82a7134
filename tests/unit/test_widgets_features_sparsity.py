"""The feature and sparsity explorers, driven from Python: a feature ablation equals `ReplaySession.apply`
of the same edit, a scaled feature equals a hooked forward computed by hand, the sparsity explorer's
densities equal the sparsity runner's and a brute-force count, and errors show in the widgets."""

from __future__ import annotations

import html
import json
import math

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.replay import ReplaySession, edits_applied
from workbench.replay.edits import TranscoderSplice, dump_edits, parse_edits
from workbench.transcoders.files import save_transcoder
from workbench.transcoders.model import Transcoder, TranscoderConfig

TEXT = "def add(a, b):\n    return a + b\n\n# the sum of two numbers, printed\nprint(add(2, 3))"
FIELDS = ("ce_base", "ce_edited", "ce_delta", "kl", "top1_agreement", "resid_deviation", "first_layer")
LAYER = 2


@pytest.fixture(scope="module")
def handle():
    from workbench.models import load_model

    return load_model("tiny-relu", device="cpu", progress=False)


def random_transcoder(handle, arch: str = "topk", layer: int = LAYER, width: int = 96) -> Transcoder:
    d = handle.facts.d_model
    cfg = TranscoderConfig(d_in=d, d_out=d, width=width, arch=arch, k=8, layer=layer)
    tc = Transcoder(cfg, seed=3)
    with torch.no_grad():
        tc.W_enc.mul_(20.0)  # features that fire on real residuals (the initialisation is tiny)
        tc.b_enc.add_(-0.2 if arch == "relu" else 0.0)
        tc.b_dec.add_(0.05 * torch.randn(d, generator=torch.Generator().manual_seed(1)))
    return tc


@pytest.fixture(scope="module")
def folders(handle, tmp_path_factory):
    """Transcoder folders: topk and relu at LAYER."""
    out = {}
    for arch in ("topk", "relu"):
        folder = tmp_path_factory.mktemp(f"tc-{arch}")
        save_transcoder(random_transcoder(handle, arch), folder / "transcoder")
        out[arch] = str(folder)
    return out


@pytest.fixture(scope="module")
def windows(handle):
    from workbench.corpus import windows_for

    return windows_for(handle, context=32, n_tokens=1024)


@pytest.fixture()
def explorer(handle, folders, windows):
    from workbench.widgets import FeatureExplorer

    widget = FeatureExplorer(handle, TEXT, transcoder=folders["topk"], contexts=windows)
    widget.wait()
    assert widget.error is None, widget.error
    yield widget
    widget.close()


def same_as_apply(widget, handle) -> None:
    """The widget's result equals a fresh session's apply of the widget's edits."""
    result = widget.wait()
    assert widget.error is None, widget.error
    expected = ReplaySession.from_text(handle, TEXT).apply(widget.edits)
    assert result.edits == expected.edits
    for name in FIELDS:
        assert getattr(result, name) == pytest.approx(getattr(expected, name), abs=1e-6), name
    assert [t["ce_delta"] for t in result.per_token[:-1]] == pytest.approx(
        [t["ce_delta"] for t in expected.per_token[:-1]], abs=1e-6
    )


def text_ids(handle) -> torch.Tensor:
    return torch.tensor([handle.tokenizer(TEXT, add_special_tokens=False)["input_ids"]])


def next_token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[T-1] next-token losses of the first sequence."""
    logprobs = torch.log_softmax(logits.float(), -1)[0, :-1]
    return -logprobs.gather(-1, ids[0, 1:, None]).squeeze(-1)


def brute_force_ce(handle, tc: Transcoder, ids, scales: dict[int, float] | None) -> torch.Tensor:
    """Per-token CE with layer LAYER's MLP output replaced by the transcoder's reconstruction computed by
    hand (dense codes; for topk the k largest pre-activations, then ReLU), each feature in `scales`
    multiplied by its scale before decoding; hooks attached directly to the model."""
    from workbench.models.hooks import hooks_attached

    points = handle.hook_points
    seen = {}

    def keep(module, inputs, x):
        seen["x"] = x

    def replace(module, inputs, y):
        x = seen.pop("x").float()
        pre = x @ tc.W_enc + tc.b_enc
        if tc.cfg.arch == "topk":
            idx = pre.topk(tc.cfg.k, dim=-1).indices
            z = torch.zeros_like(pre).scatter_(-1, idx, torch.relu(pre.gather(-1, idx)))
        else:
            z = torch.relu(pre)
        for feature, scale in (scales or {}).items():
            z[..., feature] = z[..., feature] * scale
        return (z @ tc.W_dec + tc.b_dec).to(y.dtype)

    hooks = [(points[f"blocks.{LAYER}.mlp.hook_in"], keep), (points[f"blocks.{LAYER}.mlp.hook_out"], replace)]
    with torch.inference_mode(), hooks_attached(hooks):
        return next_token_ce(handle.logits(ids), ids)


# --- the splice's features field -----------------------------------------------------------------


def test_splice_json_is_unchanged_without_features_and_round_trips_with_them():
    plain = TranscoderSplice(2, "runs/tc")
    assert plain.to_dict() == {"kind": "transcoder", "layer": 2, "path": "runs/tc"}
    assert json.dumps(dump_edits([plain])) == '[{"kind": "transcoder", "layer": 2, "path": "runs/tc"}]'
    edited = TranscoderSplice(2, "runs/tc", features=((7, 2.5), (3, 0)))
    assert edited.features == ((3, 0.0), (7, 2.5))  # sorted by feature
    assert edited.to_dict()["features"] == [[3, 0.0], [7, 2.5]]
    assert parse_edits(json.loads(json.dumps(dump_edits([edited])))) == [edited]
    assert TranscoderSplice(2, "runs/tc", features=()) == plain  # no feature: the plain splice
    for bad, what in [
        ([[1, 0.0], [1, 2.0]], "given twice"),
        ([[-1, 0.0]], ">= 0"),
        ([[1, math.nan]], "finite"),
        ([[1]], "pairs"),
        ("1,0", "pairs"),
    ]:
        with pytest.raises(WorkbenchError, match=what):
            parse_edits({"kind": "transcoder", "layer": 0, "path": "x", "features": bad})


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_scaled_feature_equals_a_hooked_forward_by_hand(handle, folders, arch):
    tc = random_transcoder(handle, arch)
    ids = text_ids(handle)
    with torch.inference_mode():
        from workbench.transcoders.data import mlp_pairs_of

        z = tc.features(mlp_pairs_of(handle, LAYER, ids)[0])
    feature = int(z.sum(0).argmax())  # the feature most active on the text
    scales = {feature: 2.5, int(z.sum(0).argsort()[-2]): 0.0}
    edit = TranscoderSplice(LAYER, folders[arch], features=tuple(scales.items()))
    result = ReplaySession.from_text(handle, TEXT).apply([edit])
    expected = brute_force_ce(handle, tc, ids, scales)
    got = torch.tensor([t["ce_delta"] for t in result.per_token[:-1]], dtype=torch.float64)
    with torch.inference_mode():
        base_ce = next_token_ce(handle.logits(ids), ids).double()
    torch.testing.assert_close(got + base_ce, expected.double(), atol=2e-4, rtol=1e-4)
    assert result.ce_edited == pytest.approx(float(expected.double().mean()), abs=2e-4)
    # the hooked reference applies the same field; and the edit did change the splice
    with torch.inference_mode(), edits_applied(handle, [edit]):
        hooked = next_token_ce(handle.logits(ids), ids)
    torch.testing.assert_close(hooked, expected, atol=2e-4, rtol=1e-4)
    plain = brute_force_ce(handle, tc, ids, None)
    assert (plain - expected).abs().max() > 1e-3


def test_feature_out_of_range_is_refused_by_replay(handle, folders):
    session = ReplaySession.from_text(handle, TEXT)
    with pytest.raises(WorkbenchError, match="has features 0..95"):
        session.apply([TranscoderSplice(LAYER, folders["topk"], features=((96, 0.0),))])


# --- the feature explorer -------------------------------------------------------------------------


def test_feature_ablation_equals_apply(explorer, handle, folders):
    plain = explorer.result
    assert explorer.edits == [TranscoderSplice(LAYER, folders["topk"])]
    same_as_apply(explorer, handle)
    assert explorer.versus_splice["kl"] == 0.0 and explorer.versus_splice["ce_delta"] == 0.0
    feature = int(explorer._text_z.sum(0).argmax())
    explorer.feature.value = feature
    explorer.action.value = "ablate"
    result = explorer.wait()
    assert explorer.edits == [TranscoderSplice(LAYER, folders["topk"], features=((feature, 0.0),))]
    same_as_apply(explorer, handle)
    assert explorer.splice_result.ce_edited == pytest.approx(plain.ce_edited, abs=1e-9)
    versus = explorer.versus_splice  # against the plain splice: the differences of the two results
    assert versus["ce_reference"] == pytest.approx(plain.ce_edited, abs=1e-9)
    assert versus["ce_edited"] == pytest.approx(result.ce_edited, abs=1e-9)
    assert versus["ce_delta"] == pytest.approx(result.ce_delta - plain.ce_delta, abs=1e-6)
    pairs = zip(result.per_token[:-1], plain.per_token[:-1], strict=True)
    per_token = [a["ce_delta"] - b["ce_delta"] for a, b in pairs]
    assert versus["per_token_ce_delta"][:-1] == pytest.approx(per_token, abs=1e-6)
    assert versus["kl"] > 0
    assert "vs plain splice" in explorer.metrics.value and "vs unedited model" in explorer.metrics.value
    assert "plain splice" in explorer.effect_view.caption
    assert list(explorer.effect_view.decoded_values()[:-1]) == pytest.approx(per_token, abs=1e-5)
    explorer.reference.value = "base"
    assert "unedited model" in explorer.effect_view.caption
    explorer.action.value = "scale"
    explorer.scale.value = 3.0
    same_as_apply(explorer, handle)
    assert explorer.edits[0].features == ((feature, 3.0),)


def test_sorting_by_density_and_by_effect(explorer, handle):
    density = explorer.table.density
    order = explorer.order
    assert sorted(order) == list(range(96))
    assert all(density[a] >= density[b] for a, b in zip(order[:-1], order[1:], strict=True))
    explorer.sort.value = "effect"
    explorer.wait()
    effects = explorer.effects
    active = int((explorer._text_z.sum(0) > 0).sum())
    assert len(effects) == active and "effect measured for" in explorer.status.value
    top = explorer.order[0]
    assert effects[top] == max(effects.values())
    explorer.rank.value = 0  # the slider walks the sorted list
    assert explorer.feature.value == top
    explorer.action.value = "ablate"
    explorer.wait()
    assert explorer.versus_splice["kl"] == pytest.approx(effects[top], rel=1e-5, abs=1e-9)
    silent = next(f for f in range(96) if f not in effects)  # never fires on the text: no effect
    explorer.feature.value = silent
    explorer.wait()
    assert explorer.versus_splice["kl"] == pytest.approx(0.0, abs=1e-9)
    assert explorer.rank.value == explorer.order.index(silent)


def test_feature_view_shows_contexts_text_and_histogram(explorer, handle, windows):
    from workbench.transcoders.features import contexts

    feature = explorer.order[0]  # the densest
    explorer.feature.value = feature
    explorer.wait()
    tc, table = explorer.transcoder, explorer.table
    expected = contexts(handle, tc, windows, table, feature, n=5, before=12, after=3)
    view = explorer.contexts_view
    assert len(view.lines) == len(expected) > 0 and view.diverging is False
    assert view.lines[0][1:] == [t["text"] for t in expected[0]["tokens"]]
    values = view.decoded_values()
    shown = [v for v in values if not math.isnan(v)]
    assert shown == pytest.approx([t["activation"] for c in expected for t in c["tokens"]], abs=1e-5)
    assert max(shown) == pytest.approx(explorer.table.max_activation[feature], rel=1e-5)
    assert explorer.histogram.value.startswith("<svg")
    assert list(explorer.text_view.decoded_values()) == pytest.approx(
        explorer._text_z[:, feature].tolist(), abs=1e-6
    )
    assert f"feature {feature}" in explorer.info.value


def test_edits_and_result_set_from_code(explorer, handle, folders):
    path = folders["topk"]
    explorer.edits = [{"kind": "transcoder", "layer": LAYER, "path": path, "features": [[5, 0], [9, 1.5]]}]
    assert (explorer.feature.value, explorer.action.value) == (5, "ablate")
    assert explorer.edits == [TranscoderSplice(LAYER, path, features=((5, 0.0), (9, 1.5)))]
    same_as_apply(explorer, handle)
    other = ReplaySession.from_text(handle, TEXT).apply([TranscoderSplice(LAYER, path, features=((7, 4.5),))])
    explorer.result = other
    assert explorer.result is other
    assert (explorer.feature.value, explorer.action.value, explorer.scale.value) == (7, "scale", 4.5)
    assert f"{other.ce_delta:+.4f}" in explorer.metrics.value


def test_an_in_memory_transcoder(handle, windows):
    from workbench.widgets import FeatureExplorer

    widget = FeatureExplorer(handle, TEXT, transcoder=random_transcoder(handle), contexts=windows)
    widget.action.value = "ablate"
    same_as_apply(widget, handle)  # the edit names a folder the transcoder was written to
    widget.close()


def test_feature_explorer_errors_show_in_the_widget(explorer, handle, folders, windows):
    from workbench.widgets import FeatureExplorer

    wrong = FeatureExplorer(handle, TEXT, transcoder=folders["topk"], contexts=windows, layer=1)
    assert "trained on layer 2's MLP, not layer 1's" in html.unescape(wrong.error)
    assert wrong.edits == [] and wrong.wait() is None
    missing = FeatureExplorer(handle, TEXT, transcoder="/nonexistent/tc", contexts=windows)
    assert missing.error is not None and "No transcoder" in missing.error and "Traceback" not in missing.error
    explorer.feature.value = 96
    assert "feature 96 does not exist" in explorer.error and explorer.result is None
    explorer.feature.value = 3
    explorer.wait()
    assert explorer.error is None and explorer.result is not None
    explorer.edits = [TranscoderSplice(LAYER, folders["topk"], features=((500, 0.0),))]
    assert "feature 500 does not exist" in explorer.error
    explorer.edits = [TranscoderSplice(1, folders["topk"])]
    assert "not layer 1" in explorer.error
    explorer.edits = [TranscoderSplice(LAYER, folders["relu"])]
    assert "another transcoder" in explorer.error


# --- the sparsity explorer ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sparse_windows(handle):
    from workbench.corpus import windows_for

    windows = windows_for(handle, context=32, n_tokens=256)
    assert len(windows.domains) > 1  # code and prose: densities by domain
    return windows


@pytest.fixture(scope="module")
def sparsity(handle, sparse_windows):
    from workbench.widgets import SparsityExplorer

    widget = SparsityExplorer(handle, sparse_windows)
    widget.wait()
    assert widget.error is None, widget.error
    yield widget
    widget.close()


def same_result(got, expected) -> None:
    """Every figure and the recorded definition and settings of two SparsityResults agree."""
    for name in ("model", "definition", "tokens", "by_domain", "density_histograms", "firing_histograms"):
        assert getattr(got, name) == getattr(expected, name), name
    assert got.density_mean == pytest.approx(expected.density_mean, abs=1e-12)
    assert got.layers == expected.layers and got.by_input == expected.by_input
    assert got.thresholds == pytest.approx(expected.thresholds, rel=1e-12)
    for name in ("definition", "settings", "data", "seed"):
        assert getattr(got.provenance, name) == getattr(expected.provenance, name), name


def hooked_activations(handle, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each layer's neuron activations a [tokens, d_mlp] from a forward with hooks attached by hand."""
    from workbench.models.hooks import hooks_attached

    seen = {}
    points = handle.hook_points

    def keep(layer):
        return lambda module, inputs, a: seen.__setitem__(layer, a.detach().reshape(-1, a.shape[-1]).float())

    hooks = [(points[f"blocks.{i}.mlp.hook_post"], keep(i)) for i in range(handle.facts.n_layers)]
    with torch.inference_mode(), hooks_attached(hooks):
        handle.logits(tokens)
    return seen


@pytest.mark.parametrize("definition", ["exact_zero", "positive", "topk@40", "magnitude@0.7", "cett@0.3"])
def test_sparsity_explorer_equals_run_sparsity(sparsity, handle, sparse_windows, definition):
    from workbench.sparsity import SparsitySettings, run_sparsity

    sparsity.definition = definition
    got = sparsity.wait()
    assert sparsity.error is None, sparsity.error
    expected = run_sparsity(handle, sparse_windows, SparsitySettings(definition=definition), progress=False)
    same_result(got, expected)
    assert got.definition == definition and got.provenance.definition.startswith(definition)
    assert definition in sparsity.summary.value and sparsity.by_layer_chart.value.startswith("<svg")
    assert sparsity.firing_chart.value.startswith("<svg")


def test_sparsity_explorer_equals_a_brute_force_count(sparsity, handle, sparse_windows):
    acts = hooked_activations(handle, sparse_windows.tokens)
    d_mlp = handle.facts.d_mlp
    domain = sparse_windows.domain.flatten().long()
    for definition, active in [
        ("exact_zero", lambda a, layer: a != 0),
        ("topk@40", lambda a, layer: torch.zeros_like(a, dtype=torch.bool).scatter_(
            -1, a.abs().topk(40, -1).indices, True)),
        ("magnitude@0.7", lambda a, layer: a.abs() > sparsity.thresholds("magnitude@0.7")[layer]),
    ]:  # fmt: skip
        sparsity.definition = definition
        result = sparsity.wait()
        for layer, a in acts.items():
            density = active(a, layer).double().sum(-1) / d_mlp
            assert result.layers[layer]["density_mean"] == pytest.approx(float(density.mean()), abs=1e-12)
            for i, name in enumerate(sparse_windows.domains):
                by_hand = float(density[domain == i].mean())
                assert result.by_domain[name][layer] == pytest.approx(by_hand, abs=1e-12)
    assert result.layers[0]["density_mean"] < 0.75  # the threshold left out some neurons


def test_thresholds_equal_calibrate(sparsity, handle):
    from workbench.neurons import neuron_hooks
    from workbench.sparsity import Definition, calibrate

    sparsity.definition = "magnitude@0.5"
    sparsity.wait()
    windows = sparsity._calibration
    for definition in ("magnitude@0.25", "magnitude@0.93", "cett@0.1"):
        expected = calibrate(Definition.parse(definition), handle, neuron_hooks(handle), windows, 8)
        assert sparsity.thresholds(definition) == expected


def test_parameter_moves_reuse_the_captured_activations(sparsity, handle, monkeypatch):
    sparsity.definition = "magnitude@0.8"
    sparsity.wait()  # calibrated: calibration activations captured once

    def no_forward(*args, **kwargs):
        raise AssertionError("a control move ran the model")

    monkeypatch.setattr(handle, "logits", no_forward)
    sparsity.kind.value = "topk"
    for k in (8, 64, 200):
        sparsity.k.value = k
        result = sparsity.wait()
        assert sparsity.error is None and sparsity.definition == f"topk@{k}"
        assert result.density_mean == pytest.approx(k / handle.facts.d_mlp)
    sparsity.kind.value = "magnitude"
    previous = None
    for p in (0.5, 0.9, 0.95, 0.98):  # below about 0.85 the ReLU zeros make every threshold 0
        sparsity.p.value = p
        result = sparsity.wait()
        assert sparsity.error is None and result.definition == f"magnitude@{p}"
        assert previous is None or result.density_mean < previous or p == 0.9
        previous = result.density_mean
    sparsity.layer.value = 1
    values = sparsity.tokens.decoded_values()
    assert len(values) == len(sparsity.tokens.lines[0]) == 32  # the first window's tokens
    assert "layer 1" in sparsity.tokens.caption


def test_sparsity_edits_and_result_set_from_code(sparsity, handle, sparse_windows):
    from workbench.replay.edits import Threshold, TopK
    from workbench.sparsity import SparsitySettings, run_sparsity

    n = handle.facts.n_layers
    sparsity.definition = "topk@16"
    sparsity.wait()
    assert sparsity.edits == [TopK(layer, 16) for layer in range(n)]
    sparsity.definition = "magnitude@0.95"
    sparsity.wait()
    taus = sparsity.thresholds("magnitude@0.95")
    assert min(taus.values()) > 0
    assert sparsity.edits == [Threshold(layer, taus[layer]) for layer in range(n)]
    sparsity.edits = [TopK(layer, 24) for layer in range(n)]
    assert sparsity.definition == "topk@24"
    sparsity.edits = [Threshold(layer, taus[layer]) for layer in range(n)]
    assert sparsity.definition == "magnitude@0.95"
    sparsity.edits = [TopK(0, 5)]
    assert "match no sparsity definition" in sparsity.error
    expected = run_sparsity(handle, sparse_windows, SparsitySettings(definition="topk@12"), progress=False)
    sparsity.result = expected
    assert sparsity.result is expected and sparsity.definition == "topk@12"
    assert (sparsity.kind.value, sparsity.k.value) == ("topk", 12)


def test_sparsity_of_a_text(handle):
    from workbench.sparsity import SparsitySettings, run_sparsity
    from workbench.widgets import SparsityExplorer
    from workbench.widgets.sparsity_data import text_windows

    widget = SparsityExplorer(handle, TEXT, definition="topk@50")
    result = widget.wait()
    windows = text_windows(handle, TEXT)
    assert result.tokens == windows.n_tokens and list(result.by_domain) == ["text"]
    same_result(result, run_sparsity(handle, windows, SparsitySettings(definition="topk@50"), progress=False))
    widget.close()
    session = ReplaySession.from_text(handle, TEXT)
    widget = SparsityExplorer(session)  # a replay session's text
    assert widget.wait().tokens == windows.n_tokens and widget.definition == "exact_zero"  # ReLU default
    widget.close()


def test_sparsity_explorer_errors_show_in_the_widget(sparsity, handle):
    from workbench.corpus import windows_for
    from workbench.models import load_model
    from workbench.widgets import SparsityExplorer
    from workbench.widgets import sparsity_explorer as module

    sparsity.definition = "magnitude@2"
    assert "Unknown sparsity definition" in sparsity.error and sparsity.result is None
    sparsity.definition = "exact_zero"
    assert sparsity.wait() is not None and sparsity.error is None
    moe = SparsityExplorer(load_model("tiny-moe", device="cpu", progress=False), TEXT)
    assert "mixture-of-experts" in moe.error and moe.wait() is None
    long = SparsityExplorer(handle, "word " * 1000)
    assert "more than tiny-relu's 128 positions" in html.unescape(long.error)
    big = windows_for(handle, context=128, n_tokens=128 * 40)
    old = module.MAX_CACHE_BYTES
    module.MAX_CACHE_BYTES = 8 * 2**20
    try:
        refused = SparsityExplorer(handle, big)
    finally:
        module.MAX_CACHE_BYTES = old
    assert "more than the 8 MiB" in refused.error and "Traceback" not in refused.error
