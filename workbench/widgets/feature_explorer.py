"""The feature explorer: one transcoder's features with their top contexts and activation histograms, and
the effect on a text of ablating or scaling one of them, replayed live.

    from workbench.widgets import FeatureExplorer
    FeatureExplorer(handle, "def add(a, b):\\n    return a + b", transcoder="runs/tc-layer2")

Feature statistics (density, histogram, top contexts) are those of `workbench.transcoders.features`, on
context windows (by default 4096 held-out tokens of the shipped corpus). A feature edit is a transcoder
splice whose `features` field scales the chosen feature's activation (`TranscoderSplice(layer, path,
features=((f, 0.0),))` ablates f); it is replayed by a `ReplaySession` on a worker thread (`LatestOnly`).
`.result` is the `ReplayResult` of `.edits` (against the unedited model, as `ReplaySession.apply` gives
it); `.versus_splice` compares the same edited run with the plain splice (same transcoder, no feature
edit), which isolates what the feature itself does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import torch

from workbench.corpus import TokenWindows
from workbench.errors import WorkbenchError
from workbench.replay.edits import Edit, TranscoderSplice, dump_edits, parse_edits
from workbench.replay.effects import kl_per_token, versus
from workbench.replay.plan import checked_transcoder
from workbench.replay.session import ReplayResult
from workbench.transcoders.data import mlp_pairs_of
from workbench.transcoders.features import FeatureTable, contexts, feature_table
from workbench.transcoders.model import Transcoder
from workbench.widgets import charts
from workbench.widgets.edit_explorer import session_of
from workbench.widgets.feature_data import context_windows, transcoder_of
from workbench.widgets.feature_views import comparison_html, histogram_chart
from workbench.widgets.live import LatestOnly
from workbench.widgets.views import TokenView, message

TOP_CONTEXTS = 5  # top-activating contexts shown per feature
BEFORE, AFTER = 12, 3  # tokens shown before and after each top activation
EFFECT_LIMIT = 256  # at most this many features are ablated one by one to sort by effect
SORTS = (
    ("density (context windows)", "density"),
    ("effect: ablation KL vs plain splice, on the text", "effect"),
    ("feature index", "index"),
)
ACTIONS = ("none", "ablate", "scale")
REFERENCES = (("vs plain splice", "splice"), ("vs unedited model", "base"))


@dataclass(frozen=True)
class _State:
    feature: int
    edits: tuple[Edit, ...]
    sort: str


@dataclass
class _Drawn:
    state: _State
    order: list[int]
    contexts: list[dict]
    result: ReplayResult
    splice: ReplayResult
    versus: dict


class FeatureExplorer(W.VBox):
    """A transcoder's features sorted by density or by effect; each with its top contexts and activation
    histogram; ablate or scale it and see the effect on the text against the plain splice and the
    unedited model."""

    def __init__(
        self,
        model,
        text: str | None = None,
        *,
        transcoder: str | Path | Transcoder,
        contexts: TokenWindows | str | list[str] | None = None,
        layer: int | None = None,
        n_contexts: int = TOP_CONTEXTS,
        backend: str | None = None,
    ) -> None:
        """`model`: a model handle (with `text`) or a `ReplaySession`. `transcoder`: a transcoder run folder
        (or SAE-Lens folder) or a `Transcoder`. `contexts`: where feature statistics and top contexts
        come from: token windows, a corpus name (NAME[:SPLIT]) or a list of texts; by default
        4096 held-out tokens of the shipped corpus. `layer`: the layer to splice at (default: the
        transcoder's own; another one is refused in the widget)."""
        self.session = session_of(model, text, backend)
        self.handle = self.session.handle
        self.transcoder: Transcoder | None = None
        self.path: str | None = None  # the folder the splice edit names
        self.layer: int | None = None
        self.table: FeatureTable | None = None  # statistics of every feature on the context windows
        self.windows: TokenWindows | None = None
        self._load_error: str | None = None
        self._quiet = False
        self._result: ReplayResult | None = None
        self._drawn: _Drawn | None = None
        self._order: list[int] = []
        self._contexts: dict[int, list[dict]] = {}
        self._splices: dict[str, tuple[ReplayResult, torch.Tensor]] = {}  # plain splice, by its edits
        self._effects: dict[int, float] = {}  # feature -> KL(plain splice ‖ feature ablated) on the text
        self._effect_candidates: list[int] = []
        self._pinned: dict[int, float] = {}  # further feature scales set from code (no control shows)
        self._extra: list[Edit] = []  # other edits set from code, replayed with the splice
        self._n_contexts = n_contexts

        self.sort = W.Dropdown(options=SORTS, value="density", description="sort by")
        self.rank = W.IntSlider(value=0, min=0, max=0, description="rank", continuous_update=False)
        self.feature = W.IntText(value=0, description="feature")
        self.action = W.ToggleButtons(options=ACTIONS, value="none", description="edit")
        self.scale = W.FloatSlider(
            value=2.0, min=-4.0, max=8.0, step=0.1, description="scale", continuous_update=False
        )
        self.reference = W.ToggleButtons(options=REFERENCES, value="splice", description="Δ loss")
        self.status = W.HTML(message("loading the transcoder…", "busy"))
        self.info = W.HTML()
        self.histogram = W.HTML()
        self.contexts_view = TokenView(
            diverging=False, label="activation", caption="top contexts on the context windows"
        )
        self.text_view = TokenView(diverging=False, label="activation", caption="the feature on the text")
        self.metrics = W.HTML()
        self.effect_view = TokenView(label="Δ loss (nats)", caption="")
        self.edits_json = W.Textarea(layout=W.Layout(width="100%", height="70px"))
        self.edits_json.disabled = True
        super().__init__(
            [
                W.HBox([self.sort, self.rank, self.feature]),
                W.HBox([self.action, self.scale]),
                self.status,
                self.info,
                W.HBox([self.contexts_view, self.histogram]),
                self.text_view,
                self.metrics,
                self.reference,
                self.effect_view,
                W.Accordion(children=[self.edits_json], titles=["edits (JSON)"]),
            ]
        )
        self.add_class("wb-feature-explorer")
        self._runner = LatestOnly(self._compute, self._draw, self._fail, self._busy, name="feature-explorer")
        try:
            self._load(transcoder, contexts, layer)
        except WorkbenchError as exc:
            self._refuse(str(exc))
            return
        except Exception as exc:  # shown in the widget, never a traceback
            self._refuse(f"{type(exc).__name__}: {exc}")
            return
        for control in (self.sort, self.action, self.scale):
            control.observe(self._changed, names="value")
        self.feature.observe(self._feature_changed, names="value")
        self.rank.observe(self._rank_changed, names="value")
        self.reference.observe(lambda _: self._show_effect(), names="value")
        self._changed()

    # --- loading --------------------------------------------------------------------------------------

    def _load(self, transcoder, contexts_arg, layer: int | None) -> None:
        handle = self.handle
        facts = handle.facts
        if facts.moe:
            raise WorkbenchError(f"{facts.name} routes its MLPs to experts; transcoders need a dense MLP.")
        tc, path = transcoder_of(transcoder)
        layer = tc.cfg.layer if layer is None else layer
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < facts.n_layers:
            raise WorkbenchError(f"layer must be one of 0..{facts.n_layers - 1}, got {layer!r}")
        tc = checked_transcoder(tc, TranscoderSplice(layer, path), facts.d_model, handle.device)
        self.status.value = message("measuring the features on the context windows…", "busy")
        windows = context_windows(handle, contexts_arg)
        table = feature_table(
            handle, tc, windows, top_n=self._n_contexts, histograms=tc.width, progress=False
        )
        with torch.inference_mode():
            x, _ = mlp_pairs_of(handle, layer, self.session.engine.tokens[:1])
            text_z = tc.features(x).float().cpu()  # [T, width]: every feature on the text
        self.transcoder, self.path, self.layer, self.windows, self.table = tc, path, layer, windows, table
        self._text_z = text_z
        totals = text_z.sum(0)
        active = [int(i) for i in torch.argsort(-totals).tolist() if totals[i] > 0]
        self._effect_candidates = active[:EFFECT_LIMIT]
        self._n_active = len(active)
        self._order = self._sorted("density")
        self._quiet = True
        try:
            self.rank.max = tc.width - 1
            self.feature.value = self._order[0]
        finally:
            self._quiet = False

    def _refuse(self, text: str) -> None:
        self._load_error = text
        self.status.value = message(text, "error")
        for control in (self.sort, self.rank, self.feature, self.action, self.scale, self.reference):
            control.disabled = True

    # --- order ----------------------------------------------------------------------------------------

    def _sorted(self, how: str) -> list[int]:
        """Feature indices in the chosen order (ties by index): densest first; largest measured ablation
        effect first, then the features not measured by their activation on the text, then the features
        silent on the text (their ablation changes nothing); or by index."""
        width = self.transcoder.width
        if how == "index":
            return list(range(width))
        density = np.asarray(self.table.density)
        if how == "density":
            return np.lexsort((np.arange(width), -density)).tolist()
        effect = np.full(width, -1.0)
        for feature, value in self._effects.items():
            effect[feature] = value
        on_text = self._text_z.sum(0).numpy()
        return np.lexsort((np.arange(width), -density, -on_text, -effect)).tolist()

    def _measure_effects(self, cancelled) -> None:
        """Ablate each candidate feature in turn (those active on the text, most active first) and record
        KL(plain splice ‖ ablated); resumes where an abandoned pass stopped."""
        _, splice_lp = self._plain_splice(cancelled)
        engine = self.session.engine
        todo = [f for f in self._effect_candidates if f not in self._effects]
        for n, feature in enumerate(todo):
            self.status.value = message(
                f"ablating the features active on the text, one by one ({n + 1}/{len(todo)})…", "busy"
            )
            plan = engine.compile([*self._extra, self._splice({feature: 0.0})])
            logits = engine.replay(plan, cancelled).trace.logits.float()
            self._effects[feature] = float(kl_per_token(splice_lp, torch.log_softmax(logits, -1)).mean())

    # --- edits <-> controls ---------------------------------------------------------------------------

    def _splice(self, scales: dict[int, float] | None = None) -> TranscoderSplice:
        features = tuple(sorted(scales.items())) if scales else None
        return TranscoderSplice(self.layer, self.path, features)

    def _check_feature(self, feature: int) -> None:
        width = self.transcoder.width
        if not 0 <= feature < width:
            raise WorkbenchError(
                f"feature {feature} does not exist: the transcoder has features 0..{width - 1}"
            )

    @property
    def edits(self) -> list[Edit]:
        """The splice with the chosen feature's scale (none, 0 to ablate, or the slider's value), plus
        edits set from code that no control shows. Empty when the transcoder was refused."""
        if self.transcoder is None:
            return []
        feature = self.feature.value
        self._check_feature(feature)
        scales = dict(self._pinned)
        if self.action.value == "ablate":
            scales[feature] = 0.0
        elif self.action.value == "scale":
            scales[feature] = round(float(self.scale.value), 6)
        return [*self._extra, self._splice(scales)]

    @edits.setter
    def edits(self, value: Any) -> None:
        """Set the controls from an edit list (objects or JSON) holding one splice of this transcoder at
        its layer; other edits are replayed with it. A refused list is shown in the widget."""
        try:
            self._set_edits(value)
        except WorkbenchError as exc:
            self._fail(exc)
            return
        self._changed()

    def _set_edits(self, value: Any) -> None:
        if self.transcoder is None:
            raise WorkbenchError(self._load_error or "no transcoder is loaded")
        parsed = parse_edits([value] if isinstance(value, Edit | dict) else value)
        splices = [e for e in parsed if isinstance(e, TranscoderSplice)]
        if len(splices) != 1:
            raise WorkbenchError(
                f"the feature explorer edits one transcoder splice (layer {self.layer}); got {len(splices)}"
            )
        splice = splices[0]
        if splice.layer != self.layer:
            raise WorkbenchError(
                f"this explorer's transcoder splices layer {self.layer}, not layer {splice.layer}; "
                "open another explorer for that layer's transcoder"
            )
        if Path(splice.path).expanduser().resolve() != Path(self.path).expanduser().resolve():
            raise WorkbenchError(
                f"the splice names {splice.path}, another transcoder than this explorer's ({self.path})"
            )
        scales = dict(splice.features or ())
        for feature in scales:
            self._check_feature(feature)
        self._quiet = True
        try:
            self._extra = [e for e in parsed if e is not splice]
            if not scales:
                self._pinned = {}
                self.action.value = "none"
                return
            feature = self.feature.value if self.feature.value in scales else min(scales)
            value = scales.pop(feature)
            self._pinned = scales
            self.feature.value = feature
            self._place_rank()
            if value == 0.0:
                self.action.value = "ablate"
            else:
                self.scale.min, self.scale.max = min(self.scale.min, value), max(self.scale.max, value)
                self.scale.value = value
                self.action.value = "scale"
        finally:
            self._quiet = False

    def select(self, feature: int) -> None:
        """Show feature `feature` (its edit follows the edit buttons)."""
        self.feature.value = int(feature)

    def _place_rank(self) -> None:
        """Move the rank slider to the chosen feature's place in the current order (no update)."""
        feature = self.feature.value
        if 0 <= feature < len(self._order):
            quiet, self._quiet = self._quiet, True
            try:
                self.rank.value = self._order.index(feature)
            finally:
                self._quiet = quiet

    def _rank_changed(self, _change=None) -> None:
        if self._quiet or not self._order:
            return
        self.feature.value = self._order[self.rank.value]

    def _feature_changed(self, _change=None) -> None:
        if self._quiet:
            return
        self._place_rank()
        self._changed()

    # --- live updates ---------------------------------------------------------------------------------

    def _changed(self, _change=None) -> None:
        if self._quiet:
            return
        if self._load_error is not None:
            self.status.value = message(self._load_error, "error")
            return
        try:
            edits = tuple(self.edits)
        except WorkbenchError as exc:
            self._fail(exc)
            return
        self.edits_json.value = json.dumps(dump_edits(list(edits)), indent=1)
        self._runner.submit(_State(self.feature.value, edits, self.sort.value))

    def _plain_splice(self, cancelled) -> tuple[ReplayResult, torch.Tensor]:
        """The plain splice (no feature edit, same other edits): its result and log-probabilities."""
        edits = [*self._extra, self._splice()]
        key = json.dumps(dump_edits(edits))
        if key not in self._splices:
            result = self.session.apply(edits, cancelled=cancelled)
            _, plan = self.session.plan(edits)
            logits = self.session.engine.replay(plan, cancelled).trace.logits.float()
            if len(self._splices) >= 4:
                self._splices.pop(next(iter(self._splices)))
            self._splices[key] = (result, torch.log_softmax(logits, -1))
        return self._splices[key]

    def _compute(self, state: _State, cancelled) -> _Drawn:
        if state.sort == "effect":
            self._measure_effects(cancelled)
        order = self._sorted(state.sort)
        if state.feature not in self._contexts:
            self._contexts[state.feature] = contexts(
                self.handle,
                self.transcoder,
                self.windows,
                self.table,
                state.feature,
                n=self._n_contexts,
                before=BEFORE,
                after=AFTER,
            )
        splice, splice_lp = self._plain_splice(cancelled)
        edits = list(state.edits)
        result = self.session.apply(edits, cancelled=cancelled)
        if result.edits == splice.edits:
            edited_lp = splice_lp
        else:
            _, plan = self.session.plan(edits)
            logits = self.session.engine.replay(plan, cancelled).trace.logits.float()
            edited_lp = torch.log_softmax(logits, -1)
        compared = versus(splice_lp, edited_lp, self.session.engine.tokens)
        return _Drawn(state, order, self._contexts[state.feature], result, splice, compared)

    def _draw(self, drawn: _Drawn) -> None:
        self._drawn = drawn
        self._result = drawn.result
        self._order = drawn.order
        self._place_rank()
        feature = drawn.state.feature
        self._show_feature(feature, drawn.contexts)
        self.metrics.value = comparison_html(drawn.result, drawn.versus)
        self._show_effect()
        self.status.value = message(self._describe(drawn))

    def _describe(self, drawn: _Drawn) -> str:
        scales = dict(next(e for e in drawn.state.edits if isinstance(e, TranscoderSplice)).features or ())
        what = (
            ", ".join(f"feature {f} × {s:g}" + (" (ablated)" if s == 0 else "") for f, s in scales.items())
            or "no feature edited (the plain splice)"
        )
        first = drawn.result.first_layer
        text = f"layer {self.layer} transcoder spliced; {what}; replayed from layer {first}"
        if drawn.state.sort == "effect":
            text += (
                f"; effect measured for {len(self._effect_candidates)} of the {self._n_active} features "
                "active on the text (the others change nothing)"
                if len(self._effect_candidates) == self._n_active
                else f"; effect measured for the {len(self._effect_candidates)} most active of the "
                f"{self._n_active} features active on the text"
            )
        return text

    def _show_feature(self, feature: int, items: list[dict]) -> None:
        table = self.table
        peak = table.max_activation[feature]
        on_text = self._text_z[:, feature]
        effect = self._effects.get(feature)
        effect_text = f" · ablation KL vs plain splice {effect:.4f}" if effect is not None else ""
        self.info.value = (
            f"<b>feature {feature}</b> (rank {self._order.index(feature) + 1} of {len(self._order)}) · "
            f"density {table.density[feature]:.3%} of {table.tokens} context tokens · mean when firing "
            f"{table.mean_activation[feature]:.3f} · max {peak:.3f} · on the text: fires on "
            f"{int((on_text > 0).sum())} of {len(on_text)} tokens, max {float(on_text.max()):.3f}"
            f"{effect_text}"
        )
        lines = [[f"{item['activation']:.2f} │ "] + [t["text"] for t in item["tokens"]] for item in items]
        values = [v for item in items for v in [None] + [t["activation"] for t in item["tokens"]]]
        scale = max(peak, float(on_text.max())) or 1.0
        self.contexts_view.caption = (
            f"feature {feature}: its {len(items)} largest activations on the context windows"
            if items
            else f"feature {feature} never fires on the context windows"
        )
        self.contexts_view.show(lines, values, scale=scale)
        tokens = [self.session.token_text(t) for t in self.session.engine.tokens[0].tolist()]
        self.text_view.caption = f"feature {feature}'s activation on the text"
        self.text_view.show([tokens], on_text.tolist(), scale=scale)
        chart = histogram_chart(table, feature)
        self.histogram.value = (
            charts.svg(chart) if chart is not None else message(f"feature {feature} never fires there")
        )

    def _show_effect(self) -> None:
        drawn = self._drawn
        if drawn is None:
            return
        tokens = [t["token"] for t in drawn.result.per_token]
        if self.reference.value == "splice":
            values = drawn.versus["per_token_ce_delta"]
            caption = "next-token loss change vs the plain splice (same transcoder, no feature edit)"
        else:
            values = [t["ce_delta"] for t in drawn.result.per_token]
            caption = "next-token loss change vs the unedited model (splice and feature edit together)"
        self.effect_view.caption = caption + "; red: worse"
        self.effect_view.show([tokens], values)

    def _fail(self, exc: BaseException) -> None:
        self._result = None
        text = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
        self.status.value = message(text, "error")

    def _busy(self, flag: bool) -> None:
        if flag:
            self.status.value = message("replaying…", "busy")

    # --- reading the state ----------------------------------------------------------------------------

    @property
    def result(self) -> ReplayResult | None:
        """The newest drawn result of `.edits` against the unedited model (`ReplaySession.apply`'s); None
        while the current state is refused (`.error` says why)."""
        return self._result

    @result.setter
    def result(self, value: ReplayResult) -> None:
        """Show a result (e.g. read from a run folder) and set the controls to its edits."""
        self.edits = value.edits
        self.wait()
        if self.error is None:
            self._result = value
            if self._drawn is not None:
                self.metrics.value = comparison_html(value, self._drawn.versus)

    @property
    def splice_result(self) -> ReplayResult | None:
        """The plain splice's result against the unedited model (the reference of `.versus_splice`)."""
        return self._drawn.splice if self._drawn is not None and self._result is not None else None

    @property
    def versus_splice(self) -> dict | None:
        """The edited run against the plain splice: ce_reference (the splice's CE), ce_edited, ce_delta, kl
        (KL(splice ‖ edited)), top1_agreement and per_token_ce_delta."""
        return self._drawn.versus if self._drawn is not None and self._result is not None else None

    @property
    def order(self) -> list[int]:
        """Feature indices in the order the rank slider walks (the drawn sort)."""
        return list(self._order)

    @property
    def effects(self) -> dict[int, float]:
        """KL(plain splice ‖ feature ablated) on the text, for the features measured so far."""
        return dict(self._effects)

    def wait(self, timeout: float = 120.0) -> ReplayResult | None:
        """Block until the newest control state is drawn; returns `.result`."""
        if not self._runner.wait(timeout):
            raise TimeoutError(f"the feature explorer did not finish within {timeout} s")
        return self._result

    @property
    def error(self) -> str | None:
        """The message shown in the widget, if it shows an error."""
        return self.status.value if "wb-error" in self.status.value else None

    def close(self) -> None:
        self._runner.close()
        super().close()
