"""The edit explorer and the live runner, driven from Python: every drawn result equals
`ReplaySession.apply` of the same edits; stale states are coalesced or abandoned; errors show in the
widget."""

from __future__ import annotations

import json
import threading
import time

import pytest

from workbench.replay import ReplaySession
from workbench.replay.edits import HeadMask, SublayerSkip, TopK, WeightPrune
from workbench.replay.engine import ReplayAbandoned
from workbench.widgets.live import LatestOnly

TEXT = "def add(a, b):\n    return a + b\n\n# the sum of two numbers, printed\nprint(add(2, 3))"
FIELDS = ("ce_base", "ce_edited", "ce_delta", "kl", "top1_agreement", "resid_deviation", "first_layer")


@pytest.fixture(scope="module")
def handle():
    from workbench.models import load_model

    return load_model("tiny-relu", device="cpu", progress=False)


@pytest.fixture()
def explorer(handle):
    from workbench.widgets import EditExplorer

    widget = EditExplorer(handle, TEXT)
    widget.wait()
    yield widget
    widget.close()


def same_as_apply(widget, handle) -> None:
    """The widget's result equals a fresh session's apply of the widget's edits (an independent engine)."""
    result = widget.wait()
    assert widget.error is None
    expected = ReplaySession.from_text(handle, TEXT).apply(widget.edits)
    assert result.edits == expected.edits
    for name in FIELDS:
        assert getattr(result, name) == pytest.approx(getattr(expected, name), abs=1e-6), name
    assert [t["ce_delta"] for t in result.per_token[:-1]] == pytest.approx(
        [t["ce_delta"] for t in expected.per_token[:-1]], abs=1e-6
    )


def test_unedited_state_is_the_base_run(explorer, handle):
    result = explorer.result
    assert result.edits == [] and result.ce_delta == 0.0 and result.kl == pytest.approx(0.0, abs=1e-9)
    assert "CE base" in explorer.metrics.value
    tokens = explorer.tokens
    assert tokens.lines[0] == [t["token"] for t in result.per_token]
    assert len(tokens.decoded_values()) == len(result.per_token)
    assert set(tokens.hover[0]) == {"base", "edited"} and len(tokens.hover[0]["base"]) == 5
    assert explorer.deviation_chart.value.startswith("<svg")


def test_each_control_gives_the_apply_result(explorer, handle):
    n = handle.facts.n_layers
    explorer.neuron_mode.value = "topk"
    explorer.neuron_layers.value = (n - 2, n - 1)
    explorer.neuron_k.value = 16
    same_as_apply(explorer, handle)
    assert explorer.edits == [TopK(n - 2, 16), TopK(n - 1, 16)]
    explorer.neuron_mode.value = "threshold"
    explorer.neuron_tau.value = 0.1
    same_as_apply(explorer, handle)
    explorer.neuron_mode.value = "off"
    explorer.prune_level.value = 0.3
    same_as_apply(explorer, handle)
    assert explorer.edits == [WeightPrune(0.3, "layerwise", "magnitude")]
    explorer.prune_pattern.value = "2:4"  # N:M fixes the level at 1 - N/M
    same_as_apply(explorer, handle)
    assert explorer.edits[0].sparsity == 0.5
    explorer.prune_level.value = 0.0
    explorer.head_grid.click(1, 2)
    explorer.skip_grid.click(n - 1, 1)
    same_as_apply(explorer, handle)
    assert explorer.edits == [HeadMask(1, (2,)), SublayerSkip(n - 1, "mlp")]
    assert explorer.head_grid.marked == [[1, 2]] and explorer.skip_grid.marked == [[n - 1, 1]]
    explorer.head_grid.click(1, 2)  # a second click unmasks
    assert explorer.edits == [SublayerSkip(n - 1, "mlp")]


def test_edits_set_from_code_drive_the_controls(explorer, handle):
    explorer.edits = [{"kind": "topk", "layer": 2, "k": 8}, {"kind": "topk", "layer": 3, "k": 8}]
    assert (explorer.neuron_mode.value, explorer.neuron_layers.value, explorer.neuron_k.value) == (
        "topk",
        (2, 3),
        8,
    )
    same_as_apply(explorer, handle)
    mixed = [TopK(0, 3), TopK(1, 5), {"kind": "neuron_mask", "layer": 2, "neurons": [1, 2]}]
    explorer.edits = mixed  # no slider shows per-layer values: kept as edits, shown in the JSON
    assert {e.to_dict()["kind"] for e in explorer.edits} == {"topk", "neuron_mask"}
    same_as_apply(explorer, handle)
    assert json.loads(explorer.edits_json.value) == [e.to_dict() for e in explorer.edits]


def test_edits_no_control_can_draw_survive_a_round_trip(explorer, handle, tmp_path):
    """A prune narrowed to some layers or matrices, and a splice that scales features, are not what the
    slider and the splice checkbox describe: they are kept whole as extra edits, not flattened."""
    import torch

    from workbench.replay.edits import TranscoderSplice
    from workbench.transcoders.files import save_transcoder
    from workbench.transcoders.model import Transcoder, TranscoderConfig

    d = handle.facts.d_model
    tc = Transcoder(TranscoderConfig(d_in=d, d_out=d, width=32, arch="topk", k=4, layer=1), seed=0)
    with torch.no_grad():
        tc.W_enc.mul_(20.0)
    save_transcoder(tc, tmp_path / "transcoder")
    edits = [
        WeightPrune(0.4, "layerwise", layer_list=(1, 2), matrices=("mlp_in",)),
        TranscoderSplice(1, str(tmp_path), features=((3, 0.0), (5, 2.0))),
    ]
    explorer.edits = edits
    assert explorer.edits == edits
    assert explorer.prune_level.value == 0.0 and not explorer.splice.value
    same_as_apply(explorer, handle)


def test_result_can_be_set(explorer, handle):
    other = ReplaySession.from_text(handle, TEXT).apply([SublayerSkip(1, "attn")])
    explorer.result = other
    assert explorer.result is other
    assert explorer.skip_grid.marked == [[1, 0]]
    assert f"{other.ce_delta:+.4f}" in explorer.metrics.value


def test_errors_show_in_the_widget(explorer, handle):
    n = handle.facts.n_layers
    explorer.neuron_mode.value = "topk"
    explorer.neuron_layers.value = (n - 1, n - 1)
    explorer.skip_grid.click(n - 1, 1)  # skipping an MLP that top-k also edits
    explorer.wait()
    assert explorer.error is not None and "skipped and also edited" in explorer.error
    assert explorer.result is None
    explorer.skip_grid.click(n - 1, 1)
    explorer.wait()
    assert explorer.error is None and explorer.result is not None
    explorer.splice.value = True  # no transcoder folder given
    assert "run folder" in explorer.error
    explorer.splice_path.value = "/nonexistent/transcoder"
    explorer.wait()
    assert explorer.error is not None and "Traceback" not in explorer.error


def test_generate_save_and_command(explorer, handle, tmp_path):
    explorer.skip_grid.click(1, 1)
    explorer.wait()
    out = explorer.generate(4)
    expected = ReplaySession.from_text(handle, TEXT).generate([SublayerSkip(1, "mlp")], 4)
    assert out["edited_ids"] == expected["edited_ids"] and out["base_ids"] == expected["base_ids"]
    assert "edited" in explorer.generation.value
    path = explorer.save(tmp_path / "edits.json")
    assert json.loads(path.read_text()) == {"edits": [{"kind": "skip", "layer": 1, "target": "mlp"}]}
    assert (tmp_path / "edits.txt").read_text() == TEXT
    assert explorer.command.value.startswith("workbench replay --model tiny-relu --edit")
    assert str(path) in explorer.command.value


def test_curve_cursor(handle, tmp_path):
    from workbench.replay.finercut import FinerCutResult
    from workbench.results import Provenance
    from workbench.widgets import EditExplorer
    from workbench.widgets.charts import cursor_position

    curve = FinerCutResult(
        model="tiny-relu",
        n_sublayers=8,
        calibration_tokens=0,
        eval_tokens=0,
        base_loss=3.0,
        steps=[
            {"step": 1, "removed": 1, "share": 0.125, "layer": 1, "sublayer": "mlp", "kl": 0.1, "loss": 3.1}
        ],
        seconds=0.0,
        provenance=Provenance(model={}, data={}, definition="", settings={}),
    )
    widget = EditExplorer(handle, TEXT, curve=curve)
    widget.skip_grid.click(1, 1)
    widget.skip_grid.click(2, 0)
    widget.wait()
    assert cursor_position(curve, widget.edits) == 0.25
    assert widget.curve_chart.value.startswith("<svg")
    widget.close()


def test_latest_only_coalesces_and_abandons():
    """States submitted while one runs: the running one is abandoned, middle ones never start, and only
    the newest is drawn."""
    started, drawn = [], []
    release = threading.Event()

    def compute(state, cancelled):
        started.append(state)
        if state == 0:
            release.wait(5)
            for _ in range(100):  # what the engine does between layers
                if cancelled():
                    raise ReplayAbandoned("stale")
                time.sleep(0.01)
        return state

    runner = LatestOnly(compute, drawn.append, lambda exc: drawn.append(exc))
    runner.submit(0)
    while not started:
        time.sleep(0.001)
    for state in (1, 2, 3):
        runner.submit(state)
    release.set()
    assert runner.wait(10)
    assert drawn == [3]
    assert started == [0, 3]
    assert runner.abandoned == 1 and runner.skipped == 2
    runner.close()


def test_a_stale_replay_stops_between_layers(handle):
    session = ReplaySession.from_text(handle, TEXT)
    asked = []

    def cancelled():
        asked.append(1)
        return len(asked) > 1

    with pytest.raises(ReplayAbandoned):
        session.apply([SublayerSkip(0, "mlp")], cancelled=cancelled)
    assert len(asked) == 2  # stopped before the second layer
