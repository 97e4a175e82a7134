/**
 * The Compare view (main area): two or more runs of one kind side by side, from `GET compare`.
 * A table puts each run in a column (model, command, status, headline figures), the server's own
 * comparison table follows, then the charts with the runs' curves overlaid.
 */

import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { WorkbenchAPI } from './api';
import { chartGrid } from './charts';
import { errorLine, h, replaceChildren } from './dom';
import { figure, when } from './format';
import { section } from './section';
import { statusBadge } from './status';
import type { ICompare, IRunRow } from './types';

export interface ICompareViewOptions {
  api: WorkbenchAPI;
  ids: string[];
  openRun: (id: string) => void;
}

/** Runs as columns, one row per fact or headline figure. */
function sideBySide(runs: IRunRow[], openRun: (id: string) => void): HTMLTableElement {
  const names: string[] = [];
  for (const run of runs) {
    for (const name of Object.keys(run.headline ?? {})) {
      if (!names.includes(name)) {
        names.push(name);
      }
    }
  }
  const head = h('tr', {}, h('th', {}, ''));
  for (const run of runs) {
    const link = h('a', { className: 'wb-compare-run', href: '#', title: `Open ${run.id}` }, run.id);
    link.addEventListener('click', event => {
      event.preventDefault();
      openRun(run.id);
    });
    head.appendChild(h('th', {}, link));
  }
  const line = (label: string, cell: (run: IRunRow) => Node | string, className = '') =>
    h('tr', { className }, h('th', {}, label), ...runs.map(run => h('td', {}, cell(run))));
  return h(
    'table',
    { className: 'wb-table wb-compare-runs' },
    h('thead', {}, head),
    h(
      'tbody',
      {},
      line('model', run => run.model ?? '–'),
      line('command', run => h('code', {}, run.command ?? '–')),
      line('status', run => statusBadge(run.status)),
      line('created', run => when(run.created)),
      ...names.map(name => line(name, run => figure(run.headline?.[name]), 'wb-compare-figure'))
    )
  );
}

/** The server's comparison rows as a table, its columns in order of first appearance. */
function genericTable(rows: Record<string, unknown>[]): HTMLElement {
  const columns: string[] = [];
  for (const row of rows) {
    for (const key of Object.keys(row)) {
      if (!columns.includes(key)) {
        columns.push(key);
      }
    }
  }
  return h(
    'table',
    { className: 'wb-table wb-compare-table' },
    h('thead', {}, h('tr', {}, ...columns.map(c => h('th', {}, c)))),
    h('tbody', {}, ...rows.map(row => h('tr', {}, ...columns.map(c => h('td', {}, figure(row[c]))))))
  );
}

/** Whether the server's table holds a column the side-by-side table does not already show. */
function hasNews(answer: ICompare): boolean {
  const shown = new Set(['id', 'run', 'model', 'status', 'command', 'created', 'finished', 'kind', 'kinds']);
  answer.runs.forEach(run => Object.keys(run.headline ?? {}).forEach(name => shown.add(name)));
  return answer.table.some(row => Object.keys(row).some(key => !shown.has(key)));
}

export class CompareView extends Widget {
  readonly ids: string[];
  private readonly _api: WorkbenchAPI;
  private readonly _openRun: (id: string) => void;

  constructor(options: ICompareViewOptions) {
    super();
    this._api = options.api;
    this._openRun = options.openRun;
    this.ids = options.ids;
    this.addClass('wb-compare-view');
    this.title.label = `Compare ${options.ids.length} runs`;
    this.title.caption = options.ids.join('\n');
    this.title.closable = true;
    this.node.appendChild(h('div', { className: 'wb-empty' }, 'Comparing…'));
  }

  async load(): Promise<void> {
    let answer: ICompare;
    try {
      answer = await this._api.compare(this.ids);
    } catch (error) {
      replaceChildren(
        this.node,
        h('h2', {}, 'Compare'),
        errorLine(`Could not compare these runs: ${(error as Error).message}`)
      );
      return;
    }
    replaceChildren(
      this.node,
      h('h2', { className: 'wb-compare-title' }, `${answer.kind}: ${answer.runs.length} runs`),
      section('Side by side', 'wb-compare-side', sideBySide(answer.runs, this._openRun)),
      hasNews(answer) ? section('Comparison', 'wb-compare-rows', genericTable(answer.table)) : null,
      section('Curves', 'wb-compare-charts', chartGrid(answer.charts, 'No charts to overlay for this kind.'))
    );
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    void this.load();
  }
}
