"""The browser side of the widgets: small anywidget views whose scripts and styles ship in the package
(workbench/widgets/static), so nothing is fetched from a CDN. Arrays travel as float32 byte buffers,
labels as small JSON lists; charts are Altair drawn to SVG here (vl-convert), not Vega data per update.
"""

from __future__ import annotations

import html
from pathlib import Path

import anywidget
import ipywidgets as W
import numpy as np
import traitlets

STATIC = Path(__file__).parent / "static"


def float_bytes(values) -> bytes:
    """A flat float32 buffer of `values` (NaN where a value is None)."""
    array = np.asarray([np.nan if v is None else v for v in np.ravel(values)], dtype=np.float32)
    return array.tobytes()


class TokenView(anywidget.AnyWidget):
    """Lines of tokens shaded by a value; the first line may carry a hover card per token."""

    _esm = STATIC / "tokens.js"
    _css = STATIC / "tokens.css"
    lines = traitlets.List(traitlets.List(traitlets.Unicode())).tag(sync=True)
    values = traitlets.Bytes(b"").tag(sync=True)  # float32, one per token of all lines
    scale = traitlets.Float(1.0).tag(sync=True)  # |value| that gets full colour
    diverging = traitlets.Bool(True).tag(sync=True)  # red up, blue down; else one orange ramp
    label = traitlets.Unicode("value").tag(sync=True)
    caption = traitlets.Unicode("").tag(sync=True)
    hover = traitlets.List().tag(sync=True)  # per token of line 0: {"base": [[tok, p]...], "edited": ...}

    def show(self, lines: list[list[str]], values, *, scale: float | None = None, hover=None) -> None:
        flat = [v for v in np.ravel(values)]
        finite = [abs(v) for v in flat if v is not None and np.isfinite(v)]
        with self.hold_sync():
            self.lines = lines
            self.values = float_bytes(flat)
            self.scale = float(scale if scale is not None else (max(finite) if finite else 1.0)) or 1.0
            self.hover = hover or []

    def decoded_values(self) -> np.ndarray:
        return np.frombuffer(self.values, dtype=np.float32)


class GridView(anywidget.AnyWidget):
    """A rows × columns grid of shaded cells, some marked; clicks (with Shift) are sent to Python."""

    _esm = STATIC / "grid.js"
    _css = STATIC / "grid.css"
    rows = traitlets.List(traitlets.Unicode()).tag(sync=True)
    cols = traitlets.List(traitlets.Unicode()).tag(sync=True)
    values = traitlets.Bytes(b"").tag(sync=True)  # float32 [rows * cols]
    marked = traitlets.List().tag(sync=True)  # [[row, col], ...]
    focus = traitlets.List().tag(sync=True)  # [row, col] or []
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._click_handlers = []
        self.on_msg(self._on_message)

    def on_click(self, handler) -> None:
        """`handler(row, col, shift)` runs on every click on a cell."""
        self._click_handlers.append(handler)

    def click(self, row: int, col: int, shift: bool = False) -> None:
        """What the browser sends on a click: for code and tests to drive the grid."""
        self._on_message(self, {"event": "click", "row": row, "col": col, "shift": shift}, [])

    def _on_message(self, _widget, content, _buffers) -> None:
        if content.get("event") == "click":
            for handler in self._click_handlers:
                handler(int(content["row"]), int(content["col"]), bool(content.get("shift")))


class PatternView(anywidget.AnyWidget):
    """One attention pattern [queries, keys] with its tokens; hovering links query and key."""

    _esm = STATIC / "pattern.js"
    _css = STATIC / "pattern.css"
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    pattern = traitlets.Bytes(b"").tag(sync=True)  # float32 [T * T]
    title = traitlets.Unicode("").tag(sync=True)


def svg_of(chart) -> str:
    """An Altair chart as inline SVG (vl-convert; offline, about 15 KB for a line chart)."""
    import vl_convert

    return vl_convert.vegalite_to_svg(chart.to_dict())


def chart_box(chart=None) -> W.HTML:
    return W.HTML(svg_of(chart) if chart is not None else "")


def message(text: str, kind: str = "info") -> str:
    """A one-line status as HTML: info, busy or error (escaped; errors in red)."""
    colour = {"info": "#555", "busy": "#8a6d00", "error": "#b00020"}[kind]
    icon = {"info": "", "busy": "⏳ ", "error": "⚠ "}[kind]
    return f'<span class="wb-status wb-{kind}" style="color:{colour}">{icon}{html.escape(text)}</span>'
