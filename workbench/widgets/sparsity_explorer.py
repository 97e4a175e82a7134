"""The sparsity explorer: activation density of a text (or token windows) by layer and by domain, under a
chosen definition, redrawn live as the definition's parameter moves.

    from workbench.widgets import SparsityExplorer
    SparsityExplorer(handle, "def add(a, b):\\n    return a + b", definition="magnitude@0.5")

The MLP activations of the text are captured once (a, and whether the pre-activation is > 0, for every
layer); each control move folds them again through the project's `DensityReducer` under the new
definition, so nothing runs through the model. `magnitude@P` and `cett@R` need per-layer thresholds:
they are calibrated as `run_sparsity` calibrates them (`thresholds.calibrate` on calibration windows of
the calibration source, seed + 1), once per parameter value, and kept. `.result` is a `SparsityResult`
with the definition and settings recorded, as `run_sparsity(handle, windows, settings)` gives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ipywidgets as W
import torch

from workbench.calibration import CalibrationSource, source_of
from workbench.corpus import TokenWindows
from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.neurons import neuron_hooks, output_weights
from workbench.replay.edits import Edit, Threshold, TopK, parse_edits
from workbench.replay.session import ReplaySession
from workbench.sparsity.definitions import Definition, default_definition
from workbench.sparsity.density import DensityReducer
from workbench.sparsity.result import SparsityResult
from workbench.sparsity.run import SparsitySettings, input_density, sparsity_result
from workbench.sparsity.thresholds import calibrate, sparsity_calibration
from workbench.widgets import charts
from workbench.widgets.live import LatestOnly
from workbench.widgets.sparsity_data import ActivationCache, magnitudes, thresholds_of, windows_of
from workbench.widgets.sparsity_views import by_layer_chart, firing_chart, summary_html
from workbench.widgets.views import TokenView, message

MAX_CACHE_BYTES = 256 * 2**20  # the captured activations kept for live updates (float32 a + bool pre > 0)
SHOWN_TOKENS = 512  # tokens of the first window shaded by their density
KINDS = (
    ("exact_zero: a ≠ 0", "exact_zero"),
    ("positive: pre-activation > 0", "positive"),
    ("magnitude@P: |a| > t_l (P-quantile of calibration |a|)", "magnitude"),
    ("cett@R: |a_i|·‖W_out[i]‖ ≥ ε_l (output share R)", "cett"),
    ("topk@K: among the K largest |a| of the token", "topk"),
)
DEFAULT_P, DEFAULT_R = 0.5, 0.2


@dataclass
class _Drawn:
    definition: str
    result: SparsityResult
    per_token: dict[int, list[float]]  # layer -> density of each shown token


class SparsityExplorer(W.VBox):
    """Density by layer and by domain under a chosen definition, the neuron firing-frequency histogram
    and each token's density, redrawn live from activations captured once."""

    def __init__(
        self,
        model,
        text_or_windows: str | TokenWindows | ReplaySession | None = None,
        definition: str | None = None,
        *,
        settings: SparsitySettings | None = None,
        calibration: CalibrationSource | TokenWindows | None = None,
    ) -> None:
        """`model`: a model handle, or a `ReplaySession` (its text is measured). `text_or_windows`: a
        text, token windows (with their domains) or a ReplaySession. `definition`: exact_zero, positive,
        magnitude@P, cett@R or topk@K (default: as `run_sparsity`, exact_zero for ReLU models, positive
        otherwise). `settings`: the rest of `SparsitySettings` (calibration tokens, seed, batch size,
        dense threshold). `calibration`: the thresholds' calibration windows or source (default: the
        train split of the measured corpus, pydocs:train for a text)."""
        if isinstance(model, ReplaySession):
            text_or_windows = model if text_or_windows is None else text_or_windows
            model = model.handle
        self.handle: ModelHandle = model
        facts = model.facts
        self.settings = (settings or SparsitySettings()).replace(definition=None, inputs=("heldout",))
        self._calibration_arg = calibration
        self._calibration: TokenWindows | None = (
            calibration if isinstance(calibration, TokenWindows) else None
        )
        self._thresholds: dict[str, dict[int, float]] = {}  # definition name -> per-layer thresholds
        self._w_norms: dict[int, torch.Tensor] | None = None
        self._calibration_cache: dict[int, torch.Tensor] | None = None  # calibration a, per layer
        self._sorted_magnitudes: dict[int, torch.Tensor] | None = None
        self._result: SparsityResult | None = None
        self._drawn: _Drawn | None = None
        self._quiet = False
        self._load_error: str | None = None
        self.windows: TokenWindows | None = None
        self.cache: ActivationCache | None = None
        d_mlp = facts.d_mlp
        self.kind = W.Dropdown(options=KINDS, value="exact_zero", description="definition")
        self.p = W.FloatSlider(
            value=DEFAULT_P, min=0.01, max=0.99, step=0.01, description="P", continuous_update=False
        )
        self.r = W.FloatSlider(
            value=DEFAULT_R, min=0.01, max=0.99, step=0.01, description="R", continuous_update=False
        )
        self.k = W.IntSlider(value=max(1, d_mlp // 8), min=1, max=d_mlp, description="K")
        self.layer = W.IntSlider(
            value=facts.n_layers // 2, min=0, max=max(0, facts.n_layers - 1), description="layer"
        )
        self.status = W.HTML(message("capturing the activations…", "busy"))
        self.summary = W.HTML()
        self.by_layer_chart = W.HTML()
        self.firing_chart = W.HTML()
        self.table = W.HTML()
        self.tokens = TokenView(diverging=False, label="density", caption="")
        super().__init__(
            [
                W.HBox([self.kind, self.p, self.r, self.k]),
                self.status,
                self.summary,
                W.HBox([self.by_layer_chart, self.firing_chart]),
                self.layer,
                self.tokens,
                W.Accordion(children=[self.table], titles=["per-layer statistics"]),
            ]
        )
        self.add_class("wb-sparsity-explorer")
        self._runner = LatestOnly(self._compute, self._draw, self._fail, self._busy, name="sparsity-explorer")
        try:
            self._capture(text_or_windows)
            spec = Definition.parse(definition or default_definition(model))
        except WorkbenchError as exc:
            self._refuse(str(exc))
            return
        except Exception as exc:  # shown in the widget, never a traceback
            self._refuse(f"{type(exc).__name__}: {exc}")
            return
        self._set_controls(spec)
        self._show_parameter()
        for control in (self.kind, self.p, self.r, self.k):
            control.observe(self._changed, names="value")
        self.layer.observe(lambda _: self._show_layer(), names="value")
        self._changed()

    # --- capture --------------------------------------------------------------------------------------

    def _capture(self, source) -> None:
        from workbench.probes.capture import ActivationProbe, ReducerSink, capture

        if source is None:
            raise WorkbenchError("Give the text to measure: SparsityExplorer(handle, 'some text').")
        facts = self.handle.facts
        hooks = neuron_hooks(self.handle)  # refuses mixture-of-experts models
        windows = windows_of(self.handle, source)
        size = windows.n_tokens * facts.d_mlp * facts.n_layers * 5
        if size > MAX_CACHE_BYTES:
            most = MAX_CACHE_BYTES // (facts.d_mlp * facts.n_layers * 5)
            raise WorkbenchError(
                f"{windows.n_tokens} tokens of {facts.name}'s activations take {size / 2**20:.0f} MiB, more "
                f"than the {MAX_CACHE_BYTES // 2**20} MiB the explorer keeps; give at most {most} tokens "
                "(windows.select(n_tokens)), or run `workbench sparsity` for large samples."
            )
        cache = ActivationCache(hooks)
        names = [h.post for h in hooks] + [h.pre for h in hooks]
        capture(
            self.handle,
            windows,
            [ActivationProbe(names)],
            ReducerSink([cache]),
            batch_size=self.settings.batch_size,
            progress=False,
        )
        cache.finish()
        self.windows, self.cache = windows, cache
        shown = windows.tokens[0, :SHOWN_TOKENS].tolist()
        decode = self.handle.tokenizer.decode
        self._shown_tokens = [decode([t]) for t in shown]

    def _refuse(self, text: str) -> None:
        self._load_error = text
        self.status.value = message(text, "error")
        for control in (self.kind, self.p, self.r, self.k, self.layer):
            control.disabled = True

    # --- definition <-> controls ----------------------------------------------------------------------

    @property
    def definition(self) -> str:
        """The definition the controls describe, by name (e.g. `magnitude@0.5`)."""
        kind = self.kind.value
        if kind == "magnitude":
            return f"magnitude@{_number(self.p.value)}"
        if kind == "cett":
            return f"cett@{_number(self.r.value)}"
        if kind == "topk":
            return f"topk@{int(self.k.value)}"
        return kind

    @definition.setter
    def definition(self, value: str) -> None:
        """Set the controls to a definition by name; a name the project does not define is shown as an
        error in the widget."""
        try:
            spec = Definition.parse(str(value))
        except WorkbenchError as exc:
            self._fail(exc)
            return
        self._set_controls(spec)
        self._show_parameter()
        self._changed()

    def _set_controls(self, spec: Definition) -> None:
        self._quiet = True
        try:
            self.kind.value = spec.kind
            if spec.kind in ("magnitude", "cett"):
                slider = self.p if spec.kind == "magnitude" else self.r
                slider.min, slider.max = min(slider.min, spec.param), max(slider.max, spec.param)
                slider.value = spec.param
            elif spec.kind == "topk":
                self.k.max = max(self.k.max, int(spec.param))
                self.k.min = min(self.k.min, int(spec.param))
                self.k.value = int(spec.param)
        finally:
            self._quiet = False

    def _show_parameter(self) -> None:
        for kind, slider in (("magnitude", self.p), ("cett", self.r), ("topk", self.k)):
            slider.layout.display = None if self.kind.value == kind else "none"

    @property
    def edits(self) -> list[Edit]:
        """The replay edits that keep only the neurons this definition counts as active, where an edit kind
        says the same: `topk@K` is TopK(l, K) on every layer; `magnitude@P` is Threshold(l, t_l) on every
        layer with its calibrated t_l (the drawn ones; an activation exactly at t_l is kept by the edit,
        inactive by the definition). exact_zero needs no edit (inactive neurons are 0 already); positive
        and cett@R have no edit kind: empty."""
        spec = Definition.parse(self.definition)
        layers = range(self.handle.facts.n_layers)
        if spec.kind == "topk":
            return [TopK(layer, int(spec.param)) for layer in layers]
        if spec.kind == "magnitude":
            thresholds = self._thresholds.get(spec.name)
            if thresholds is None:
                raise WorkbenchError(f"{spec.name}'s thresholds are not calibrated yet; call wait() first")
            return [Threshold(layer, thresholds[layer]) for layer in layers]
        return []

    @edits.setter
    def edits(self, value: Any) -> None:
        """Set the definition from edits: TopK with one k on every layer gives topk@k; Threshold edits equal
        to a calibrated magnitude@P's thresholds give that P; no edits give the default definition."""
        try:
            self.definition = self._definition_of(parse_edits([value] if isinstance(value, Edit) else value))
        except WorkbenchError as exc:
            self._fail(exc)

    def _definition_of(self, edits: list[Edit]) -> str:
        n = self.handle.facts.n_layers
        if not edits:
            return default_definition(self.handle)
        if all(isinstance(e, TopK) for e in edits):
            ks = {e.k for e in edits}
            if len(ks) == 1 and sorted(e.layer for e in edits) == list(range(n)):
                return f"topk@{ks.pop()}"
        if all(isinstance(e, Threshold) for e in edits) and sorted(e.layer for e in edits) == list(range(n)):
            taus = {e.layer: e.tau for e in edits}
            names = sorted(self._thresholds, key=lambda name: name != self.definition)  # the current first
            for name in names:
                thresholds = self._thresholds[name]
                if name.startswith("magnitude@") and all(taus[i] == thresholds[i] for i in range(n)):
                    return name
        raise WorkbenchError(
            "These edits match no sparsity definition: give TopK with one k on every layer, or the "
            "Threshold edits of a calibrated magnitude@P (explorer.edits), or no edits."
        )

    # --- live updates ---------------------------------------------------------------------------------

    def _changed(self, _change=None) -> None:
        if self._quiet:
            return
        self._show_parameter()
        if self._load_error is not None:
            self.status.value = message(self._load_error, "error")
            return
        self._runner.submit(self.definition)

    def _calibration_windows(self, purpose: str) -> TokenWindows:
        """As `run_sparsity`: given windows, or `calibration_tokens` of the source (default: the train split
        of the measured windows' corpus) in windows of the measured context, drawn with seed + 1."""
        if self._calibration is None:
            source = self._calibration_arg
            if not isinstance(source, CalibrationSource):
                source = source_of(self.windows, purpose)
            self._calibration = sparsity_calibration(
                self.handle,
                source,
                self.windows.context,
                self.settings.calibration_tokens,
                self.settings.seed,
            )
        return self._calibration

    def thresholds(self, definition: str) -> dict[int, float]:
        """Per-layer thresholds of `magnitude@P` or `cett@R` (calibrated on first use, then kept); {} for
        the other definitions."""
        spec = Definition.parse(definition)
        if not spec.needs_calibration:
            return {}
        if spec.name not in self._thresholds:
            windows = self._calibration_windows(f"{spec.name}'s thresholds")
            values = self._calibration_values(windows)
            if values is None:  # too many to keep: calibrate as run_sparsity does, capture included
                self._thresholds[spec.name] = calibrate(
                    spec, self.handle, self.cache.hooks, windows, self.settings.batch_size
                )
            else:
                if spec.kind == "magnitude":
                    values = self._magnitudes(values)
                self._thresholds[spec.name] = thresholds_of(spec, self.handle, self.cache.hooks, values)
        return self._thresholds[spec.name]

    def _magnitudes(self, values: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Per layer, the calibration |a| that `magnitude@p` takes quantiles of, sorted once (the
        quantile is the same, and sorted input makes each new p about three times quicker)."""
        if self._sorted_magnitudes is None:
            self._sorted_magnitudes = {layer: magnitudes(a).sort().values for layer, a in values.items()}
        return self._sorted_magnitudes

    def _calibration_values(self, windows: TokenWindows) -> dict[int, torch.Tensor] | None:
        """The calibration windows' activations a per layer, captured once and kept when they fit in
        MAX_CACHE_BYTES (else None), so that a new P or R costs no forward pass."""
        from workbench.probes.capture import ActivationProbe, MemorySink, capture

        facts = self.handle.facts
        if windows.n_tokens * facts.d_mlp * facts.n_layers * 8 > MAX_CACHE_BYTES:  # a and sorted |a|
            return None
        if self._calibration_cache is None:
            hooks = self.cache.hooks
            sink = capture(
                self.handle,
                windows,
                [ActivationProbe([h.post for h in hooks])],
                MemorySink(),
                batch_size=self.settings.batch_size,
                progress=False,
            )
            self._calibration_cache = {h.layer: sink.values[h.post].float() for h in hooks}
        return self._calibration_cache

    def _reducer(self, spec: Definition) -> DensityReducer:
        """The project's reducer under `spec`, fed the cached activations."""
        hooks = self.cache.hooks
        w_norms = {}
        if spec.kind == "cett":
            if self._w_norms is None:
                self._w_norms = {
                    h.layer: output_weights(self.handle, h.layer).float().norm(dim=-1).cpu() for h in hooks
                }
            w_norms = self._w_norms
        reducer = DensityReducer(
            hooks,
            spec,
            self.handle.facts.d_mlp,
            len(self.windows.domains),
            self.thresholds(spec.name),
            w_norms,
        )
        for values, meta in self.cache.chunks():
            reducer.update(values, meta)
        return reducer

    def _compute(self, definition: str, cancelled) -> _Drawn:
        spec = Definition.parse(definition)
        if spec.needs_calibration and spec.name not in self._thresholds:
            self.status.value = message(
                f"calibrating {spec.name}'s thresholds on {self.settings.calibration_tokens} tokens…", "busy"
            )
        reducer = self._reducer(spec)
        result = self._result_of(spec, reducer)
        n = len(self._shown_tokens)
        per_token = {}
        for h in self.cache.hooks:
            active = spec.active(
                self.cache.post[h.layer][:n],
                self.cache.pre_positive[h.layer][:n],
                reducer.thresholds.get(h.layer),
                reducer.w_norms.get(h.layer),
            )
            per_token[h.layer] = (active.sum(-1).double() / reducer.d_mlp).tolist()
        return _Drawn(definition, result, per_token)

    def _result_of(self, spec: Definition, reducer: DensityReducer) -> SparsityResult:
        """The SparsityResult `run_sparsity` builds from the same reducer (inputs: the measured text)."""
        calibration = self._calibration if spec.needs_calibration else None
        calibration_tokens = 0
        if calibration is not None:
            given = isinstance(self._calibration_arg, TokenWindows)
            calibration_tokens = calibration.n_tokens if given else self.settings.calibration_tokens
        by_input = {"heldout": input_density(reducer, self.settings.dense_threshold)}
        return sparsity_result(
            self.handle, spec, self.settings, reducer, self.windows, by_input, calibration, calibration_tokens
        )

    def _draw(self, drawn: _Drawn) -> None:
        self._drawn = drawn
        self._result = drawn.result
        self._show(drawn.result)
        self.status.value = message(
            f"{drawn.definition}: {drawn.result.tokens} tokens, activations captured once"
            + (", thresholds calibrated as `workbench sparsity` does" if drawn.result.thresholds else "")
        )

    def _show(self, result: SparsityResult) -> None:
        self.summary.value = summary_html(result)
        self.by_layer_chart.value = charts.svg(by_layer_chart(result))
        self.table.value = result.table().round(4).to_html(index=False)
        self._show_layer()

    def _show_layer(self) -> None:
        result = self._result
        if result is None:
            return
        layer = self.layer.value
        self.firing_chart.value = charts.svg(firing_chart(result, layer))
        drawn = self._drawn
        if drawn is not None and drawn.definition == result.definition:
            values = drawn.per_token[layer]
            self.tokens.caption = f"layer {layer}: density of each token under {result.definition}"
            self.tokens.show([self._shown_tokens], values, scale=max(max(values), 1e-9))

    def _fail(self, exc: BaseException) -> None:
        self._result = None
        text = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
        self.status.value = message(text, "error")

    def _busy(self, flag: bool) -> None:
        if flag:
            self.status.value = message("folding the densities…", "busy")

    # --- reading the state ----------------------------------------------------------------------------

    @property
    def result(self) -> SparsityResult | None:
        """The newest drawn result (call `wait()` first); None while the state is refused."""
        return self._result

    @result.setter
    def result(self, value: SparsityResult) -> None:
        """Show a result (e.g. read from a run folder) and set the definition to its own."""
        if value.model != self.handle.name:
            self._fail(WorkbenchError(f"that result is of {value.model}, not of {self.handle.name}"))
            return
        self.definition = value.definition
        self.wait()
        if self.error is None:
            self._result = value
            self._show(value)

    def wait(self, timeout: float = 300.0) -> SparsityResult | None:
        """Block until the newest definition is drawn; returns `.result`."""
        if not self._runner.wait(timeout):
            raise TimeoutError(f"the sparsity explorer did not finish within {timeout} s")
        return self._result

    @property
    def error(self) -> str | None:
        """The message shown in the widget, if it shows an error."""
        return self.status.value if "wb-error" in self.status.value else None

    def close(self) -> None:
        self._runner.close()
        super().close()


def _number(value: float) -> str:
    """A parameter as a definition name writes it: 0.5, 0.05, never 5e-2."""
    return f"{round(float(value), 6):.6f}".rstrip("0").rstrip(".") or "0"
