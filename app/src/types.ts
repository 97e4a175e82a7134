/**
 * The JSON shapes of the workbench's Lab API (`<base_url>workbench/api/`), as the server sends them.
 */

/** A run's state as the server reads it from the run folder. */
export type RunStatus = 'running' | 'complete' | 'failed' | 'interrupted' | 'unreadable';

/** A background job's state (a job this server started). */
export type JobStatus = 'running' | 'complete' | 'failed' | 'cancelled';

/** One headline figure: a number, or a short text when the figure is not a number. */
export type Figure = number | string;

/** An optional curve a running command reports, e.g. the training loss so far. */
export interface ICurve {
  name: string;
  x: string;
  points: [number, number][];
}

/** progress.json of a running command. */
export interface IProgress {
  phase: string;
  done: number;
  total: number | null;
  unit: string;
  rate: number | null;
  eta_s: number | null;
  elapsed_s: number;
  updated: string;
  curve: ICurve | null;
}

/** One run folder in the listing. */
export interface IRunRow {
  id: string;
  kinds: string[];
  model: string | null;
  command: string | null;
  status: RunStatus;
  created: string | null;
  finished: string | null;
  headline: Record<string, Figure>;
  progress: IProgress | null;
  error: string | null;
}

export interface IRunList {
  root: string;
  runs: IRunRow[];
}

/** `GET runs/<id>`: the row, the manifest (provenance) and the result dictionaries. */
export interface IRunDetail {
  row: IRunRow;
  manifest: Record<string, unknown>;
  results: Record<string, unknown>[];
}

/** A chart the server rendered to SVG. */
export interface IChart {
  kind?: string;
  name: string;
  title: string;
  svg: string;
}

export interface IChartList {
  charts: IChart[];
}

/** `GET compare?id=..`: same-kind runs side by side. */
export interface ICompare {
  kind: string;
  runs: IRunRow[];
  charts: IChart[];
  table: Record<string, unknown>[];
}

export type FieldType = 'choice' | 'int' | 'float' | 'bool' | 'text';

/** One typed field of a whitelisted command. */
export interface IField {
  name: string;
  type: FieldType;
  choices?: (string | number)[];
  min?: number;
  max?: number;
  /** text: the whole value must match this regular expression */
  pattern?: string;
  required?: boolean;
  default: unknown;
  help: string;
}

export interface ICommandSpec {
  name: string;
  title: string;
  fields: IField[];
}

export interface ICommandList {
  commands: ICommandSpec[];
}

export interface IJob {
  id: string;
  command: string;
  argv: string[];
  run: string;
  status: JobStatus;
  started: string;
  pid: number;
  returncode: number | null;
}

export interface IJobList {
  jobs: IJob[];
}

/** Filters and order of the runs listing (all optional; empty means no filter). */
export interface IRunQuery {
  kind?: string;
  status?: string;
  q?: string;
  sort?: string;
}
