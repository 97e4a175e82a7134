/**
 * Charts as images: the server renders each chart to SVG, and the SVG goes into an <img> through a
 * data: URL. An SVG shown as an image runs no script and loads nothing, so a chart can never reach
 * outside the page. The live progress curve is drawn here, as a small inline SVG of its own.
 */

import { h } from './dom';
import { figure } from './format';
import type { IChart, ICurve } from './types';

const SVG_NS = 'http://www.w3.org/2000/svg';

/** The data: URL of an SVG document. */
export function svgDataUrl(svg: string): string {
  return `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`;
}

/** One chart (its title is drawn in the SVG; the figure carries it for tooltips and tests). */
export function chartFigure(chart: IChart): HTMLElement {
  const image = h('img', {
    className: 'wb-chart-image',
    src: svgDataUrl(chart.svg),
    alt: chart.title || chart.name
  });
  return h(
    'figure',
    { className: 'wb-chart', 'data-chart': chart.name, title: chart.title || chart.name },
    image
  );
}

/** A grid of charts, or a line saying there are none. */
export function chartGrid(charts: IChart[], empty: string): HTMLElement {
  if (charts.length === 0) {
    return h('div', { className: 'wb-empty' }, empty);
  }
  return h('div', { className: 'wb-charts' }, ...charts.map(chartFigure));
}

function svgNode(tag: string, attrs: Record<string, string | number>): SVGElement {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    node.setAttribute(name, String(value));
  }
  return node;
}

/** A sparkline of a running command's curve (e.g. the training loss), with its last value. */
export function curveSparkline(curve: ICurve, width = 220, height = 48): HTMLElement {
  const points = curve.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const box = h('div', { className: 'wb-curve', title: `${curve.name} against ${curve.x}` });
  if (points.length < 2) {
    return box;
  }
  const xs = points.map(p => p[0]);
  const ys = points.map(p => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x: number) => (x1 === x0 ? 0 : ((x - x0) / (x1 - x0)) * (width - 2) + 1);
  const sy = (y: number) => (y1 === y0 ? height / 2 : height - 1 - ((y - y0) / (y1 - y0)) * (height - 2));
  const svg = svgNode('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'wb-curve-svg' });
  const path = points.map(([x, y], i) => `${i ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join('');
  svg.appendChild(svgNode('path', { d: path, fill: 'none', class: 'wb-curve-line' }));
  box.appendChild(svg);
  const last = points[points.length - 1];
  box.appendChild(h('span', { className: 'wb-curve-label' }, `${curve.name} ${figure(last[1])}`));
  return box;
}
