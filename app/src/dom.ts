/**
 * A small element builder: the views are plain DOM inside Lumino widgets, and text always goes in as
 * text (never as HTML), so nothing the server sends can inject markup.
 */

type Child = Node | string | null | undefined | false;

export interface IAttrs {
  className?: string;
  title?: string;
  [name: string]: string | undefined;
}

/** `h('div', {className: 'x'}, 'text', child)`: an element with attributes and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: IAttrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined) {
      continue;
    }
    if (name === 'className') {
      node.className = value;
    } else {
      node.setAttribute(name, value);
    }
  }
  append(node, ...children);
  return node;
}

export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    parent.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
  }
}

/** Replace every child of `parent`. */
export function replaceChildren(parent: Element, ...children: Child[]): void {
  parent.textContent = '';
  append(parent, ...children);
}

/** A button that runs `onClick` (and keeps the click from reaching a clickable row under it). */
export function button(
  label: string,
  className: string,
  onClick: () => void,
  title?: string
): HTMLButtonElement {
  const node = h('button', { className: `jp-Button wb-button ${className}`, type: 'button', title }, label);
  node.addEventListener('click', event => {
    event.stopPropagation();
    onClick();
  });
  return node;
}

/** A message line for errors, with the class tests and styles look for. */
export function errorLine(message: string): HTMLElement {
  return h('div', { className: 'wb-error', role: 'alert' }, message);
}
