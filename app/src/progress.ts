/** The progress bar and ETA of a running run, as progress.json reports them. */

import { curveSparkline } from './charts';
import { h } from './dom';
import { etaText, fraction, progressText } from './format';
import type { IProgress } from './types';

/** A bar (indeterminate when the total is unknown), the phase and counts, and the ETA. */
export function progressBlock(progress: IProgress, withCurve = false): HTMLElement {
  const done = fraction(progress);
  const fill = h('div', { className: 'wb-progress-fill' });
  const bar = h(
    'div',
    {
      className: done === null ? 'wb-progress-bar wb-progress-indeterminate' : 'wb-progress-bar',
      role: 'progressbar',
      'aria-valuemin': '0',
      'aria-valuemax': '100',
      'aria-valuenow': done === null ? undefined : String(Math.round(done * 100))
    },
    fill
  );
  if (done !== null) {
    fill.style.width = `${(done * 100).toFixed(1)}%`;
  }
  const block = h(
    'div',
    { className: 'wb-progress' },
    bar,
    h(
      'div',
      { className: 'wb-progress-text' },
      h('span', { className: 'wb-progress-phase' }, progressText(progress)),
      h('span', { className: 'wb-progress-eta' }, etaText(progress))
    )
  );
  if (withCurve && progress.curve) {
    block.appendChild(curveSparkline(progress.curve));
  }
  return block;
}
