/** A foldable section of a main-area view: a <details> with a heading and a body. */

import { h } from './dom';

export function section(
  title: string,
  className: string,
  body: HTMLElement,
  open = true
): HTMLDetailsElement {
  const node = h(
    'details',
    { className: `wb-section ${className}` },
    h('summary', { className: 'wb-section-title' }, title),
    body
  );
  node.open = open;
  return node;
}
