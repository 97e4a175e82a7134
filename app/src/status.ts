/** Status badges and headline figures, shared by the runs list, the run view and the compare view. */

import { h } from './dom';
import { figure } from './format';
import type { Figure } from './types';

/** A coloured badge: class `wb-status wb-status-<status>`. */
export function statusBadge(status: string): HTMLElement {
  return h('span', { className: `wb-status wb-status-${status}`, title: `status: ${status}` }, status);
}

/** Up to `limit` headline figures as "name value" chips (all of them when limit is 0); with a limit,
 * the numbers come first (settings such as "pattern global" after them). */
export function headlineChips(headline: Record<string, Figure>, limit = 0): HTMLElement {
  let entries = Object.entries(headline ?? {});
  if (limit > 0) {
    const numbers = entries.filter(([, v]) => typeof v === 'number');
    entries = [...numbers, ...entries.filter(([, v]) => typeof v !== 'number')].slice(0, limit);
  }
  return h(
    'div',
    { className: 'wb-headline' },
    ...entries.map(([name, value]) =>
      h(
        'span',
        { className: 'wb-figure', title: `${name}: ${value}` },
        h('span', { className: 'wb-figure-name' }, name),
        ' ',
        h('span', { className: 'wb-figure-value' }, figure(value))
      )
    )
  );
}
