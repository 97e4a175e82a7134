/**
 * The client of the workbench's Lab API. Every request goes through ServerConnection, which adds the
 * token and the XSRF header, and stays on the Jupyter server's own origin.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import type {
  IChartList,
  ICommandList,
  ICompare,
  IJob,
  IJobList,
  IProgress,
  IRunDetail,
  IRunList,
  IRunQuery
} from './types';

/** An error answer of the API, with the server's own message. */
export class APIError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
    this.name = 'APIError';
  }
}

/** A run id is a '/'-separated path under the runs root: each segment is encoded on its own. */
export function runPath(id: string): string {
  return id
    .split('/')
    .map(segment => encodeURIComponent(segment))
    .join('/');
}

/** The message of an error answer: the JSON `message` (or `error`, `reason`), else the text. */
async function errorMessage(response: Response): Promise<string> {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    const message = body.message ?? body.error ?? body.reason;
    if (message) {
      return String(message);
    }
  } catch {
    // not JSON: the text itself says what went wrong
  }
  return text.trim() || `${response.status} ${response.statusText}`;
}

export class WorkbenchAPI {
  readonly settings: ServerConnection.ISettings;
  private _root: string | null = null;

  constructor(settings?: ServerConnection.ISettings) {
    this.settings = settings ?? ServerConnection.makeSettings();
  }

  /** The absolute URL of an API path (relative to `<base_url>workbench/api/`). */
  url(path: string, params?: URLSearchParams): string {
    const base = URLExt.join(this.settings.baseUrl, 'workbench', 'api', path);
    const query = params?.toString();
    return query ? `${base}?${query}` : base;
  }

  private async request<T>(path: string, init: RequestInit = {}, params?: URLSearchParams): Promise<T> {
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(this.url(path, params), init, this.settings);
    } catch (error) {
      throw new APIError(0, `the Jupyter server did not answer: ${error}`);
    }
    if (!response.ok) {
      throw new APIError(response.status, await errorMessage(response));
    }
    if (response.status === 204) {
      return undefined as T;
    }
    return (await response.json()) as T;
  }

  /** The runs under the runs root, filtered and sorted on the server. */
  async listRuns(query: IRunQuery = {}): Promise<IRunList> {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value) {
        params.set(key, value);
      }
    }
    const list = await this.request<IRunList>('runs', {}, params);
    this._root = list.root;
    return list;
  }

  /** The runs root (absolute, as the server sees it); asks the server once. */
  async runsRoot(): Promise<string> {
    if (this._root === null) {
      await this.listRuns();
    }
    return this._root as string;
  }

  getRun(id: string): Promise<IRunDetail> {
    return this.request<IRunDetail>(`runs/${runPath(id)}`);
  }

  getCharts(id: string): Promise<IChartList> {
    return this.request<IChartList>(`runs/${runPath(id)}/charts`);
  }

  getProgress(id: string): Promise<IProgress> {
    return this.request<IProgress>(`runs/${runPath(id)}/progress`);
  }

  /** The report's URL, for an iframe: same origin, authenticated by Lab's cookie (or the token). */
  reportUrl(id: string): string {
    const params = new URLSearchParams();
    if (this.settings.token) {
      params.set('token', this.settings.token);
    }
    return this.url(`runs/${runPath(id)}/report`, params);
  }

  compare(ids: string[]): Promise<ICompare> {
    const params = new URLSearchParams();
    ids.forEach(id => params.append('id', id));
    return this.request<ICompare>('compare', {}, params);
  }

  listCommands(): Promise<ICommandList> {
    return this.request<ICommandList>('commands');
  }

  async startJob(command: string, args: Record<string, unknown>): Promise<IJob> {
    const body = JSON.stringify({ command, args });
    const answer = await this.request<{ job: IJob }>('jobs', { method: 'POST', body });
    return answer.job;
  }

  listJobs(): Promise<IJobList> {
    return this.request<IJobList>('jobs');
  }

  async cancelJob(id: string): Promise<void> {
    await this.request<unknown>(`jobs/${encodeURIComponent(id)}`, { method: 'DELETE' });
  }
}
