/** How numbers, times and durations read in the panels. */

import type { Figure, IProgress } from './types';

/** A figure with about four significant digits; integers as they are; text unchanged. */
export function figure(value: Figure | unknown): string {
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) {
      return String(value);
    }
    if (Number.isInteger(value)) {
      return value.toLocaleString('en-US');
    }
    const size = Math.abs(value);
    if (size !== 0 && (size < 1e-3 || size >= 1e6)) {
      return value.toExponential(3);
    }
    return value.toPrecision(4).replace(/\.?0+$/, '');
  }
  if (value === null || value === undefined) {
    return '–';
  }
  return typeof value === 'object' ? JSON.stringify(value) : String(value);
}

/** Seconds as "45 s", "3 min 20 s", "2 h 05 min". */
export function duration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) {
    return '–';
  }
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  }
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}

/** An ISO time as the local date and time, to the minute ("–" when unknown). */
export function when(iso: string | null | undefined): string {
  if (!iso) {
    return '–';
  }
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) {
    return iso;
  }
  const pad = (n: number) => String(n).padStart(2, '0');
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}`
  );
}

/** The fraction done, in [0, 1], or null when the total is unknown. */
export function fraction(progress: IProgress): number | null {
  if (!progress.total || progress.total <= 0) {
    return null;
  }
  return Math.min(1, Math.max(0, progress.done / progress.total));
}

/** "phase · 1,024 / 4,096 tokens · 512 tokens/s" */
export function progressText(progress: IProgress): string {
  const parts = [progress.phase];
  const total = progress.total ? ` / ${figure(progress.total)}` : '';
  parts.push(`${figure(progress.done)}${total} ${progress.unit}`);
  if (progress.rate) {
    parts.push(`${figure(progress.rate)} ${progress.unit}/s`);
  }
  return parts.filter(Boolean).join(' · ');
}

/** "ETA 3 min 20 s" while the command can tell, else the time it has run. */
export function etaText(progress: IProgress): string {
  if (progress.eta_s !== null && progress.eta_s !== undefined) {
    return `ETA ${duration(progress.eta_s)}`;
  }
  return `running ${duration(progress.elapsed_s)}`;
}
