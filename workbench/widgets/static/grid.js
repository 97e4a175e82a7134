// A rows × columns grid of cells (layers × heads, layers × experts, layers × sublayers): each cell is
// shaded by a value and may be marked (masked, skipped). A click reports the cell and whether Shift was
// held; the Python side decides what that means.
function floats(view) {
  if (!view) return new Float32Array(0);
  return new Float32Array(view.buffer, view.byteOffset, Math.floor(view.byteLength / 4));
}

function render({ model, el }) {
  el.classList.add("wb-grid-root");
  function draw() {
    el.replaceChildren();
    const rows = model.get("rows") || [];
    const cols = model.get("cols") || [];
    const values = floats(model.get("values"));
    const marked = new Set((model.get("marked") || []).map(([r, c]) => `${r},${c}`));
    const focus = model.get("focus") || [];
    let hi = 0;
    for (const v of values) if (Number.isFinite(v)) hi = Math.max(hi, Math.abs(v));
    const title = model.get("title");
    if (title) {
      const t = document.createElement("div");
      t.className = "wb-caption";
      t.textContent = title;
      el.appendChild(t);
    }
    const grid = document.createElement("div");
    grid.className = "wb-grid";
    grid.style.gridTemplateColumns = `auto repeat(${cols.length}, minmax(14px, 1fr))`;
    grid.appendChild(document.createElement("span"));
    cols.forEach((c) => {
      const h = document.createElement("span");
      h.className = "wb-head";
      h.textContent = c;
      grid.appendChild(h);
    });
    rows.forEach((r, i) => {
      const label = document.createElement("span");
      label.className = "wb-head";
      label.textContent = r;
      grid.appendChild(label);
      cols.forEach((c, j) => {
        const cell = document.createElement("button");
        cell.className = "wb-cell";
        cell.dataset.row = i;
        cell.dataset.col = j;
        const v = values[i * cols.length + j];
        const a = hi > 0 && Number.isFinite(v) ? Math.abs(v) / hi : 0;
        cell.style.background = `rgba(44, 110, 180, ${0.1 + 0.8 * a})`;
        if (marked.has(`${i},${j}`)) cell.classList.add("wb-marked");
        if (focus[0] === i && focus[1] === j) cell.classList.add("wb-focus");
        cell.title = `${r} · ${c}` + (Number.isFinite(v) ? `: ${v.toFixed(3)}` : "");
        cell.addEventListener("click", (e) => {
          model.send({ event: "click", row: i, col: j, shift: e.shiftKey });
        });
        grid.appendChild(cell);
      });
    });
    el.appendChild(grid);
  }
  model.on("change", draw);
  draw();
}
export default { render };
