// Tokens shaded by a value (loss change, feature activation): lines of tokens, one colour per token, and
// a hover card (top next tokens, base against edited) when the model gives one. Data arrive as a
// Float32 buffer of values plus small JSON; nothing is fetched from anywhere.
function floats(view) {
  if (!view) return new Float32Array(0);
  return new Float32Array(view.buffer, view.byteOffset, Math.floor(view.byteLength / 4));
}

function colour(v, scale, diverging) {
  if (!Number.isFinite(v) || scale <= 0) return "transparent";
  const a = Math.min(1, Math.abs(v) / scale);
  if (!diverging) return `rgba(230, 120, 20, ${0.85 * a})`;
  return v >= 0 ? `rgba(214, 39, 40, ${0.8 * a})` : `rgba(31, 119, 180, ${0.8 * a})`;
}

function render({ model, el }) {
  el.classList.add("wb-tokens");
  const card = document.createElement("div");
  card.className = "wb-card";
  function draw() {
    el.replaceChildren();
    const lines = model.get("lines") || [];
    const values = floats(model.get("values"));
    const scale = model.get("scale");
    const diverging = model.get("diverging");
    const hover = model.get("hover") || [];
    const caption = model.get("caption");
    if (caption) {
      const c = document.createElement("div");
      c.className = "wb-caption";
      c.textContent = caption;
      el.appendChild(c);
    }
    let k = 0;
    lines.forEach((tokens, line) => {
      const row = document.createElement("div");
      row.className = "wb-line";
      tokens.forEach((token, i) => {
        const span = document.createElement("span");
        span.className = "wb-token";
        span.textContent = token.replace(/\n/g, "⏎");
        const v = values[k];
        span.style.background = colour(v, scale, diverging);
        span.dataset.value = Number.isFinite(v) ? v.toFixed(4) : "";
        const h = line === 0 ? hover[i] : null;
        span.title = Number.isFinite(v) ? `${model.get("label")}: ${v.toFixed(4)}` : "";
        if (h) {
          span.addEventListener("mouseenter", () => {
            const rows = ["base", "edited"].map((side) => {
              const items = (h[side] || []).map(([t, p]) => `${JSON.stringify(t)} ${(100 * p).toFixed(1)}%`);
              return `<b>${side}</b>: ` + items.map((s) => s.replace(/</g, "&lt;")).join(", ");
            });
            card.innerHTML = `<div>next after ${JSON.stringify(token).replace(/</g, "&lt;")}` +
              ` (${span.title})</div>` + rows.map((r) => `<div>${r}</div>`).join("");
            card.style.display = "block";
          });
          span.addEventListener("mouseleave", () => { card.style.display = "none"; });
        }
        row.appendChild(span);
        k += 1;
      });
      el.appendChild(row);
    });
    el.appendChild(card);
  }
  model.on("change", draw);
  draw();
}
export default { render };
