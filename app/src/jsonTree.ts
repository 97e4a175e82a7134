/**
 * A JSON value as a collapsible tree (nested <details>): objects and arrays fold, leaves show their
 * value. Used for a run's provenance (manifest) and its result dictionaries.
 */

import { h } from './dom';

const OPEN_DEPTH = 1; // levels unfolded at first
const LONG_ARRAY = 50; // an array of numbers longer than this shows its length, not its items

function leaf(value: unknown): HTMLElement {
  const kind = value === null ? 'null' : typeof value;
  const text = typeof value === 'string' ? JSON.stringify(value) : String(value);
  return h('span', { className: `wb-json-leaf wb-json-${kind}` }, text);
}

function summary(value: object): string {
  if (Array.isArray(value)) {
    return `[${value.length}]`;
  }
  return `{${Object.keys(value).length}}`;
}

function node(key: string, value: unknown, depth: number): HTMLElement {
  const label = h('span', { className: 'wb-json-key' }, key);
  if (value === null || typeof value !== 'object') {
    return h('div', { className: 'wb-json-row' }, label, ': ', leaf(value));
  }
  const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v] as const) : Object.entries(value);
  if (Array.isArray(value) && value.length > LONG_ARRAY && value.every(v => typeof v === 'number')) {
    return h('div', { className: 'wb-json-row' }, label, ': ', leaf(`${value.length} numbers`));
  }
  const details = h(
    'details',
    { className: 'wb-json-node' },
    h('summary', {}, label, ' ', h('span', { className: 'wb-json-count' }, summary(value)))
  );
  details.open = depth < OPEN_DEPTH;
  // Children are built when first opened, so a large manifest costs nothing until it is read.
  let built = false;
  const build = () => {
    if (!built) {
      built = true;
      const children = h('div', { className: 'wb-json-children' });
      for (const [k, v] of entries) {
        children.appendChild(node(k, v, depth + 1));
      }
      details.appendChild(children);
    }
  };
  if (details.open) {
    build();
  }
  details.addEventListener('toggle', build);
  return details;
}

/** The tree of `value`, its top level named `name`. */
export function jsonTree(name: string, value: unknown): HTMLElement {
  return h('div', { className: 'wb-json' }, node(name, value, 0));
}
