/**
 * The Jobs panel of the whole IDE: every job from the server, running then ended, and a
 * detail view with the live output (JupyterLab's renderers), the merge report and the log.
 */
import { OutputArea, OutputAreaModel } from '@jupyterlab/outputarea';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { Widget } from '@lumino/widgets';

import { IJob, isRunning, JobStore } from './api';
import { jobsIcon } from './icons';
import { IRowActions, renderRow, stateLabel, tickClock } from './rows';

/** Where the panel sits in the right-hand area, opened at start or again later. */
export const PANEL_RANK = 600;

export class JobsPanel extends Widget {
  constructor(
    private _store: JobStore,
    private _rendermime: IRenderMimeRegistry,
    private _actions: IRowActions
  ) {
    super();
    this.id = 'jupyter-bgjobs-panel';
    this.addClass('jp-bgjobs-panel');
    this.title.icon = jobsIcon;
    this.title.caption = 'Background jobs';
    this._list = document.createElement('div');
    this._list.className = 'jp-bgjobs-list';
    this._detailNode = document.createElement('div');
    this._detailNode.className = 'jp-bgjobs-detail';
    this._detailNode.hidden = true;
    this.node.appendChild(this._list);
    this.node.appendChild(this._detailNode);
    this._outputs = new OutputArea({
      model: new OutputAreaModel({ trusted: false }),
      rendermime: this._rendermime
    });
    this._listActions = { ..._actions, open: j => this.showJob(j.id) };
    _store.changed.connect(this._render, this);
    // The clocks tick; nothing else is asked of the server.
    _store.ticked.connect(this._tick, this);
    this._render();
  }

  /** Show one job's detail (``id``) or, with none, the list. */
  showJob(id: string | null): void {
    this._shown = id;
    this._fetchedFor = '';
    this._log = null;
    this._render();
  }

  dispose(): void {
    this._store.ticked.disconnect(this._tick, this);
    this._store.changed.disconnect(this._render, this);
    this._outputs.dispose();
    super.dispose();
  }

  private _tick(): void {
    if (!this.isVisible) {
      return;
    }
    const rows = this._shown
      ? [this._row]
      : Array.from(this._list.querySelectorAll<HTMLElement>('.jp-bgjobs-row'));
    for (const node of rows) {
      const job = this._store.get(node.dataset.jobId || '');
      if (job && isRunning(job)) {
        tickClock(node, job, this._store);
      }
    }
  }

  private _render(): void {
    const job = this._shown ? this._store.get(this._shown) : undefined;
    this._list.hidden = Boolean(job);
    this._detailNode.hidden = !job;
    if (job) {
      this._renderDetail(job);
    } else {
      this._renderList();
    }
  }

  private _renderList(): void {
    const jobs = this._store.jobs;
    const running = jobs.filter(isRunning);
    const ended = jobs.filter(j => !isRunning(j));
    this._list.replaceChildren();
    const header = document.createElement('div');
    header.className = 'jp-bgjobs-header';
    header.textContent = 'Background jobs';
    this._list.appendChild(header);
    if (!jobs.length) {
      const empty = document.createElement('div');
      empty.className = 'jp-bgjobs-empty';
      empty.textContent =
        'No jobs yet. Run a cell with "Run Cell as Background Job", a .py file with ' +
        '"Run as Background Job", or %%bgjob in a cell.';
      this._list.appendChild(empty);
      return;
    }
    for (const [title, group] of [
      ['Running', running],
      ['Ended', ended]
    ] as [string, IJob[]][]) {
      if (!group.length) {
        continue;
      }
      const section = document.createElement('section');
      section.className = 'jp-bgjobs-group';
      section.dataset.group = title.toLowerCase();
      const h = document.createElement('h3');
      h.textContent = `${title} (${group.length})`;
      section.appendChild(h);
      for (const job of group) {
        const row = document.createElement('div');
        renderRow(row, job, this._store, this._listActions);
        row.addEventListener('click', () => this.showJob(job.id));
        section.appendChild(row);
      }
      this._list.appendChild(section);
    }
  }

  private _renderDetail(job: IJob): void {
    const node = this._detailNode;
    if (!node.firstChild || node.dataset.jobId !== job.id) {
      // Out of the old detail first: Lumino cannot detach a widget whose host is gone.
      if (this._outputs.isAttached) {
        Widget.detach(this._outputs);
      }
      node.replaceChildren();
      node.dataset.jobId = job.id;
      const back = document.createElement('button');
      back.className = 'jp-bgjobs-button jp-bgjobs-back';
      back.textContent = '← All jobs';
      back.addEventListener('click', () => this.showJob(null));
      this._row = document.createElement('div');
      this._report = document.createElement('div');
      this._report.className = 'jp-bgjobs-report';
      this._history = document.createElement('ol');
      this._history.className = 'jp-bgjobs-history';
      this._history.setAttribute('aria-label', 'History');
      const outputs = document.createElement('div');
      outputs.className = 'jp-bgjobs-outputs';
      const logButton = document.createElement('button');
      logButton.className = 'jp-bgjobs-button jp-bgjobs-log-button';
      logButton.textContent = 'Full log';
      logButton.addEventListener('click', () => void this._loadLog(job.id));
      this._logNode = document.createElement('pre');
      this._logNode.className = 'jp-bgjobs-log';
      node.append(
        back,
        this._row,
        this._report,
        this._history,
        outputs,
        logButton
      );
      node.appendChild(this._logNode);
      Widget.attach(this._outputs, outputs);
    }
    renderRow(this._row, job, this._store, this._actions);
    this._logNode.hidden = this._log === null;
    this._logNode.textContent = this._log || '';
    // The output follows the job: fetched again when its record changed.
    const key = JSON.stringify([
      job.state,
      job.progress,
      job.status,
      job.section,
      job.report
    ]);
    if (key !== this._fetchedFor) {
      this._fetchedFor = key;
      void this._fetch(job.id);
    }
  }

  private async _fetch(id: string): Promise<void> {
    // Answers can arrive out of order: only the newest request's is shown.
    const seq = ++this._seq;
    try {
      const detail = await this._store.detail(id);
      if (this._shown !== id || seq !== this._seq) {
        return;
      }
      this._report.textContent = detail.report;
      this._report.hidden = !detail.report;
      this._history.replaceChildren(
        ...(detail.record?.history || []).map(entry => {
          const item = document.createElement('li');
          const why = entry.reason ? ` (${entry.reason})` : '';
          // The time of day of an ISO stamp, then what happened.
          item.textContent = `${entry.at.slice(11, 19)} ${entry.event} → ${stateLabel(entry.state)}${why}`;
          return item;
        })
      );
      const model = this._outputs.model;
      model.clear();
      for (const output of detail.outputs) {
        model.add(output);
      }
    } catch (reason) {
      this._fetchedFor = ''; // asked again at the job's next change
      this._report.textContent = `Could not read the job: ${reason}`;
    }
  }

  private async _loadLog(id: string): Promise<void> {
    try {
      this._log = await this._store.log(id);
    } catch (reason) {
      this._log = `No log: ${reason}`;
    }
    this._render();
  }

  private _list: HTMLElement;
  private _detailNode: HTMLElement;
  private _row: HTMLElement = document.createElement('div');
  private _report: HTMLElement = document.createElement('div');
  private _history: HTMLElement = document.createElement('ol');
  private _logNode: HTMLElement = document.createElement('pre');
  private _outputs: OutputArea;
  private _shown: string | null = null;
  private _fetchedFor = '';
  private _seq = 0;
  private _log: string | null = null;
  private _listActions: IRowActions;
}
