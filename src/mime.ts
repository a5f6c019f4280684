/**
 * The row under a ``%%bgjob`` cell, rendered from the job's id (our MIME type), so a
 * reloaded page, a restarted kernel or a notebook reopened days later shows the job's
 * true state from the store; the widget and text in the same bundle are for front ends
 * without this extension.
 */
import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';

import { IJob, isRunning, JobStore } from './api';
import { IRowActions, renderRow, tickClock } from './rows';

export const JOB_MIME = 'application/vnd.jupyter-bgjobs.job+json';

/** What a row under a cell is made from: the job's id, and the cell that started it. A
 * row the IDE puts there before the kernel has run the start (it is busy) says why it
 * waits instead. */
export interface ICellRowData {
  id?: string;
  name?: string;
  shown?: string;
  notebook?: string;
  cell?: string;
  waiting?: string;
}
/** How long a row whose record has not appeared yet says "starting". */
const STARTING_MS = 15000;

class CellRow extends Widget implements IRenderMime.IRenderer {
  constructor(
    private _store: JobStore,
    private _actions: IRowActions
  ) {
    super();
    this.addClass('jp-bgjobs-cellrow');
    this._row = document.createElement('div');
    this._report = document.createElement('div');
    this._report.className = 'jp-bgjobs-report';
    this.node.append(this._row, this._report);
    _store.changed.connect(this._changed, this);
    _store.ticked.connect(this._tick, this);
  }

  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const data = model.data[JOB_MIME] as ICellRowData | undefined;
    this._id = data?.id || '';
    this._name = data?.name || this._id;
    this._cell = data?.cell || '';
    this._notebook = data?.notebook || '';
    this._waiting = data?.waiting || '';
    // A row shown long ago is of a job that had its record then.
    const shown = Date.parse(data?.shown || '');
    this._madeAt = isNaN(shown) ? 0 : Math.min(shown, Date.now());
    await this._store.ready.catch(() => undefined);
    this._render();
  }

  dispose(): void {
    this._store.ticked.disconnect(this._tick, this);
    this._store.changed.disconnect(this._changed, this);
    super.dispose();
  }

  private _tick(): void {
    const job = this._job;
    if (job && isRunning(job)) {
      tickClock(this._row, job, this._store);
    }
  }

  private _changed(): void {
    // The store keeps a row's object until the server sends it anew: the same object is
    // the same row.
    if (this._current() !== this._job) {
      this._render();
    }
  }

  /** The newest job started from this row's cell (a notebook reloaded without being
   * saved holds the row of an older one), else the job the row was made for. */
  private _current(): IJob | undefined {
    const own = this._store.get(this._id);
    if (!this._cell) {
      return own;
    }
    let newest = own;
    for (const job of this._store.jobs) {
      if (
        job.cell_id === this._cell &&
        (job.notebook || '') === this._notebook &&
        (!newest || startedAt(job) > startedAt(newest))
      ) {
        newest = job;
      }
    }
    return newest;
  }

  private _render(): void {
    if (this._waiting) {
      this._row.className = 'jp-bgjobs-row jp-bgjobs-state-pending';
      delete this._row.dataset.built;
      this._row.setAttribute('role', 'status');
      this._row.textContent = `◌ ${this._name}: ${this._waiting}`;
      return;
    }
    const job = this._current();
    this._job = job;
    if (!job) {
      this._row.className = 'jp-bgjobs-row jp-bgjobs-missing';
      delete this._row.dataset.built;
      const young = Date.now() - this._madeAt < STARTING_MS;
      this._row.textContent =
        this._store.seen(this._id) || !young
          ? `Background job ${this._name} is no longer in the job store ` +
            '(removed, or pruned after its time).'
          : `Background job ${this._name} is starting…`;
      if (!this._store.seen(this._id) && young) {
        // Looked at again once the record had time to appear.
        window.setTimeout(() => this._render(), STARTING_MS);
      }
      return;
    }
    renderRow(this._row, job, this._store, this._actions);
    this._report.textContent = job.report;
  }

  private _row: HTMLElement;
  private _report: HTMLElement;
  private _id = '';
  private _name = '';
  private _job: IJob | undefined = undefined;
  private _madeAt = 0;
  private _cell = '';
  private _notebook = '';
  private _waiting = '';
}

/** When a job started; one not started yet is the newest of all. */
function startedAt(job: IJob): number {
  const at = Date.parse(job.started || '');
  return isNaN(at) ? Infinity : at;
}

/** The renderer's factory; preferred over the widget (rank -10) and every text form. */
export function rendererFactory(
  store: JobStore,
  actions: IRowActions
): IRenderMime.IRendererFactory {
  return {
    safe: true,
    mimeTypes: [JOB_MIME],
    defaultRank: -20,
    createRenderer: () => new CellRow(store, actions)
  };
}
