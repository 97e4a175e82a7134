/**
 * The New analysis form: built from the server's whitelist (`GET commands`), one typed input per
 * field, sent as `POST jobs`. The server validates again and its message shows in the form; a started
 * job shows in the Runs panel as it runs.
 */

import { Message } from '@lumino/messaging';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { WorkbenchAPI } from './api';
import { errorLine, h, replaceChildren } from './dom';
import type { ICommandSpec, IField, IJob } from './types';

/** One input and how to read its value back (undefined: leave the field to the server's default). */
interface IInput {
  field: IField;
  node: HTMLElement;
  read: () => unknown;
}

function numberText(value: unknown): string {
  return typeof value === 'number' && Number.isFinite(value) ? String(value) : '';
}

/** The input of one field, by its type. */
export function fieldInput(field: IField): IInput {
  const id = `wb-field-${field.name}`;
  const common = { className: `jp-mod-styled wb-field-input`, id, name: field.name, title: field.help };
  switch (field.type) {
    case 'choice': {
      // A field without a default may be left to the command ("default" sends nothing).
      const choices = field.choices ?? [];
      const optional = !field.required && (field.default === null || field.default === undefined);
      const node = h(
        'select',
        common,
        optional ? h('option', { value: '' }, '(default)') : null,
        ...choices.map((c, i) => h('option', { value: String(i) }, String(c)))
      );
      const index = choices.findIndex(c => c === field.default);
      node.value = index >= 0 ? String(index) : optional ? '' : '0';
      return { field, node, read: () => (node.value === '' ? undefined : choices[Number(node.value)]) };
    }
    case 'bool': {
      const node = h('input', { ...common, className: 'wb-field-input', type: 'checkbox' });
      node.checked = Boolean(field.default);
      return { field, node, read: () => node.checked };
    }
    case 'int':
    case 'float': {
      const node = h('input', {
        ...common,
        type: 'number',
        step: field.type === 'int' ? '1' : 'any',
        min: numberText(field.min) || undefined,
        max: numberText(field.max) || undefined,
        value: numberText(field.default)
      });
      const read = () => {
        const text = node.value.trim();
        if (text === '') {
          return undefined;
        }
        return field.type === 'int' ? Number.parseInt(text, 10) : Number.parseFloat(text);
      };
      return { field, node, read };
    }
    default: {
      const node = h('input', {
        ...common,
        type: 'text',
        value: field.default === null || field.default === undefined ? '' : String(field.default)
      });
      return { field, node, read: () => (node.value.trim() === '' ? undefined : node.value) };
    }
  }
}

/** The whole-value regular expression of a text field, or null when the browser cannot read it. */
function wholeMatch(pattern: string): RegExp | null {
  try {
    return new RegExp(`^(?:${pattern})$`);
  } catch {
    return null; // the server checks it anyway
  }
}

/** What is wrong with a value before it is sent (the server checks again), or null. */
export function problem(field: IField, value: unknown): string | null {
  if (value === undefined) {
    return field.required ? `${field.name} is required` : null;
  }
  if (field.type === 'text' && field.pattern) {
    const pattern = wholeMatch(field.pattern);
    return pattern && !pattern.test(String(value)) ? `${field.name}: not of the form ${field.help}` : null;
  }
  if (field.type !== 'int' && field.type !== 'float') {
    return null;
  }
  const number = value as number;
  if (!Number.isFinite(number) || (field.type === 'int' && !Number.isInteger(number))) {
    return `${field.name}: ${field.type === 'int' ? 'a whole number' : 'a number'}, please`;
  }
  if (field.min !== undefined && field.min !== null && number < field.min) {
    return `${field.name}: at least ${field.min}`;
  }
  if (field.max !== undefined && field.max !== null && number > field.max) {
    return `${field.name}: at most ${field.max}`;
  }
  return null;
}

export class NewAnalysis extends Widget {
  /** Emitted with each job the server started. */
  readonly started = new Signal<this, IJob>(this);

  private readonly _api: WorkbenchAPI;
  private readonly _openRun: (id: string) => void;
  private readonly _command = h('select', {
    className: 'jp-mod-styled wb-command-select',
    title: 'Which analysis'
  });
  private readonly _fields = h('div', { className: 'wb-fields' });
  private readonly _message = h('div', { className: 'wb-form-message' });
  private readonly _submit = h(
    'button',
    { className: 'jp-Button jp-mod-accept wb-button wb-form-submit', type: 'submit' },
    'Start'
  );
  private _specs: ICommandSpec[] = [];
  private _inputs: IInput[] = [];
  private _loaded = false;

  constructor(api: WorkbenchAPI, openRun: (id: string) => void) {
    super();
    this._api = api;
    this._openRun = openRun;
    this.addClass('wb-new-analysis');
    this.title.label = 'New analysis';
    this.title.closable = true;
    const form = h(
      'form',
      { className: 'wb-form' },
      h('h2', {}, 'New analysis'),
      h(
        'label',
        { className: 'wb-field' },
        h('span', { className: 'wb-field-name' }, 'analysis'),
        this._command
      ),
      this._fields,
      h('div', { className: 'wb-form-actions' }, this._submit),
      this._message
    );
    form.addEventListener('submit', event => {
      event.preventDefault();
      void this._start();
    });
    this._command.addEventListener('change', () => this._renderFields());
    this._submit.disabled = true;
    this.node.appendChild(form);
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (!this._loaded) {
      void this._load();
    }
  }

  private async _load(): Promise<void> {
    try {
      this._specs = (await this._api.listCommands()).commands;
    } catch (error) {
      replaceChildren(this._message, errorLine(`Could not read the analyses: ${(error as Error).message}`));
      return;
    }
    this._loaded = true;
    replaceChildren(
      this._command,
      ...this._specs.map(s => h('option', { value: s.name }, s.title || s.name))
    );
    this._submit.disabled = this._specs.length === 0;
    this._renderFields();
  }

  private _spec(): ICommandSpec | undefined {
    return this._specs.find(s => s.name === this._command.value);
  }

  private _renderFields(): void {
    const spec = this._spec();
    this._inputs = (spec?.fields ?? []).map(fieldInput);
    replaceChildren(
      this._fields,
      ...this._inputs.map(input =>
        h(
          'label',
          {
            className: `wb-field wb-field-${input.field.type}`,
            for: input.node.id,
            'data-field': input.field.name
          },
          h('span', { className: 'wb-field-name' }, input.field.name),
          input.node,
          h('span', { className: 'wb-field-help' }, input.field.help)
        )
      )
    );
    replaceChildren(this._message);
  }

  private async _start(): Promise<void> {
    const spec = this._spec();
    if (!spec) {
      return;
    }
    const args: Record<string, unknown> = {};
    const problems: string[] = [];
    for (const input of this._inputs) {
      const value = input.read();
      const wrong = problem(input.field, value);
      if (wrong) {
        problems.push(wrong);
      } else if (value !== undefined) {
        args[input.field.name] = value;
      }
    }
    if (problems.length) {
      replaceChildren(this._message, errorLine(problems.join('; ')));
      return;
    }
    this._submit.disabled = true;
    replaceChildren(this._message, h('div', { className: 'wb-form-pending' }, 'Starting…'));
    try {
      const job = await this._api.startJob(spec.name, args);
      const open = h('a', { className: 'wb-form-open-run', href: '#' }, job.run);
      open.addEventListener('click', event => {
        event.preventDefault();
        this._openRun(job.run);
      });
      replaceChildren(
        this._message,
        h(
          'div',
          { className: 'wb-form-started' },
          `Started ${spec.name} (job ${job.id}): run `,
          open,
          '. It shows in the Runs panel as it runs.'
        )
      );
      this.started.emit(job);
    } catch (error) {
      replaceChildren(this._message, errorLine(`The server refused: ${(error as Error).message}`));
    } finally {
      this._submit.disabled = false;
    }
  }
}
