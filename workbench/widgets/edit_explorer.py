"""The edit explorer: controls for every edit kind on one text, and the effect redrawn as they move.

    from workbench.widgets import EditExplorer
    EditExplorer(handle, "def add(a, b):\\n    return a + b")

Every control change becomes an edit list (`.edits`), replayed by a `ReplaySession` on a worker thread
(`LatestOnly`: only the newest state runs, stale replays stop between layers). `.result` is the newest
`ReplayResult`, the same object `ReplaySession.apply(explorer.edits)` returns.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as W

from workbench.errors import WorkbenchError
from workbench.replay.edits import (
    Edit,
    ExpertMask,
    HeadMask,
    SublayerSkip,
    Threshold,
    TopK,
    TranscoderSplice,
    WeightPrune,
    dump_edits,
    parse_edits,
)
from workbench.replay.session import ReplayResult, ReplaySession
from workbench.widgets import charts
from workbench.widgets.live import LatestOnly
from workbench.widgets.views import GridView, TokenView, message

PATTERNS = ("global", "layerwise", "2:4", "4:8")
CRITERIA = ("magnitude", "random")
SUBLAYERS = ("attn", "mlp")
TOP_K = 5  # next tokens in each token's hover card


@dataclass(frozen=True)
class _State:
    """What one update computes: the edit list, and when the control moved (for latency figures)."""

    edits: tuple[Edit, ...]
    submitted: float


def session_of(model, text: str | None, backend: str | None = None) -> ReplaySession:
    """A session as given, or a new one on `text` for a model handle."""
    if isinstance(model, ReplaySession):
        return model
    if text is None:
        raise WorkbenchError("Give the text to replay: EditExplorer(handle, 'some text').")
    return ReplaySession.from_text(model, text, backend=backend)


class EditExplorer(W.VBox):
    """Edit a model with controls and see CE, KL, top-1 agreement, per-token loss change and residual
    deviation update live; generate under the edits; export the edits as JSON, a file or a command."""

    def __init__(
        self,
        model,
        text: str | None = None,
        *,
        transcoder: str | Path | None = None,
        curve=None,
        backend: str | None = None,
    ) -> None:
        """`model`: a model handle (with `text`) or a `ReplaySession`. `transcoder`: a transcoder run folder
        for the splice control. `curve`: an essential-sparsity or FinerCut run folder (or result), drawn
        with a cursor at the current pruning level or number of removed sublayers."""
        self.session = session_of(model, text, backend)
        facts = self.session.handle.facts
        self.facts = facts
        self._curve = charts.load_curve(curve) if curve is not None else None
        self._quiet = False
        self._result: ReplayResult | None = None
        self.updates: list[dict] = []  # per drawn update: seconds until the metrics showed, first layer
        self._neurons: dict[int, tuple[str, float]] = {}  # layer -> ("topk", k) / ("threshold", tau)
        self._heads: set[tuple[int, int]] = set()
        self._skips: set[tuple[int, str]] = set()
        self._experts: set[tuple[int, int]] = set()
        self._extra: list[Edit] = []  # edits set from code that no control shows (e.g. neuron masks)

        last = facts.n_layers - 1
        observe = []
        self.neuron_mode = W.Dropdown(
            options=[("off", "off"), ("top-k per token", "topk"), ("threshold |a| <", "threshold")],
            value="off",
            description="neurons",
        )
        self.neuron_layers = W.IntRangeSlider(
            value=(2 * facts.n_layers // 3, last), min=0, max=last, description="layers"
        )
        self.neuron_k = W.IntSlider(
            value=max(1, facts.d_mlp // 4), min=1, max=facts.d_mlp, description="k", continuous_update=False
        )
        self.neuron_tau = W.FloatSlider(
            value=0.05, min=0.0, max=1.0, step=0.005, readout_format=".3f", description="τ"
        )
        self.prune_level = W.FloatSlider(
            value=0.0, min=0.0, max=0.9, step=0.05, description="prune", continuous_update=False
        )
        self.prune_pattern = W.Dropdown(options=PATTERNS, value="layerwise", description="pattern")
        self.prune_criterion = W.Dropdown(options=CRITERIA, value="magnitude", description="criterion")
        observe += [self.neuron_mode, self.neuron_layers, self.neuron_k, self.neuron_tau]
        observe += [self.prune_level, self.prune_pattern, self.prune_criterion]

        layers = [f"L{i}" for i in range(facts.n_layers)]
        self.head_grid = GridView(
            rows=layers, cols=[str(h) for h in range(facts.n_heads)], title="heads: click to mask"
        )
        self.head_grid.on_click(lambda r, c, shift: self._toggle(self._heads, (r, c)))
        self.skip_grid = GridView(rows=layers, cols=list(SUBLAYERS), title="sublayers: click to skip")
        self.skip_grid.on_click(lambda r, c, shift: self._toggle(self._skips, (r, SUBLAYERS[c])))
        tabs = {
            "neurons": W.VBox([self.neuron_mode, self.neuron_layers, self.neuron_k, self.neuron_tau]),
            "weights": W.VBox([self.prune_level, self.prune_pattern, self.prune_criterion]),
            "heads": self.head_grid,
            "sublayers": self.skip_grid,
        }
        self.expert_grid = self.expert_mode = None
        if facts.moe:
            self.expert_mode = W.Dropdown(options=["reroute", "drop"], value="reroute", description="mode")
            self.expert_grid = GridView(
                rows=layers, cols=[str(e) for e in range(facts.n_experts)], title="experts: click to mask"
            )
            self.expert_grid.on_click(lambda r, c, shift: self._toggle(self._experts, (r, c)))
            observe.append(self.expert_mode)
            tabs["experts"] = W.VBox([self.expert_mode, self.expert_grid])
        self.splice = W.Checkbox(value=False, description="splice transcoder")
        self.splice_path = W.Text(value=str(transcoder or ""), description="run folder")
        self.splice_layer = W.BoundedIntText(value=facts.n_layers // 2, min=0, max=last, description="layer")
        observe += [self.splice, self.splice_path, self.splice_layer]
        tabs["transcoder"] = W.VBox([self.splice, self.splice_path, self.splice_layer])
        self.controls = W.Tab(children=list(tabs.values()), titles=list(tabs))
        for control in observe:
            control.observe(self._changed, names="value")

        self.status = W.HTML(message("ready"))
        self.metrics = W.HTML()
        self.tokens = TokenView(label="Δ loss (nats)", caption="next-token loss change (red: worse)")
        self.deviation_chart = W.HTML()
        self.curve_chart = W.HTML()
        self.generate_n = W.BoundedIntText(value=20, min=1, max=512, description="tokens")
        self.generate_button = W.Button(description="generate", icon="play")
        self.generate_button.on_click(lambda _: self.generate())
        self.generation = W.HTML()
        self.edits_json = W.Textarea(layout=W.Layout(width="100%", height="90px"))
        self.edits_json.disabled = True
        self.command = W.Textarea(layout=W.Layout(width="100%", height="48px"))
        self.command.disabled = True
        self.save_path = W.Text(value="edits.json", description="save as")
        self.save_button = W.Button(description="save", icon="save")
        self.save_button.on_click(lambda _: self.save(self.save_path.value))
        exports = W.VBox([self.edits_json, W.HBox([self.save_path, self.save_button]), self.command])
        super().__init__(
            [
                self.controls,
                self.status,
                self.metrics,
                self.tokens,
                W.HBox([self.deviation_chart, self.curve_chart]),
                W.HBox([self.generate_n, self.generate_button]),
                self.generation,
                W.Accordion(children=[exports], titles=["edits: JSON, file, command"]),
            ]
        )
        self.add_class("wb-edit-explorer")
        self._runner = LatestOnly(self._compute, self._draw, self._fail, self._busy, name="edit-explorer")
        self._changed()

    # --- edits <-> controls -------------------------------------------------------------------------

    @property
    def edits(self) -> list[Edit]:
        """The edit list the controls describe now (plus edits set from code that no control shows)."""
        edits: list[Edit] = []
        mode = self.neuron_mode.value
        if mode != "off":
            low, high = self.neuron_layers.value
            k, tau = self.neuron_k.value, self.neuron_tau.value
            for layer in range(low, high + 1):
                edits.append(TopK(layer, k) if mode == "topk" else Threshold(layer, tau))
        if self.prune_level.value > 0:
            pattern = self.prune_pattern.value
            level = self.prune_level.value
            if ":" in pattern:  # N:M fixes the sparsity at 1 - N/M; the slider only turns it on
                n, m = (int(x) for x in pattern.split(":"))
                level = 1 - n / m
            edits.append(WeightPrune(round(level, 6), pattern, self.prune_criterion.value))
        for layer in sorted({layer for layer, _ in self._heads}):
            edits.append(HeadMask(layer, tuple(h for lay, h in sorted(self._heads) if lay == layer)))
        if self.expert_mode is not None:
            for layer in sorted({layer for layer, _ in self._experts}):
                experts = tuple(e for lay, e in sorted(self._experts) if lay == layer)
                edits.append(ExpertMask(layer, experts, self.expert_mode.value))
        edits += [SublayerSkip(layer, target) for layer, target in sorted(self._skips)]
        if self.splice.value:
            if not self.splice_path.value.strip():
                raise WorkbenchError("Give the transcoder's run folder to splice it in.")
            edits.append(TranscoderSplice(self.splice_layer.value, self.splice_path.value.strip()))
        return edits + list(self._extra)

    @edits.setter
    def edits(self, value: Any) -> None:
        """Set every control from an edit list (objects or JSON); redraws once."""
        parsed = parse_edits([value] if isinstance(value, Edit | dict) else value)
        self._quiet = True
        try:
            self._heads = {(e.layer, h) for e in parsed if isinstance(e, HeadMask) for h in e.heads}
            self._skips = {(e.layer, e.target) for e in parsed if isinstance(e, SublayerSkip)}
            masks = [e for e in parsed if isinstance(e, ExpertMask)]
            if masks and self.expert_mode is None:
                raise WorkbenchError(f"{self.facts.name} has no experts to mask")
            self._experts = {(e.layer, x) for e in masks for x in e.experts}
            if masks:
                self.expert_mode.value = masks[0].mode
            # Only what the controls can draw maps onto them: a prune of the whole scope, a plain splice.
            # A narrowed prune (layers, matrices) or a splice that scales features stays an extra edit.
            prunes = [
                e
                for e in parsed
                if isinstance(e, WeightPrune) and e.layer_list is None and e.matrices is None
            ]
            self.prune_level.value = prunes[0].sparsity if prunes else 0.0
            if prunes:
                self.prune_pattern.value = prunes[0].pattern
                self.prune_criterion.value = prunes[0].criterion
            splices = [e for e in parsed if isinstance(e, TranscoderSplice) and e.features is None]
            self.splice.value = bool(splices)
            if splices:
                self.splice_path.value, self.splice_layer.value = splices[0].path, splices[0].layer
            shown = set(map(id, [*masks, *prunes[:1], *splices[:1]]))
            kinds = (HeadMask, SublayerSkip, TopK, Threshold)
            self._extra = [e for e in parsed if id(e) not in shown and not isinstance(e, kinds)]
            self._set_neurons([e for e in parsed if isinstance(e, TopK | Threshold)])
        finally:
            self._quiet = False
        self._marks()
        self._changed()

    def _set_neurons(self, edits: list[Edit]) -> None:
        """Top-k / threshold edits on a contiguous layer range with one value map onto the controls;
        anything else is kept as extra edits (shown in the JSON, not in the sliders)."""
        if not edits:
            self.neuron_mode.value = "off"
            return
        kinds = {e.kind for e in edits}
        values = {e.k if isinstance(e, TopK) else e.tau for e in edits}
        layers = sorted(e.layer for e in edits)
        if len(kinds) == 1 and len(values) == 1 and layers == list(range(layers[0], layers[-1] + 1)):
            self.neuron_mode.value = kinds.pop()
            self.neuron_layers.value = (layers[0], layers[-1])
            if self.neuron_mode.value == "topk":
                self.neuron_k.value = int(values.pop())
            else:
                self.neuron_tau.value = float(values.pop())
        else:
            self.neuron_mode.value = "off"
            self._extra += edits

    def _toggle(self, cells: set, cell: tuple) -> None:
        cells.symmetric_difference_update({cell})
        self._marks()
        self._changed()

    def toggle_head(self, layer: int, head: int) -> None:
        """Mask (or unmask) one head: what a click on the heads grid or a linked attention viewer does."""
        self._toggle(self._heads, (layer, head))

    def _marks(self) -> None:
        self.head_grid.marked = [list(c) for c in sorted(self._heads)]
        self.skip_grid.marked = [[layer, SUBLAYERS.index(t)] for layer, t in sorted(self._skips)]
        if self.expert_grid is not None:
            self.expert_grid.marked = [list(c) for c in sorted(self._experts)]

    # --- live updates -------------------------------------------------------------------------------

    def _changed(self, _change=None) -> None:
        if self._quiet:
            return
        try:
            edits = tuple(self.edits)
        except WorkbenchError as exc:
            self._fail(exc)
            return
        self.edits_json.value = json.dumps(dump_edits(list(edits)), indent=1)
        self.command.value = self.replay_command()
        self._runner.submit(_State(edits, time.perf_counter()))

    def _compute(self, state: _State, cancelled) -> tuple[_State, ReplayResult]:
        return state, self.session.apply(list(state.edits), cancelled=cancelled, top_k=TOP_K)

    def _draw(self, computed: tuple[_State, ReplayResult]) -> None:
        state, result = computed
        self._result = result
        self._show(result)
        shown = time.perf_counter() - state.submitted
        self.deviation_chart.value = charts.svg(charts.deviation(result))
        if self._curve is not None:
            self.curve_chart.value = charts.svg(charts.curve_with_cursor(self._curve, list(state.edits)))
        self.updates.append(
            {
                "metrics_seconds": shown,
                "drawn_seconds": time.perf_counter() - state.submitted,
                "replay_seconds": result.seconds,
                "first_layer": result.first_layer,
            }
        )

    def _show(self, result: ReplayResult) -> None:
        self.metrics.value = metrics_html(result)
        values = [t["ce_delta"] for t in result.per_token]
        hover = [{"base": t.get("top_base", []), "edited": t.get("top_edited", [])} for t in result.per_token]
        self.tokens.show([[t["token"] for t in result.per_token]], values, hover=hover)
        self.status.value = message(
            f"{len(result.edits)} edit(s); replayed from layer {result.first_layer} in {result.seconds:.3f} s"
        )

    def _fail(self, exc: BaseException) -> None:
        self._result = None  # the current edits have no result; the message says why
        text = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
        self.status.value = message(text, "error")

    def _busy(self, flag: bool) -> None:
        if flag:
            self.status.value = message("replaying…", "busy")

    @property
    def result(self) -> ReplayResult | None:
        """The newest drawn result (call `wait()` first to be sure it reflects the controls); None while
        the current edits are refused (`.error` says why)."""
        return self._result

    @result.setter
    def result(self, value: ReplayResult) -> None:
        """Show a result (e.g. one read from a run folder) and set the controls to its edits."""
        self.edits = value.edits
        self.wait()
        self._result = value
        self._show(value)

    def wait(self, timeout: float = 120.0) -> ReplayResult | None:
        """Block until the newest control state is drawn; returns `.result`."""
        if not self._runner.wait(timeout):
            raise TimeoutError(f"the edit explorer did not finish within {timeout} s")
        return self._result

    @property
    def error(self) -> str | None:
        """The message shown in the widget, if it shows an error."""
        return self.status.value if "wb-error" in self.status.value else None

    def close(self) -> None:
        self._runner.close()
        super().close()

    # --- generate and export -------------------------------------------------------------------------

    def generate(self, n_tokens: int | None = None) -> dict:
        """Greedy tokens under the current edits, beside the unedited ones (also shown in the widget)."""
        n = n_tokens or self.generate_n.value
        self.status.value = message(f"generating {n} tokens…", "busy")
        try:
            out = self.session.generate(self.edits, n)
        except WorkbenchError as exc:
            self._fail(exc)
            return {}
        self.generation.value = generation_html(out)
        self.status.value = message(f"generated {n} tokens; agreement {out['agreement']:.0%}")
        return out

    def save(self, path: str | Path) -> Path:
        """Write the edits as an edit file (`workbench replay --edit FILE`) and the text beside it."""
        path = Path(path)
        path.write_text(json.dumps({"edits": dump_edits(self.edits)}, indent=1) + "\n")
        text = self.session.data.get("text")
        if text is not None:
            path.with_suffix(".txt").write_text(text)
        self.command.value = self.replay_command(path)
        self.status.value = message(f"saved {path}")
        return path

    def replay_command(self, path: str | Path | None = None) -> str:
        """The `workbench replay` command that applies these edits to the same text."""
        edit = str(path) if path is not None else json.dumps(dump_edits(self.edits), separators=(",", ":"))
        text = Path(path).with_suffix(".txt") if path is not None else Path("text.txt")
        n = self.session.engine.tokens.shape[1]
        return (
            f"workbench replay --model {shlex.quote(self.facts.name)} --edit {shlex.quote(edit)} "
            f"--text {shlex.quote(str(text))} --context {n} --tokens {n} --json"
        )


def metrics_html(result: ReplayResult) -> str:
    cells = [
        ("CE base", f"{result.ce_base:.4f}"),
        ("CE edited", f"{result.ce_edited:.4f}"),
        ("Δ CE", f"{result.ce_delta:+.4f}"),
        ("KL", f"{result.kl:.4f}"),
        ("top-1 agreement", f"{result.top1_agreement:.1%}"),
        ("first layer", str(result.first_layer)),
    ]
    head = "".join(f"<th style='padding:0 8px'>{k}</th>" for k, _ in cells)
    body = "".join(f"<td class='wb-metric' style='padding:0 8px'>{v}</td>" for _, v in cells)
    return f"<table class='wb-metrics'><tr>{head}</tr><tr>{body}</tr></table>"


def generation_html(out: dict) -> str:
    import html

    return (
        "<div style='font-family:monospace;white-space:pre-wrap'>"
        f"<b>base</b>: {html.escape(out['base'])}<br><b>edited</b>: {html.escape(out['edited'])}</div>"
    )
