/**
 * The Run view (main area): one run's headline figures, charts, HTML report, provenance and results.
 *
 * While the run is running the view asks the server every 2 s and shows the progress; once it ends,
 * the view draws the charts (SVG from the server, as images) and the report (a sandboxed iframe with
 * no scripts). "Open in notebook" puts `workbench.load_run(<path>)` in a notebook and runs it.
 */

import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { WorkbenchAPI } from './api';
import { chartGrid } from './charts';
import { button, errorLine, h, replaceChildren } from './dom';
import { when } from './format';
import { jsonTree } from './jsonTree';
import { progressBlock } from './progress';
import { section } from './section';
import { headlineChips, statusBadge } from './status';
import type { IRunDetail } from './types';

const POLL_MS = 2000;

export interface IRunViewOptions {
  api: WorkbenchAPI;
  id: string;
  /** Put the loading cell for the run folder at this absolute path in a notebook and run it. */
  openInNotebook: ((path: string) => Promise<void>) | null;
}

export class RunView extends Widget {
  readonly runId: string;
  private readonly _api: WorkbenchAPI;
  private readonly _openInNotebook: IRunViewOptions['openInNotebook'];
  private readonly _header = h('div', { className: 'wb-run-header' });
  private readonly _message = h('div', { className: 'wb-run-message' });
  private readonly _live = h('div', { className: 'wb-run-live' });
  private readonly _body = h('div', { className: 'wb-run-body' });
  private _status: string | null = null;
  private _timer = 0;

  constructor(options: IRunViewOptions) {
    super();
    this._api = options.api;
    this._openInNotebook = options.openInNotebook;
    this.runId = options.id;
    this.addClass('wb-run-view');
    this.title.label = options.id.split('/').pop() || options.id;
    this.title.caption = `Run ${options.id}`;
    this.title.closable = true;
    this.node.append(this._header, this._message, this._live, this._body);
  }

  /** Read the run again; the charts and report are drawn again only when the status changed. */
  async load(): Promise<void> {
    window.clearTimeout(this._timer);
    let detail: IRunDetail;
    try {
      detail = await this._api.getRun(this.runId);
    } catch (error) {
      replaceChildren(
        this._message,
        errorLine(`Could not read run ${this.runId}: ${(error as Error).message}`)
      );
      return;
    }
    if (this.isDisposed) {
      return;
    }
    replaceChildren(this._message);
    const row = detail.row;
    this._renderHeader(detail);
    replaceChildren(
      this._live,
      row.status === 'running' && row.progress ? progressBlock(row.progress, true) : null
    );
    if (row.status !== this._status) {
      this._status = row.status;
      this._renderBody(detail);
    }
    if (row.status === 'running') {
      this._timer = window.setTimeout(() => void this.load(), POLL_MS);
    }
  }

  dispose(): void {
    window.clearTimeout(this._timer);
    super.dispose();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    void this.load();
  }

  private _renderHeader(detail: IRunDetail): void {
    const row = detail.row;
    const open = button(
      'Open in notebook',
      'wb-open-notebook',
      () => void this._toNotebook(open),
      'Load this run in a notebook'
    );
    open.disabled = this._openInNotebook === null || row.status !== 'complete';
    if (row.status !== 'complete') {
      open.title = 'A run loads in a notebook once it is complete';
    }
    replaceChildren(
      this._header,
      h(
        'div',
        { className: 'wb-run-heading' },
        h('h2', { className: 'wb-run-title' }, row.id),
        statusBadge(row.status),
        h(
          'span',
          { className: 'wb-run-actions' },
          open,
          button('↻', 'wb-run-refresh', () => void this.load(), 'Read the run again')
        )
      ),
      h(
        'div',
        { className: 'wb-run-facts' },
        h('span', {}, `kinds: ${row.kinds.join(', ') || '–'}`),
        h('span', {}, `model: ${row.model ?? '–'}`),
        h('span', {}, `created: ${when(row.created)}`),
        h('span', {}, `finished: ${when(row.finished)}`)
      ),
      row.command ? h('code', { className: 'wb-run-command' }, row.command) : null,
      row.error ? errorLine(row.error) : null,
      headlineChips(row.headline)
    );
  }

  private _renderBody(detail: IRunDetail): void {
    const row = detail.row;
    const done = row.status !== 'running';
    const charts = h(
      'div',
      { className: 'wb-run-charts' },
      h(
        'div',
        { className: 'wb-empty' },
        done ? 'Drawing the charts…' : 'The charts are drawn when the run ends.'
      )
    );
    const report = h('div', { className: 'wb-run-report' });
    if (row.status === 'complete') {
      const frame = h('iframe', {
        className: 'wb-report-frame',
        sandbox: '',
        referrerpolicy: 'no-referrer',
        title: `Report of ${row.id}`,
        src: this._api.reportUrl(row.id)
      });
      report.appendChild(frame);
    } else {
      report.appendChild(
        h('div', { className: 'wb-empty' }, 'The report is written when the run completes.')
      );
    }
    replaceChildren(
      this._body,
      section('Charts', 'wb-charts-section', charts),
      section('Report', 'wb-report-section', report, row.status === 'complete'),
      section('Provenance', 'wb-provenance', jsonTree('manifest', detail.manifest)),
      section('Results', 'wb-results', jsonTree('results', detail.results), false)
    );
    if (done && row.status !== 'unreadable') {
      this._api
        .getCharts(row.id)
        .then(list => replaceChildren(charts, chartGrid(list.charts, 'This run has no charts.')))
        .catch(error => replaceChildren(charts, errorLine(`Could not draw the charts: ${error.message}`)));
    }
  }

  private async _toNotebook(node: HTMLButtonElement): Promise<void> {
    if (!this._openInNotebook) {
      return;
    }
    node.disabled = true;
    try {
      const root = await this._api.runsRoot();
      await this._openInNotebook(`${root.replace(/\/+$/, '')}/${this.runId}`);
      replaceChildren(this._message);
    } catch (error) {
      replaceChildren(
        this._message,
        errorLine(`Could not open the run in a notebook: ${(error as Error).message}`)
      );
    } finally {
      node.disabled = false;
    }
  }
}
