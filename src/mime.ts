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

const JOB_MIME = 'application/vnd.jupyter-bgjobs.job+json';
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
    const data = model.data[JOB_MIME] as
      { id?: string; name?: string; shown?: string } | undefined;
    this._id = data?.id || '';
    this._name = data?.name || this._id;
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
    const job = this._store.get(this._id);
    if (job && isRunning(job)) {
      tickClock(this._row, job, this._store);
    }
  }

  private _changed(): void {
    // The store keeps a row's object until the server sends it anew: the same object is
    // the same row.
    if (this._store.get(this._id) !== this._job) {
      this._render();
    }
  }

  private _render(): void {
    const job = this._store.get(this._id);
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
