"""The attention viewer: every layer × head of one text at a glance, and one head's pattern on a click.

    from workbench.widgets import AttentionViewer
    viewer = AttentionViewer(handle, "The capital of France is")
    AttentionViewer(handle, text, explorer=edit_explorer)  # Shift-click masks the head there, live

The patterns are captured once per text with the attention probe (`workbench.probes`), which recomputes
softmax(q·kᵀ/√d + causal mask) from the captured queries and keys where a model's fused attention never
materialises the pattern. The overview grid shades each head by a metric (the dropdown):

- `entropy`: the mean over query positions q of H(A[q, :]) = −Σ_k A[q, k] · log A[q, k], in nats
  (as the capture summaries: docs/methods.md#capture-summaries);
- `first_token`: the mean over query positions q of A[q, 0], the weight on the text's first token.

Every query position counts, the first included (it can only attend to itself: entropy 0, weight 1).
A click shows that head's pattern (`PatternView`: hovering a cell links its query and key tokens);
Shift-click masks the head (`HeadMask`) in the linked EditExplorer, which replays, or, without one, in
the viewer's own mask set (`.edits`). Masked heads are marked in the grid.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import ipywidgets as W
import numpy as np

from workbench.errors import WorkbenchError
from workbench.replay.edits import Edit, HeadMask, parse_edits
from workbench.widgets.live import LatestOnly
from workbench.widgets.text_capture import capture_text, text_input
from workbench.widgets.views import GridView, PatternView, float_bytes, message

METRICS = {
    "entropy": "mean attention entropy (nats)",
    "first_token": "mean attention to the first token",
}
PATTERN_BUDGET_BYTES = 256 * 2**20  # every pattern of the text kept in memory up to this; else on demand
ON_DEMAND_KEPT = 16  # patterns captured on demand (one head each) kept, least recently used out


@dataclass(frozen=True)
class AttentionSummary:
    """What an AttentionViewer shows (its `.result`).

    `entropy[layer][head]`: mean over query positions of the head's attention entropy (nats).
    `first_token[layer][head]`: mean over query positions of the attention weight on the first token.
    `metric`: which of the two shades the grid (`values` is that one). `focus`: the (layer, head) whose
    pattern is shown, or None. `tokens`: the text's tokens. `recomputed`: layers whose patterns were
    recomputed from queries and keys (fused attention).
    """

    metric: str
    entropy: list[list[float]]
    first_token: list[list[float]]
    focus: tuple[int, int] | None
    tokens: list[str]
    recomputed: list[int]

    @property
    def values(self) -> list[list[float]]:
        """The chosen metric, [layer][head]."""
        return self.entropy if self.metric == "entropy" else self.first_token

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"values": self.values}


@dataclass(frozen=True)
class _State:
    metric: str
    focus: tuple[int, int] | None


class AttentionViewer(W.VBox):
    """Layers × heads shaded by attention entropy or attention to the first token; click a head for its
    pattern, Shift-click to mask it (in a linked EditExplorer, or in `.edits`)."""

    def __init__(self, model, text: str | None = None, explorer=None, metric: str = "entropy") -> None:
        """`model`: a model handle (with `text`) or a `ReplaySession` (its first row). `explorer`: an
        EditExplorer on the same model whose head masks Shift-clicks toggle; its text is used when `text`
        is left out (a given text must be the same). `metric`: "entropy" or "first_token"."""
        if metric not in METRICS:
            raise WorkbenchError(f"Unknown metric {metric!r}; choose from {', '.join(METRICS)}.")
        source = text_input(model, text, explorer, "AttentionViewer")
        self.handle, self.explorer = source.handle, explorer
        self.ids, self.tokens = source.ids, source.tokens
        facts = self.handle.facts
        self.n_layers, self.n_heads = facts.n_layers, facts.n_heads
        self._masked: set[tuple[int, int]] = set()
        self._focus: tuple[int, int] | None = None
        self._result: AttentionSummary | None = None
        self._patterns: dict[int, np.ndarray] = {}  # layer -> [head, query, key], when within the budget
        self._on_demand: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._on_demand_lock = threading.Lock()
        self.entropy, self.first_token, self.recomputed = self._measure()

        self.metric = W.Dropdown(
            options=[(label, key) for key, label in METRICS.items()], value=metric, description="shade"
        )
        self.metric.observe(lambda _: self._submit(), names="value")
        self.grid = GridView(
            rows=[f"L{i}" for i in range(self.n_layers)],
            cols=[str(h) for h in range(self.n_heads)],
            title="layers × heads: click for the pattern, Shift-click to mask",
        )
        self.grid.on_click(self._clicked)
        self.pattern = PatternView(tokens=self.tokens, title="click a head to see its pattern")
        self.status = W.HTML(message(self._ready_text()))
        super().__init__([self.metric, self.status, W.HBox([self.grid, self.pattern])])
        self.add_class("wb-attention-viewer")
        self._linked = explorer is not None
        if explorer is not None:
            explorer.head_grid.observe(self._explorer_marks, names="marked")
        self._marks()
        self._runner = LatestOnly(self._compute, self._draw, self._fail, self._busy, name="attention-viewer")
        self._submit()

    # --- measuring ------------------------------------------------------------------------------------

    def _measure(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """One capture pass: per layer × head the mean entropy and mean first-token weight over queries;
        the patterns themselves are kept when they fit PATTERN_BUDGET_BYTES."""
        import torch

        from workbench.probes.attention import summarise
        from workbench.probes.capture import AttentionProbe

        n = int(self.ids.numel())
        keep = self.n_layers * self.n_heads * n * n * 4 <= PATTERN_BUDGET_BYTES
        probe = AttentionProbe(summaries_only=not keep)
        sink = capture_text(self.handle, self.ids, [probe])
        entropy = np.zeros((self.n_layers, self.n_heads), dtype=np.float64)
        first = np.zeros_like(entropy)
        for layer in range(self.n_layers):
            value = sink.values[probe.field_name(layer)].float()  # [query, head, key] or [query, head, 3]
            if keep:
                pattern = value.transpose(0, 1).contiguous()  # [head, query, key]
                self._patterns[layer] = pattern.numpy()
                stats = summarise(pattern[None])[0]  # [query, head, 3]
            else:
                stats = value
            means = stats.to(torch.float64).mean(0)  # [head, 3]
            entropy[layer], first[layer] = means[:, 0].numpy(), means[:, 1].numpy()
        return entropy, first, probe.recomputed

    def pattern_of(self, layer: int, head: int) -> np.ndarray:
        """The attention pattern [query, key] of one head on the text (float32)."""
        self._check_head(layer, head)
        if layer in self._patterns:
            return self._patterns[layer][head]
        key = (layer, head)
        with self._on_demand_lock:  # the worker and code in the notebook may both ask
            if key not in self._on_demand:
                from workbench.probes.capture import AttentionProbe

                probe = AttentionProbe(layers=[layer], heads=[head])
                sink = capture_text(self.handle, self.ids, [probe])
                self._on_demand[key] = sink.values[probe.field_name(layer)][:, 0].float().numpy()
                while len(self._on_demand) > ON_DEMAND_KEPT:
                    self._on_demand.popitem(last=False)
            self._on_demand.move_to_end(key)
            return self._on_demand[key]

    # --- focus and masks ------------------------------------------------------------------------------

    def _check_head(self, layer: int, head: int) -> None:
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise WorkbenchError(
                f"{self.handle.name} has layers 0..{self.n_layers - 1} and heads 0..{self.n_heads - 1}; "
                f"got layer {layer}, head {head}."
            )

    def _clicked(self, row: int, col: int, shift: bool) -> None:
        try:
            if shift:
                self.toggle_head(row, col)
            else:
                self.show_head(row, col)
        except WorkbenchError as exc:
            self._fail(exc)

    def show_head(self, layer: int, head: int) -> None:
        """Show one head's pattern (what a click on the grid does); `wait()` for it to be drawn."""
        self._check_head(layer, head)
        self._focus = (int(layer), int(head))
        self._submit()

    def toggle_head(self, layer: int, head: int) -> None:
        """Mask (or unmask) one head (what a Shift-click does): in the linked explorer, which replays, or
        in the viewer's own `.edits`."""
        self._check_head(layer, head)
        cell = (int(layer), int(head))
        if self.explorer is not None:
            self.explorer.toggle_head(*cell)  # the explorer's grid marks come back through its trait
            verb = "masked" if cell in self._heads() else "unmasked"
            self.status.value = message(f"head L{layer}.{head} {verb} in the edit explorer, which replays")
            return
        self._masked.symmetric_difference_update({cell})
        self._marks()
        verb = "masked" if cell in self._masked else "unmasked"
        self.status.value = message(
            f"head L{layer}.{head} {verb} here ({len(self._masked)} in .edits); link an EditExplorer "
            "(explorer=...) to replay the masks"
        )

    def _heads(self) -> set[tuple[int, int]]:
        if self.explorer is not None:
            return {(int(r), int(c)) for r, c in self.explorer.head_grid.marked}
        return set(self._masked)

    def _marks(self) -> None:
        self.grid.marked = [list(c) for c in sorted(self._heads())]

    def _explorer_marks(self, _change=None) -> None:
        self._marks()

    @property
    def edits(self) -> list[Edit]:
        """The masked heads as HeadMask edits, one per layer (the linked explorer's, when there is one)."""
        heads = sorted(self._heads())
        return [
            HeadMask(layer, tuple(h for lay, h in heads if lay == layer))
            for layer in sorted({lay for lay, _ in heads})
        ]

    @edits.setter
    def edits(self, value: Any) -> None:
        """Mask exactly these heads (HeadMask edits or their JSON); in the linked explorer, if any."""
        parsed = parse_edits([value] if isinstance(value, Edit | dict) else value)
        other = sorted({e.kind for e in parsed if not isinstance(e, HeadMask)})
        if other:
            raise WorkbenchError(f"The attention viewer masks heads only; give head_mask edits, not {other}.")
        wanted = {(e.layer, h) for e in parsed for h in e.heads}
        for layer, head in wanted:
            self._check_head(layer, head)
        if self.explorer is not None:
            for cell in sorted(wanted ^ self._heads()):
                self.explorer.toggle_head(*cell)
        else:
            self._masked = wanted
        self._marks()

    # --- drawing --------------------------------------------------------------------------------------

    def _submit(self) -> None:
        self._runner.submit(_State(self.metric.value, self._focus))

    def _compute(self, state: _State, cancelled) -> tuple[_State, np.ndarray | None]:
        return state, (self.pattern_of(*state.focus) if state.focus is not None else None)

    def _draw(self, computed: tuple[_State, np.ndarray | None]) -> None:
        state, pattern = computed
        values = self.entropy if state.metric == "entropy" else self.first_token
        result = AttentionSummary(
            metric=state.metric,
            entropy=self.entropy.tolist(),
            first_token=self.first_token.tolist(),
            focus=state.focus,
            tokens=list(self.tokens),
            recomputed=list(self.recomputed),
        )
        with self.grid.hold_sync():
            self.grid.values = float_bytes(values)
            self.grid.focus = list(state.focus) if state.focus is not None else []
            self.grid.title = (
                f"layers × heads, shade: {METRICS[state.metric]}; click: pattern, Shift-click: mask"
            )
        if state.focus is not None and pattern is not None:
            layer, head = state.focus
            with self.pattern.hold_sync():
                self.pattern.tokens = list(self.tokens)
                self.pattern.pattern = float_bytes(pattern)
                self.pattern.title = (
                    f"L{layer} head {head}: entropy {self.entropy[layer, head]:.3f} nats, "
                    f"first token {self.first_token[layer, head]:.3f} (rows: queries, columns: keys)"
                )
        self._result = result
        self.status.value = message(self._ready_text(state.focus))

    def _ready_text(self, focus: tuple[int, int] | None = None) -> str:
        text = f"{len(self.tokens)} tokens, {self.n_layers} layers × {self.n_heads} heads"
        if self.recomputed:
            text += "; patterns recomputed from queries and keys (fused attention)"
        if focus is not None:
            text += f"; showing L{focus[0]} head {focus[1]}"
        return text

    def _fail(self, exc: BaseException) -> None:
        text = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
        self.status.value = message(text, "error")

    def _busy(self, flag: bool) -> None:
        if flag and self._focus is not None and self._focus[0] not in self._patterns:
            self.status.value = message("capturing the pattern…", "busy")

    @property
    def result(self) -> AttentionSummary | None:
        """The metric per layer × head, the chosen metric and the focused head, as drawn (call `wait()`
        first to be sure it reflects the controls)."""
        return self._result

    @result.setter
    def result(self, value: AttentionSummary | dict) -> None:
        """Show a summary's metric and focused head (its numbers are this text's: they are measured)."""
        data = value.to_dict() if isinstance(value, AttentionSummary) else dict(value)
        tokens = data.get("tokens")
        if tokens is not None and list(tokens) != list(self.tokens):
            raise WorkbenchError("That attention summary is of another text; its tokens differ.")
        metric = data.get("metric", self.metric.value)
        if metric not in METRICS:
            raise WorkbenchError(f"Unknown metric {metric!r}; choose from {', '.join(METRICS)}.")
        focus = data.get("focus")
        if focus is not None:
            self._check_head(*focus)
        self._focus = tuple(int(x) for x in focus) if focus is not None else None
        self.metric.value = metric
        self._submit()
        self.wait()

    def wait(self, timeout: float = 120.0) -> AttentionSummary | None:
        """Block until the newest state is drawn; returns `.result`."""
        if not self._runner.wait(timeout):
            raise TimeoutError(f"the attention viewer did not finish within {timeout} s")
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
            self.explorer.head_grid.unobserve(self._explorer_marks, names="marked")
        super().close()
