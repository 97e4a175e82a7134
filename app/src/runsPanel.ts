/**
 * The Runs side panel: every run folder under the runs root, filtered, sorted, with live progress.
 *
 * It asks the server for the list (and the jobs this server started) every 2 s while anything runs and
 * every 10 s otherwise, and only while it is shown. A click opens the run; the checkboxes pick the
 * runs to compare; a running job this server started has a cancel button.
 */

import { Signal } from '@lumino/signaling';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { APIError, WorkbenchAPI } from './api';
import { button, errorLine, h, replaceChildren } from './dom';
import { when } from './format';
import { progressBlock } from './progress';
import { headlineChips, statusBadge } from './status';
import type { IJob, IRunQuery, IRunRow } from './types';

const FAST_MS = 2000; // while a run or job is running
const SLOW_MS = 10000; // otherwise: runs started elsewhere (a terminal) still show up
const TYPING_MS = 300;
const STATUSES = ['running', 'complete', 'failed', 'interrupted', 'unreadable'];
const SORTS: [string, string][] = [
  ['-created', 'newest first'],
  ['created', 'oldest first'],
  ['kind', 'kind'],
  ['status', 'status'],
  ['model', 'model']
];

/** What a run without results yet is called: its command's word ("workbench essential ..." -> essential). */
function commandWord(command: string | null): string {
  const words = (command ?? '').split(/\s+/);
  return (words[0] === 'workbench' ? words[1] : words[0]) || 'run';
}

export interface IRunsPanelOptions {
  api: WorkbenchAPI;
  openRun: (id: string) => void;
  compare: (ids: string[]) => void;
  newAnalysis: () => void;
}

function select(className: string, options: [string, string][], title: string): HTMLSelectElement {
  const node = h('select', { className: `jp-mod-styled wb-select ${className}`, title });
  for (const [value, label] of options) {
    node.appendChild(h('option', { value }, label));
  }
  return node;
}

export class RunsPanel extends Widget {
  /** Emitted after each successful refresh, with the rows shown. */
  readonly refreshed = new Signal<this, IRunRow[]>(this);

  private readonly _api: WorkbenchAPI;
  private readonly _options: IRunsPanelOptions;
  private readonly _list = h('div', { className: 'wb-runs-list' });
  private readonly _summary = h('div', { className: 'wb-runs-summary' });
  private readonly _message = h('div', { className: 'wb-runs-message' });
  private readonly _filter = h('input', {
    className: 'jp-mod-styled wb-runs-filter',
    type: 'search',
    placeholder: 'Filter runs (model, command, id)',
    title: 'Show runs whose model, command or folder contains this text'
  });
  private readonly _kind = select('wb-runs-kind', [['', 'all kinds']], 'Show one kind of result');
  private readonly _status = select(
    'wb-runs-status',
    [['', 'any status'], ...STATUSES.map(s => [s, s] as [string, string])],
    'Show runs in one state'
  );
  private readonly _sort = select('wb-runs-sort', SORTS, 'Order of the list');
  private readonly _compareButton: HTMLButtonElement;
  private readonly _kinds = new Set<string>();
  private readonly _selected = new Set<string>();
  private readonly _cancelling = new Set<string>(); // jobs asked to stop that still run
  private _rows: IRunRow[] = [];
  private _jobs: IJob[] = [];
  private _timer = 0;
  private _typing = 0;
  private _loading: Promise<void> | null = null;
  private _again = false;

  constructor(options: IRunsPanelOptions) {
    super();
    this._api = options.api;
    this._options = options;
    this.addClass('wb-runs-panel');
    this.id = 'wb-runs-panel';
    this.title.caption = 'Workbench runs';

    this._compareButton = button(
      'Compare',
      'wb-compare-button',
      () => this._compare(),
      'Compare the checked runs'
    );
    const toolbar = h(
      'div',
      { className: 'wb-runs-toolbar' },
      h('span', { className: 'wb-runs-title' }, 'Runs'),
      button('New analysis', 'wb-new-button', () => options.newAnalysis(), 'Start an analysis'),
      button('↻', 'wb-refresh-button', () => void this.refresh(), 'Refresh the list now'),
      this._compareButton
    );
    const filters = h(
      'div',
      { className: 'wb-runs-filters' },
      this._filter,
      this._kind,
      this._status,
      this._sort
    );
    this._filter.addEventListener('input', () => {
      window.clearTimeout(this._typing);
      this._typing = window.setTimeout(() => void this.refresh(), TYPING_MS);
    });
    for (const control of [this._kind, this._status, this._sort]) {
      control.addEventListener('change', () => void this.refresh());
    }
    this.node.append(toolbar, filters, this._summary, this._message, this._list);
    this._updateCompareButton();
  }

  /** The checked run ids, in list order. */
  get selected(): string[] {
    return this._rows.map(r => r.id).filter(id => this._selected.has(id));
  }

  /** Ask the server now (a refresh already under way is followed by one more). */
  refresh(): Promise<void> {
    if (this._loading) {
      this._again = true;
      return this._loading;
    }
    window.clearTimeout(this._timer);
    this._loading = this._load().finally(() => {
      this._loading = null;
      if (this._again) {
        this._again = false;
        void this.refresh();
      } else {
        this._schedule();
      }
    });
    return this._loading;
  }

  dispose(): void {
    window.clearTimeout(this._timer);
    window.clearTimeout(this._typing);
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      void this.refresh();
    }
  }

  private _query(): IRunQuery {
    return {
      q: this._filter.value.trim(),
      kind: this._kind.value,
      status: this._status.value,
      sort: this._sort.value
    };
  }

  private _busy(): boolean {
    return this._rows.some(r => r.status === 'running') || this._jobs.some(j => j.status === 'running');
  }

  private _schedule(): void {
    window.clearTimeout(this._timer);
    if (this.isDisposed) {
      return;
    }
    this._timer = window.setTimeout(
      () => {
        if (this.isVisible) {
          void this.refresh();
        } else {
          this._schedule(); // hidden: look again later, fetch nothing
        }
      },
      this._busy() ? FAST_MS : SLOW_MS
    );
  }

  private async _load(): Promise<void> {
    try {
      const [list, jobs] = await Promise.all([this._api.listRuns(this._query()), this._api.listJobs()]);
      this._rows = list.runs;
      this._jobs = jobs.jobs;
      const running = new Set(jobs.jobs.filter(j => j.status === 'running').map(j => j.id));
      [...this._cancelling].filter(id => !running.has(id)).forEach(id => this._cancelling.delete(id));
      list.runs.forEach(r => r.kinds.forEach(k => this._addKind(k)));
      replaceChildren(this._message);
      this._render(list.root);
      this.refreshed.emit(this._rows);
    } catch (error) {
      const message =
        error instanceof APIError && error.status === 404
          ? 'The workbench server extension did not answer (404). Is it enabled? ' +
            'Run `jupyter server extension list` and look for workbench.lab.'
          : `Could not list the runs: ${(error as Error).message}`;
      replaceChildren(this._message, errorLine(message));
    }
  }

  private _addKind(kind: string): void {
    if (!this._kinds.has(kind)) {
      this._kinds.add(kind);
      const options = [...this._kinds].sort();
      const current = this._kind.value;
      replaceChildren(
        this._kind,
        h('option', { value: '' }, 'all kinds'),
        ...options.map(k => h('option', { value: k }, k))
      );
      this._kind.value = current;
    }
  }

  private _render(root: string): void {
    const running = this._rows.filter(r => r.status === 'running').length;
    replaceChildren(
      this._summary,
      `${this._rows.length} run${this._rows.length === 1 ? '' : 's'}`,
      running ? ` · ${running} running` : '',
      h('span', { className: 'wb-runs-root', title: root }, ` · ${root}`)
    );
    const listed = new Set(this._rows.map(r => r.id));
    for (const id of [...this._selected]) {
      if (!listed.has(id)) {
        this._selected.delete(id);
      }
    }
    const runningJobs = new Map(this._jobs.filter(j => j.status === 'running').map(j => [j.run, j]));
    // A job whose run folder is not listed yet shows as "starting" (unless a filter hides runs anyway).
    const query = this._query();
    const filtered = Boolean(query.q || query.kind || query.status);
    const pending = filtered ? [] : this._jobs.filter(j => j.status === 'running' && !listed.has(j.run));
    const rows = [
      ...pending.map(j => this._jobRow(j)),
      ...this._rows.map(r => this._row(r, runningJobs.get(r.id)))
    ];
    if (rows.length === 0) {
      rows.push(h('div', { className: 'wb-empty' }, 'No runs here yet. Start one with "New analysis".'));
    }
    replaceChildren(this._list, ...rows);
    this._updateCompareButton();
  }

  private _row(row: IRunRow, job: IJob | undefined): HTMLElement {
    const check = h('input', { className: 'wb-run-select', type: 'checkbox', title: 'Pick for comparison' });
    check.checked = this._selected.has(row.id);
    check.addEventListener('click', event => event.stopPropagation());
    check.addEventListener('change', () => {
      if (check.checked) {
        this._selected.add(row.id);
      } else {
        this._selected.delete(row.id);
      }
      this._updateCompareButton();
    });
    const kinds = row.kinds.length ? row.kinds.join(', ') : commandWord(row.command);
    const main = h(
      'div',
      { className: 'wb-run-main' },
      h(
        'div',
        { className: 'wb-run-line' },
        h('span', { className: 'wb-run-kind', title: kinds }, kinds),
        statusBadge(row.status)
      ),
      h(
        'div',
        { className: 'wb-run-line wb-run-where' },
        h('span', { className: 'wb-run-model' }, row.model ?? '–'),
        h('span', { className: 'wb-run-id', title: row.id }, row.id)
      ),
      row.command ? h('div', { className: 'wb-run-command', title: row.command }, row.command) : null,
      h('div', { className: 'wb-run-meta' }, h('span', { className: 'wb-run-created' }, when(row.created))),
      headlineChips(row.headline, 3),
      row.status === 'running' && row.progress ? progressBlock(row.progress) : null,
      row.error ? h('div', { className: 'wb-run-error', title: row.error }, row.error) : null
    );
    const node = h(
      'div',
      { className: `wb-run-row wb-run-${row.status}`, 'data-run-id': row.id, title: `Open ${row.id}` },
      check,
      main
    );
    if (job && row.status === 'running') {
      node.appendChild(this._cancelButton(job));
    }
    node.addEventListener('click', () => this._options.openRun(row.id));
    return node;
  }

  /** A job that started but whose run folder is not listed yet. */
  private _jobRow(job: IJob): HTMLElement {
    return h(
      'div',
      { className: 'wb-run-row wb-job-row wb-run-running', 'data-run-id': job.run },
      h(
        'div',
        { className: 'wb-run-main' },
        h(
          'div',
          { className: 'wb-run-line' },
          h('span', { className: 'wb-run-kind' }, job.command),
          statusBadge('running')
        ),
        h('div', { className: 'wb-run-command' }, 'starting…'),
        h('div', { className: 'wb-run-meta' }, h('span', { className: 'wb-run-id' }, job.run))
      ),
      this._cancelButton(job)
    );
  }

  private _cancelButton(job: IJob): HTMLButtonElement {
    const cancelling = () => {
      node.disabled = true;
      node.textContent = 'Cancelling…';
    };
    const node = button(
      'Cancel',
      'wb-run-cancel',
      () => {
        this._cancelling.add(job.id);
        cancelling();
        this._api
          .cancelJob(job.id)
          .catch(error => {
            this._cancelling.delete(job.id);
            replaceChildren(this._message, errorLine(`Could not cancel: ${error.message}`));
          })
          .finally(() => void this.refresh());
      },
      `Stop job ${job.id} (its run folder closes as "interrupted")`
    );
    if (this._cancelling.has(job.id)) {
      cancelling(); // asked already: the job is stopping
    }
    return node;
  }

  private _updateCompareButton(): void {
    const n = this._selected.size;
    this._compareButton.disabled = n < 2;
    this._compareButton.textContent = n ? `Compare (${n})` : 'Compare';
  }

  private _compare(): void {
    const ids = this.selected;
    if (ids.length >= 2) {
      this._options.compare(ids);
    }
  }
}
