/**
 * The job store as the server extension serves it: one client per page, fed by the
 * server-sent event stream, so every view (panel, status bar, rows under cells) reads
 * the same rows and no view polls.
 */
import { URLExt } from '@jupyterlab/coreutils';
import * as nbformat from '@jupyterlab/nbformat';
import { ServerConnection } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { IHistoryEntry, IJob, IJobRecord } from './record';
import { FINAL_STATES } from './states';

export { IHistoryEntry, IJob, IJobRecord };

/** What the detail view shows of a job. */
export interface IJobDetail extends IJob {
  outputs: nbformat.IOutput[];
  /** The log's size, and how much of its end the outputs are. */
  log_bytes: number;
  shown_bytes: number;
  /** The job's state record; its ``history`` tells the job's story. */
  record: Partial<IJobRecord>;
  spec: {
    code: string | null;
    name: string | null;
    env: string | null;
    results: string | null;
    timeout: number | null;
    kernel: string | null;
    workdir: string | null;
    script: string | null;
    memory_limit: number | null;
    checkpoint: boolean | null;
    retries: number | null;
    after: string | null;
  };
}

/** Options of a job started from the IDE (the dialog's fields). */
export interface IRunOptions {
  name: string;
  env: string;
  results: string;
  workdir: string;
  kernel: string;
  timeout: string;
  /** ``8G``, ``300MB``: the job ends, failed, when its kernel holds more. */
  memory_limit: string;
  /** Save its namespace where each section ends, to resume from there. */
  checkpoint: boolean;
  /** Resume it this many times when it fails or dies ("" or "0": never). */
  retries: string;
  /** The jobs it waits for whatever the names (``fit,clean``), ``none``, or "". */
  after: string;
  detach: boolean;
}

/** A cell job's options when nothing was chosen (a script's and the server's differ). */
export const DEFAULT_OPTIONS: IRunOptions = {
  name: '',
  env: 'auto',
  results: 'globals',
  workdir: '',
  kernel: '',
  timeout: '',
  memory_limit: '',
  checkpoint: false,
  retries: '',
  after: '',
  detach: false
};

export function isRunning(job: IJob): boolean {
  return FINAL_STATES.indexOf(job.state) < 0;
}

function apiUrl(settings: ServerConnection.ISettings, path: string): string {
  return URLExt.join(settings.baseUrl, 'bgjobs', 'api', path);
}

/** A request to the server extension; a refusal becomes an Error with its one line. */
export async function request<T>(
  path: string,
  init: RequestInit = {},
  text = false
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const response = await ServerConnection.makeRequest(
    apiUrl(settings, path),
    init,
    settings
  );
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).message || message;
    } catch {
      // not JSON: the status text says it
    }
    throw new Error(message);
  }
  if (response.status === 204) {
    return undefined as T;
  }
  return (text ? response.text() : response.json()) as Promise<T>;
}

/** Every job of this user, kept current by the server's event stream. */
export class JobStore {
  /** The server's root folder, as its kernels see paths. */
  root = '';
  private _jobs = new Map<string, IJob>();
  // Rows removed with an undo still possible: out of every view until then.
  private _hidden = new Set<string>();
  private _everSeen = new Set<string>();
  // Rows that arrive after the first list are news; an end among them is told.
  private _loaded = false;
  private _loadedAt = Date.now();
  // When each row arrived: running rows tick from their elapsed at that moment.
  private _seenAt = new Map<string, number>();
  // Sorted newest first, made again only when the rows change: every view reads it.
  private _sorted: IJob[] | null = null;
  private _running: IJob[] | null = null;
  private _changed = new Signal<this, void>(this);
  private _ended = new Signal<this, IJob>(this);
  private _ticked = new Signal<this, void>(this);
  private _ticker: number;
  private _stopped = false;
  private _ready: Promise<void>;
  private _abort: AbortController | null = null;

  constructor() {
    this._ready = this._connect();
    // One clock for every view's ticking rows; quiet while nothing runs.
    this._ticker = window.setInterval(() => {
      if (this.running.length) {
        this._ticked.emit();
      }
    }, 1000);
  }

  /** Resolves once the first list of jobs has arrived. */
  get ready(): Promise<void> {
    return this._ready;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** A job seen running on this page has ended. */
  get ended(): ISignal<this, IJob> {
    return this._ended;
  }

  /** Once a second while jobs run: their clocks move, nothing else changed. */
  get ticked(): ISignal<this, void> {
    return this._ticked;
  }

  /** Hide a row until ``show``: a Remove that can still be undone. */
  hide(id: string): void {
    this._hidden.add(id);
    this._sorted = this._running = null;
    this._changed.emit();
  }

  /** Show a row ``hide`` hid. */
  show(id: string): void {
    if (this._hidden.delete(id)) {
      this._sorted = this._running = null;
      this._changed.emit();
    }
  }

  get jobs(): IJob[] {
    if (!this._sorted) {
      this._sorted = Array.from(this._jobs.values())
        .filter(job => !this._hidden.has(job.id))
        .sort((a, b) => (b.started || '').localeCompare(a.started || ''));
    }
    return this._sorted;
  }

  get running(): IJob[] {
    if (!this._running) {
      this._running = this.jobs.filter(isRunning);
    }
    return this._running;
  }

  get(id: string): IJob | undefined {
    return this._jobs.get(id);
  }

  /** Seconds the job has run, ticking while it runs. */
  elapsed(job: IJob): number {
    if (!isRunning(job) || !job.started) {
      return job.elapsed || 0;
    }
    const since =
      (Date.now() - (this._seenAt.get(job.id) || Date.now())) / 1000;
    return (job.elapsed || 0) + since;
  }

  /** Jobs that end with the kernel of this notebook (attached, still running). */
  ofNotebook(path: string): IJob[] {
    return this.running.filter(j => j.notebook_path === path);
  }

  async cancel(id: string): Promise<void> {
    await request(`jobs/${id}/cancel`, { method: 'POST' });
  }

  /** Resume an ended job from its newest checkpoint as a detached job of the server;
   * the new job's row. */
  async resume(id: string): Promise<IJob> {
    return request<IJob>(`jobs/${id}/resume`, { method: 'POST' });
  }

  async remove(id: string): Promise<void> {
    try {
      await request(`jobs/${id}`, { method: 'DELETE' });
    } finally {
      this._hidden.delete(id);
    }
    this._jobs.delete(id);
    this._sorted = this._running = null;
    this._changed.emit();
  }

  detail(id: string): Promise<IJobDetail> {
    return request<IJobDetail>(`jobs/${id}`);
  }

  /** The log's last 20 MiB (all of it when smaller). */
  log(id: string): Promise<string> {
    const last = 20 * 1024 * 1024;
    return request<string>(
      `jobs/${id}/log`,
      { headers: { Range: `bytes=-${last}` } },
      true
    );
  }

  /** Start a detached job on the server: a script (``path``) or ``code``. */
  async start(body: { [key: string]: unknown }): Promise<IJob> {
    const job = await request<IJob>('jobs', {
      method: 'POST',
      body: JSON.stringify(body)
    });
    this._take([job], []);
    return job;
  }

  dispose(): void {
    this._stopped = true;
    window.clearInterval(this._ticker);
    this._abort?.abort();
  }

  private _take(rows: IJob[], removed: string[]): void {
    const now = Date.now();
    for (const row of rows) {
      const before = this._jobs.get(row.id);
      this._jobs.set(row.id, row);
      this._seenAt.set(row.id, now);
      this._everSeen.add(row.id);
      // An end is told once: of a job seen running, or of one that ended before this
      // page saw it run (a kernel that could not start) after the page loaded.
      const fresh =
        !before &&
        this._loaded &&
        !isRunning(row) &&
        Date.parse(row.finished || '') >= this._loadedAt;
      if ((before && isRunning(before) && !isRunning(row)) || fresh) {
        this._ended.emit(row);
      }
    }
    for (const id of removed) {
      this._jobs.delete(id);
    }
    this._loaded = true;
    this._sorted = this._running = null;
    this._changed.emit();
  }

  /** Whether this page has had a row of ``id`` (a cell's row says "starting" until it
   * has, and "no longer in the job store" once it had and it went). */
  seen(id: string): boolean {
    return this._everSeen.has(id);
  }

  /** Every job, and the server's root. */
  private async _list(): Promise<IJob[]> {
    const first = await request<{ jobs: IJob[]; root: string }>('jobs');
    this.root = first.root;
    return first.jobs;
  }

  private async _connect(): Promise<void> {
    try {
      this._take(await this._list(), []);
    } catch (reason) {
      // The stream below retries; its first event brings every job.
      console.warn(
        'jupyter-bgjobs: the job store is not reachable yet:',
        reason
      );
    }
    void this._follow();
  }

  /** Read the event stream; reconnect after a break (a server restart, a proxy). */
  private async _follow(): Promise<void> {
    let wait = 500;
    while (!this._stopped) {
      try {
        await this._stream();
        wait = 500;
      } catch {
        wait = Math.min(wait * 2, 10000);
      }
      if (!this._stopped) {
        await new Promise(resolve => setTimeout(resolve, wait));
      }
    }
  }

  private async _stream(): Promise<void> {
    if (!this.root) {
      // The first list failed (the server was starting): the root is asked again.
      await this._list();
    }
    const settings = ServerConnection.makeSettings();
    this._abort = new AbortController();
    const response = await ServerConnection.makeRequest(
      apiUrl(settings, 'events'),
      { signal: this._abort.signal },
      settings
    );
    if (!response.ok || !response.body) {
      throw new Error(response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let first = true;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        return;
      }
      // Events end with a blank line; CRLF and CR count as line ends too.
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(
        /\r\n?/g,
        '\n'
      );
      let cut: number;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event
          .split('\n')
          .filter(line => line.startsWith('data:'))
          .map(line => line.slice(line.startsWith('data: ') ? 6 : 5))
          .join('\n');
        if (!data) {
          continue;
        }
        const change = JSON.parse(data) as {
          jobs: IJob[];
          removed: string[];
          problem?: string;
        };
        if (change.problem) {
          // The store cannot be read (not the user's alone): the server says why.
          console.warn('jupyter-bgjobs:', change.problem);
        }
        if (first) {
          // A new stream starts with every job: what is not in it has gone.
          const ids = new Set(change.jobs.map(j => j.id));
          const gone = Array.from(this._jobs.keys()).filter(id => !ids.has(id));
          change.removed = change.removed.concat(gone);
          first = false;
        }
        this._take(change.jobs, change.removed);
      }
    }
  }
}
