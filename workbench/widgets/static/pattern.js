// One attention pattern (queries × keys) on a canvas, with the tokens along both sides. Hovering a cell
// links its query token and key token and shows the weight. The pattern is a Float32 buffer.
function floats(view) {
  if (!view) return new Float32Array(0);
  return new Float32Array(view.buffer, view.byteOffset, Math.floor(view.byteLength / 4));
}

function render({ model, el }) {
  el.classList.add("wb-pattern");
  function draw() {
    el.replaceChildren();
    const tokens = model.get("tokens") || [];
    const p = floats(model.get("pattern"));
    const n = tokens.length;
    const title = document.createElement("div");
    title.className = "wb-caption";
    title.textContent = model.get("title") || "";
    el.appendChild(title);
    if (!n || p.length !== n * n) return;
    const cell = Math.max(3, Math.min(14, Math.floor(420 / n)));
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = n * cell;
    const ctx = canvas.getContext("2d");
    for (let q = 0; q < n; q++) {
      for (let k = 0; k < n; k++) {
        const a = p[q * n + k];
        ctx.fillStyle = `rgba(31, 119, 180, ${Math.min(1, Math.sqrt(Math.max(0, a)))})`;
        ctx.fillRect(k * cell, q * cell, cell, cell);
      }
    }
    const info = document.createElement("div");
    info.className = "wb-info";
    info.textContent = "hover a cell: query → key";
    const text = document.createElement("div");
    text.className = "wb-text";
    const spans = tokens.map((t) => {
      const s = document.createElement("span");
      s.textContent = t.replace(/\n/g, "⏎");
      text.appendChild(s);
      return s;
    });
    canvas.addEventListener("mousemove", (e) => {
      const r = canvas.getBoundingClientRect();
      const k = Math.floor((e.clientX - r.left) / cell), q = Math.floor((e.clientY - r.top) / cell);
      if (q < 0 || k < 0 || q >= n || k >= n) return;
      spans.forEach((s, i) => { s.className = i === q ? "wb-query" : i === k ? "wb-key" : ""; });
      info.textContent = `query ${q} ${JSON.stringify(tokens[q])} → key ${k} ${JSON.stringify(tokens[k])}: ` +
        p[q * n + k].toFixed(3);
    });
    el.append(canvas, info, text);
  }
  model.on("change", draw);
  draw();
}
export default { render };
