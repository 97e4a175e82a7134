"""The expert explorer: how a mixture-of-experts model routes one text, and what masking experts does.

    from workbench.widgets import ExpertExplorer
    ExpertExplorer(handle, "def add(a, b):\\n    return a + b")
    ExpertExplorer(handle, explorer=edit_explorer)  # masks go through the explorer's expert controls

Routing is captured once per text with the routing probe, which reads each router's own output (logits,
the k chosen experts and their weights): what the model used, not a re-derivation. The widget shows

- per token, for the layer chosen in a dropdown, the experts it was routed to, as a tokens × experts grid
  shaded by the routing weight (0 where the expert was not chosen);
- per layer, on this text, the load f_e (share of tokens whose top-k holds e) and the specialization
  numbers of `workbench.experts.routing_stats` (load_cv, router entropy, NMI(expert; label) and
  spec(e, class) for the token_class and position labels; docs/methods.md#expert-routing-and-specialization);
- a layers × experts grid shaded by load: a click masks that expert (`ExpertMask`, reroute or drop;
  docs/methods.md#causal-specialization-by-expert-masking) and the masks are replayed live, showing CE, KL
  and top-1 agreement like the edit explorer. Without a linked explorer the replay runs on the widget's
  own `ReplaySession` (on a `LatestOnly` worker); with one, the click goes to the explorer's expert grid
  and mode, and the explorer replays (its other edits included).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import ipywidgets as W
import numpy as np

from workbench.errors import WorkbenchError
from workbench.replay.edits import EXPERT_MASK_MODES, Edit, ExpertMask, parse_edits
from workbench.replay.session import ReplayResult, ReplaySession
from workbench.widgets.edit_explorer import metrics_html
from workbench.widgets.live import LatestOnly
from workbench.widgets.text_capture import capture_text, text_input
from workbench.widgets.views import GridView, float_bytes, message

LABELS = ("token_class", "position")  # what specialization is measured against on one text


@dataclass(frozen=True)
class ExpertRouting:
    """The unedited routing of the text (an ExpertExplorer's `.routing`).

    Per routed layer: `experts[layer]` [T, k] the chosen experts of each token (in the router's order),
    `weights[layer]` [T, k] their routing weights, `logits[layer]` [T, E] the router logits, and
    `stats[layer]` the per-layer numbers of `RoutingStats.summary()` on this text (load f_e, load_cv,
    router entropy, NMI and spec(e, class) for the labels in LABELS, ...). `shared_gate[layer]` [T] is the
    shared expert's sigmoid gate (Qwen2-MoE style models only).
    """

    model: str
    tokens: list[str]
    layers: list[int]
    n_experts: int
    k: int
    experts: dict[int, np.ndarray]
    weights: dict[int, np.ndarray]
    logits: dict[int, np.ndarray]
    stats: dict[int, dict]
    shared_gate: dict[int, np.ndarray]

    def weight_matrix(self, layer: int) -> np.ndarray:
        """[T, E] float32: each token's routing weight on each expert, 0 where it was not chosen."""
        experts, weights = self.experts[layer], self.weights[layer]
        matrix = np.zeros((len(experts), self.n_experts), dtype=np.float32)
        np.put_along_axis(matrix, experts, weights, axis=1)
        return matrix

    def load(self, layer: int) -> list[float]:
        """f_e on this text: the share of tokens whose top-k holds expert e (sums to k)."""
        return list(self.stats[layer]["load"])


def capture_routing(handle, ids, tokens: list[str]) -> ExpertRouting:
    """One forward pass with the routing probe over token ids [T]; statistics folded by RoutingStats."""
    import torch

    from workbench.experts.labels import TOKEN_CLASSES, Labeller, token_class
    from workbench.experts.routing_stats import RoutingStats, RoutingStatsReducer
    from workbench.probes.capture import RoutingProbe, moe_layers

    facts = handle.facts
    layers = moe_layers(handle)
    sink = capture_text(handle, ids, [RoutingProbe()])
    # The token-class table of only the ids in the text (Labeller.build decodes the whole vocabulary).
    table = torch.full((facts.d_vocab,), TOKEN_CLASSES.index("special"), dtype=torch.long)
    specials = set(getattr(handle.tokenizer, "all_special_ids", []) or [])
    for token_id, text in zip(ids.tolist(), tokens, strict=True):
        table[token_id] = TOKEN_CLASSES.index(token_class(text, special=token_id in specials))
    labeller = Labeller(list(LABELS), ["text"], table, facts.d_vocab)
    stats = RoutingStats(facts.n_experts, facts.experts_per_token, labeller)
    RoutingStatsReducer(stats).update(sink.values, sink.meta)  # meta: token ids, positions 0..T-1
    summary = {x["layer"]: x for x in stats.summary()}

    def field(layer: int, name: str) -> np.ndarray:
        return sink.values[f"routing.blocks.{layer}.{name}"].numpy()

    return ExpertRouting(
        model=handle.name,
        tokens=list(tokens),
        layers=layers,
        n_experts=facts.n_experts,
        k=facts.experts_per_token,
        experts={layer: field(layer, "topk_indices") for layer in layers},
        weights={layer: field(layer, "topk_weights").astype(np.float32) for layer in layers},
        logits={layer: field(layer, "router_logits").astype(np.float32) for layer in layers},
        stats=summary,
        shared_gate={
            layer: field(layer, "shared_expert_gate")[:, 0]
            for layer in layers
            if f"routing.blocks.{layer}.shared_expert_gate" in sink.values
        },
    )


class ExpertExplorer(W.VBox):
    """Per-token routing, load and specialization per layer of an MoE model on one text; click experts to
    mask them and see CE, KL and top-1 agreement update live."""

    def __init__(self, model, text: str | None = None, explorer=None, *, mode: str | None = None) -> None:
        """`model`: a model handle (with `text`) or a `ReplaySession` (its first row). `explorer`: an
        EditExplorer on the same model and text whose expert controls the masks go through (its text is
        used when `text` is left out). `mode`: "reroute" or "drop" (docs/methods.md); by default the
        linked explorer's mode, else reroute."""
        if mode is not None and mode not in EXPERT_MASK_MODES:
            raise WorkbenchError(
                f"Unknown expert-mask mode {mode!r}; use one of {', '.join(EXPERT_MASK_MODES)}."
            )
        source = text_input(model, text, explorer, "ExpertExplorer")
        handle = source.handle
        if not handle.facts.moe:
            raise WorkbenchError(
                f"{handle.name} is a dense model: it has no experts to explore. Use a mixture-of-experts "
                "model such as tiny-moe (the AttentionViewer and EditExplorer work on dense models)."
            )
        self.handle, self.explorer = handle, explorer
        self.session = source.session if source.session is not None else ReplaySession.from_text(handle, text)
        self.tokens = source.tokens
        self.routing = capture_routing(handle, source.ids, source.tokens)
        if not self.routing.layers:
            raise WorkbenchError(f"{handle.name} has no routed layer that the routing probe can read.")
        self._experts: set[tuple[int, int]] = set()
        self._result: ReplayResult | None = None
        self._quiet = False
        n_experts = self.routing.n_experts

        layers = self.routing.layers
        self.layer = W.Dropdown(
            options=[(f"layer {x}", x) for x in layers], value=layers[0], description="layer"
        )
        self.layer.observe(lambda _: self._show_layer(), names="value")
        default = explorer.expert_mode.value if explorer is not None else "reroute"
        self.mode = W.Dropdown(options=list(EXPERT_MASK_MODES), value=mode or default, description="mode")
        self.mode.observe(self._mode_changed, names="value")
        expert_names = [str(e) for e in range(n_experts)]
        self.routing_grid = GridView(
            rows=[f"{i} {_shown(t)}" for i, t in enumerate(self.tokens)], cols=expert_names
        )
        self.routing_grid.on_click(self._token_clicked)
        self.mask_grid = GridView(
            rows=[f"L{x}" for x in layers],
            cols=expert_names,
            values=float_bytes([self.routing.load(x) for x in layers]),
            title="layers × experts, shade: load f_e on this text; click to mask",
        )
        self.mask_grid.on_click(self._mask_clicked)
        self.stats = W.HTML()
        self.status = W.HTML(message("ready"))
        self.metrics = W.HTML()
        super().__init__(
            [
                W.HBox([self.layer, self.mode]),
                self.status,
                self.metrics,
                W.HBox([self.mask_grid, self.stats]),
                self.routing_grid,
            ]
        )
        self.add_class("wb-expert-explorer")
        self._show_layer()
        self._runner: LatestOnly | None = None
        self._linked = explorer is not None
        if explorer is not None:
            explorer.expert_grid.observe(self._explorer_changed, names="marked")
            explorer.expert_mode.observe(self._explorer_mode, names="value")
            explorer.metrics.observe(self._explorer_changed, names="value")
            explorer.status.observe(self._explorer_changed, names="value")
            explorer.expert_mode.value = self.mode.value  # a mode asked for is set in the explorer
            self._explorer_changed()
        else:
            self._runner = LatestOnly(
                self._compute, self._draw, self._fail, self._busy, name="expert-explorer"
            )
            self._submit()

    # --- routing and statistics -------------------------------------------------------------------------

    def _show_layer(self) -> None:
        layer = self.layer.value
        weights = self.routing.weight_matrix(layer)
        with self.routing_grid.hold_sync():
            self.routing_grid.values = float_bytes(weights)
            self.routing_grid.title = (
                f"layer {layer}: tokens × experts, shade: routing weight (top-{self.routing.k}, unedited)"
            )
        self.stats.value = stats_html(self.routing, layer, self._masked())

    def _token_clicked(self, row: int, col: int, shift: bool) -> None:
        layer = self.layer.value
        chosen = ", ".join(
            f"expert {e} ({w:.3f})"
            for e, w in zip(self.routing.experts[layer][row], self.routing.weights[layer][row], strict=True)
        )
        self.status.value = message(f"token {row} {self.tokens[row]!r} at layer {layer}: {chosen}")

    # --- masks ----------------------------------------------------------------------------------------

    def _masked(self) -> set[tuple[int, int]]:
        if self.explorer is not None:
            return {(int(r), int(c)) for r, c in self.explorer.expert_grid.marked}
        return set(self._experts)

    def _mask_clicked(self, row: int, col: int, shift: bool) -> None:
        try:
            self.toggle_expert(self.routing.layers[row], col)
        except WorkbenchError as exc:
            self._fail(exc)

    def toggle_expert(self, layer: int, expert: int) -> None:
        """Mask (or unmask) one expert of a routed layer (what a click on the masks grid does)."""
        self._check(layer, expert)
        if self.explorer is not None:
            self.explorer.expert_grid.click(layer, expert)  # the explorer replays; its marks come back
            return
        self._experts.symmetric_difference_update({(int(layer), int(expert))})
        self._marks()
        self._submit()

    def _check(self, layer: int, expert: int) -> None:
        if layer not in self.routing.layers or not 0 <= expert < self.routing.n_experts:
            raise WorkbenchError(
                f"{self.handle.name} routes layers {self.routing.layers} over experts "
                f"0..{self.routing.n_experts - 1}; got layer {layer}, expert {expert}."
            )

    def _marks(self) -> None:
        rows = {layer: i for i, layer in enumerate(self.routing.layers)}
        self.mask_grid.marked = [[rows[lay], e] for lay, e in sorted(self._masked()) if lay in rows]
        self.stats.value = stats_html(self.routing, self.layer.value, self._masked())

    def _mode_changed(self, _change=None) -> None:
        if self._quiet:
            return
        if self.explorer is not None:
            self.explorer.expert_mode.value = self.mode.value
        else:
            self._submit()

    @property
    def edits(self) -> list[Edit]:
        """The masked experts as ExpertMask edits, one per layer (the linked explorer's, if there is one)."""
        masked = sorted(self._masked())
        return [
            ExpertMask(layer, tuple(e for lay, e in masked if lay == layer), self.mode.value)
            for layer in sorted({lay for lay, _ in masked})
        ]

    @edits.setter
    def edits(self, value: Any) -> None:
        """Mask exactly these experts (ExpertMask edits or their JSON; one mode for all)."""
        parsed = parse_edits([value] if isinstance(value, Edit | dict) else value)
        other = sorted({e.kind for e in parsed if not isinstance(e, ExpertMask)})
        if other:
            raise WorkbenchError(
                f"The expert explorer masks experts only; give expert_mask edits, not {other}."
            )
        modes = {e.mode for e in parsed}
        if len(modes) > 1:
            raise WorkbenchError("Give one mode for every expert mask (reroute or drop), not both.")
        wanted = {(e.layer, x) for e in parsed for x in e.experts}
        for layer, expert in wanted:
            self._check(layer, expert)
        if self.explorer is not None:
            if modes:
                self.explorer.expert_mode.value = modes.pop()
            for layer, expert in sorted(wanted ^ self._masked()):
                self.explorer.expert_grid.click(layer, expert)
            return
        self._quiet = True
        try:
            if modes:
                self.mode.value = modes.pop()
        finally:
            self._quiet = False
        self._experts = wanted
        self._marks()
        self._submit()

    # --- replay -----------------------------------------------------------------------------------------

    def _submit(self) -> None:
        try:
            edits = tuple(self.edits)
        except WorkbenchError as exc:
            self._fail(exc)
            return
        self._runner.submit(edits)

    def _compute(self, edits: tuple[Edit, ...], cancelled) -> ReplayResult:
        return self.session.apply(list(edits), cancelled=cancelled)

    def _draw(self, result: ReplayResult) -> None:
        self._result = result
        self._show(result)

    def _show(self, result: ReplayResult) -> None:
        self.metrics.value = metrics_html(result)
        self.status.value = message(
            f"{len(result.edits)} expert mask(s); replayed from layer {result.first_layer} "
            f"in {result.seconds:.3f} s"
        )

    def _explorer_changed(self, _change=None) -> None:
        self._marks()
        self.metrics.value = self.explorer.metrics.value
        shown = self.explorer.status.value  # its errors and busy state, else where the replay ran
        linked = "masks replayed by the linked edit explorer (its other edits too)"
        self.status.value = shown if ("wb-error" in shown or "wb-busy" in shown) else message(linked)

    def _explorer_mode(self, change) -> None:
        self._quiet = True
        try:
            self.mode.value = change["new"]
        finally:
            self._quiet = False
        self._marks()

    def _fail(self, exc: BaseException) -> None:
        self._result = None  # the current masks have no result; the message says why
        text = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
        self.status.value = message(text, "error")

    def _busy(self, flag: bool) -> None:
        if flag:
            self.status.value = message("replaying…", "busy")

    @property
    def result(self) -> ReplayResult | None:
        """The newest replay of the masks (`ReplaySession.apply(self.edits)`); with a linked explorer, the
        explorer's result. None while the masks are refused (`.error` says why). Call `wait()` first."""
        if self.explorer is not None:
            return self.explorer.result
        return self._result

    @result.setter
    def result(self, value: ReplayResult) -> None:
        """Show a replay result (e.g. read from a run folder) and set the masks to its expert masks."""
        if self.explorer is not None:
            self.explorer.result = value
            return
        self.edits = value.edits
        self.wait()
        self._result = value
        self._show(value)

    def wait(self, timeout: float = 120.0) -> ReplayResult | None:
        """Block until the newest masks are replayed and drawn; returns `.result`."""
        if self.explorer is not None:
            return self.explorer.wait(timeout)
        if not self._runner.wait(timeout):
            raise TimeoutError(f"the expert explorer did not finish within {timeout} s")
        return self._result

    @property
    def error(self) -> str | None:
        """The message shown in the widget, if it shows an error."""
        return self.status.value if "wb-error" in self.status.value else None

    def close(self) -> None:
        runner = self.__dict__.get("_runner")  # absent when __init__ raised (ipywidgets closes on __del__)
        if runner is not None:
            runner.close()
        if self.__dict__.get("_linked"):
            self._linked = False
            self.explorer.expert_grid.unobserve(self._explorer_changed, names="marked")
            self.explorer.expert_mode.unobserve(self._explorer_mode, names="value")
            self.explorer.metrics.unobserve(self._explorer_changed, names="value")
            self.explorer.status.unobserve(self._explorer_changed, names="value")
        super().close()


def _shown(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "⇥")


def stats_html(routing: ExpertRouting, layer: int, masked: set[tuple[int, int]]) -> str:
    """One layer's load and specialization on this text: a summary line and a row per expert."""
    s = routing.stats[layer]
    k, e = routing.k, routing.n_experts
    nmi = ", ".join(f"NMI(expert; {name}) {value:.3f}" for name, value in s["nmi"].items())
    adjacent = f", adjacent-layer NMI {s['adjacent_nmi']:.3f}" if s.get("adjacent_nmi") is not None else ""
    line = (
        f"layer {layer} on this text ({s['tokens']} tokens): load_cv {s['load_cv']:.3f}, router entropy "
        f"{s['router_entropy_mean']:.3f} nats ({s['router_entropy_normalised']:.0%} of log E), "
        f"balance loss {s['balance_loss']:.3f}; {nmi}{adjacent}"
    )
    classes = s["spec"].get("token_class", {})
    head = "".join(f"<th>spec {html.escape(c)}</th>" for c in classes)
    rows = []
    for x in range(e):
        cells = "".join(f"<td>{classes[c][x]:.2f}</td>" for c in classes)
        state = "masked" if (layer, x) in masked else ""
        rows.append(f"<tr><td>{x}</td><td>{s['load'][x]:.3f}</td>{cells}<td>{state}</td></tr>")
    return (
        f"<div class='wb-expert-stats' style='font-size:12px'><div>{html.escape(line)}</div>"
        f"<table><tr><th>expert</th><th>load f_e</th>{head}<th></th></tr>{''.join(rows)}</table>"
        f"<div style='color:#555'>load sums to k = {k}; spec(e, class) = share of the class's tokens that "
        f"chose e, uniform {k / e:.3f}</div></div>"
    )
