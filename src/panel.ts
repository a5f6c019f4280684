/**
 * The Jobs panel of the whole IDE: every job from the server, running then ended, and a
 * detail view with the live output (JupyterLab's renderers), the merge report and the log.
 *
 * Rows are kept by job id and updated in place: a focused button keeps its focus, and
 * while the pointer (or the keyboard's focus) is in the list, rows keep their places; the
 * order catches up once it leaves. A filter by text and state, grouping by notebook and
 * sorting by start or end, with Stop all and Clear ended for what the filter shows.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { OutputArea, OutputAreaModel } from '@jupyterlab/outputarea';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { IJob, IJobDetail, isRunning, JobStore } from './api';
import { jobsIcon } from './icons';
import {
  IRowActions,
  origin,
  renderRow,
  sizeText,
  stateLabel,
  tickClock,
  when
} from './rows';
import { usagePlot } from './usage';

/** Where the panel sits in the right-hand area, opened at start or again later. */
export const PANEL_RANK = 600;

/** A size in words: ``256 KiB``, ``50.0 MiB``. */
function size(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit && value % 1
    ? `${value.toFixed(1)} ${units[unit]}`
    : `${value} ${units[unit]}`;
}

/** How long rows keep their places after the pointer last moved over the list. */
const HOLD_MS = 5000;

// Each group's heading has an id of its own, for its list's name.
let groupIds = 0;

/** What the list shows, as the toolbar says. */
interface IView {
  text: string;
  state: string;
  group: boolean;
  sort: string;
}

function control<T extends HTMLElement>(
  tag: string,
  cls: string,
  label: string
): T {
  const node = document.createElement(tag) as T;
  node.className = cls;
  node.setAttribute('aria-label', label);
  node.title = label;
  return node;
}

function option(select: HTMLSelectElement, value: string, text: string): void {
  const node = document.createElement('option');
  node.value = value;
  node.textContent = text;
  select.appendChild(node);
}

export class JobsPanel extends Widget {
  /** ``only``: the id of the one job this widget shows the detail of (a tab of the main
   * area, where tracebacks and plots have room), with no list to go back to. */
  constructor(
    private _store: JobStore,
    private _rendermime: IRenderMimeRegistry,
    private _actions: IRowActions,
    private _only: string | null = null
  ) {
    super();
    this.id = _only ? `jupyter-bgjobs-job-${_only}` : 'jupyter-bgjobs-panel';
    this.addClass('jp-bgjobs-panel');
    if (_only) {
      this.addClass('jp-bgjobs-tab');
    }
    this.title.icon = jobsIcon;
    this.title.caption = 'Background jobs';
    this._shown = _only;
    this._list = document.createElement('div');
    this._list.className = 'jp-bgjobs-list';
    this._header = this._makeHeader();
    this._body = document.createElement('div');
    this._body.className = 'jp-bgjobs-rows';
    this._list.append(this._header, this._body);
    this._live = document.createElement('div');
    this._live.className = 'jp-bgjobs-live';
    this._live.setAttribute('role', 'status');
    this._live.setAttribute('aria-live', 'polite');
    this._detailNode = document.createElement('div');
    this._detailNode.className = 'jp-bgjobs-detail';
    this._detailNode.hidden = true;
    this.node.append(this._list, this._detailNode, this._live);
    this._outputs = new OutputArea({
      model: new OutputAreaModel({ trusted: false }),
      rendermime: this._rendermime
    });
    this._listActions = { ..._actions, open: j => this.showJob(j.id) };
    // Rows keep their places while the pointer moves over the list (a click is being
    // aimed), and for a few seconds after it stops; then the order catches up.
    this._body.addEventListener('pointermove', () => this._hold());
    // So do they while the keyboard moves among them.
    this._body.addEventListener('focusin', () => this._hold());
    this._body.addEventListener('keydown', () => this._hold());
    this._body.addEventListener('pointerleave', () => {
      this._heldUntil = 0;
      this._render();
    });
    this.node.addEventListener('keydown', event => this._key(event));
    _store.changed.connect(this._changed, this);
    _store.ended.connect(this._announce, this);
    // The clocks tick; nothing else is asked of the server.
    _store.ticked.connect(this._tick, this);
    if (!_only) {
      this._render();
    }
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    // A tab's detail is drawn once it is in the page: its output area attaches there.
    if (this._only) {
      this._render();
    }
  }

  /** Show one job's detail (``id``) or, with none, the list. */
  showJob(id: string | null): void {
    if (this._only) {
      return; // a tab shows its one job
    }
    if (id && !this._shown) {
      this._scroll = this.node.scrollTop;
    }
    // The keyboard goes where the eyes go: into the detail, and back to the job's row.
    const focused = this.node.contains(document.activeElement);
    const was = this._shown;
    this._shown = id;
    this._fetchedFor = '';
    this._log = null;
    this._render();
    if (!id) {
      // "All jobs" returns to where the list was.
      this.node.scrollTop = this._scroll;
    }
    if (focused && id) {
      this._detailNode.querySelector<HTMLElement>('button')?.focus();
    } else if (focused && was) {
      this._rows.get(was)?.focus();
    }
  }

  /** What the list shows now: the toolbar's filter, grouping and order. */
  get view(): IView {
    return { ...this._view };
  }

  dispose(): void {
    this._store.ticked.disconnect(this._tick, this);
    this._store.ended.disconnect(this._announce, this);
    this._store.changed.disconnect(this._changed, this);
    this._outputs.dispose();
    super.dispose();
  }

  private _makeHeader(): HTMLElement {
    const header = document.createElement('div');
    header.className = 'jp-bgjobs-header';
    const title = document.createElement('div');
    title.className = 'jp-bgjobs-title';
    title.textContent = 'Background jobs';
    const tools = document.createElement('div');
    tools.className = 'jp-bgjobs-tools';
    const text = control<HTMLInputElement>(
      'input',
      'jp-mod-styled jp-bgjobs-filter',
      'Filter jobs by name or notebook'
    );
    text.type = 'search';
    text.placeholder = 'Filter';
    text.addEventListener('input', () => {
      this._view.text = text.value.trim().toLowerCase();
      this._render(true);
    });
    const state = control<HTMLSelectElement>(
      'select',
      'jp-mod-styled jp-bgjobs-state-filter',
      'Show jobs in state'
    );
    option(state, '', 'All');
    option(state, 'running', 'Running');
    option(state, 'ended', 'Ended');
    option(state, 'failed', 'Failed or died');
    state.addEventListener('change', () => {
      this._view.state = state.value;
      this._render(true);
    });
    const sort = control<HTMLSelectElement>(
      'select',
      'jp-mod-styled jp-bgjobs-sort',
      'Sort jobs by'
    );
    option(sort, 'started', 'By start');
    option(sort, 'finished', 'By end');
    sort.addEventListener('change', () => {
      this._view.sort = sort.value;
      this._render(true);
    });
    const group = control<HTMLInputElement>(
      'input',
      'jp-bgjobs-group-toggle',
      'Group jobs by notebook'
    );
    group.type = 'checkbox';
    const groupLabel = document.createElement('label');
    groupLabel.className = 'jp-bgjobs-group-label';
    groupLabel.append(group, document.createTextNode(' by notebook'));
    group.addEventListener('change', () => {
      this._view.group = group.checked;
      this._render(true);
    });
    const stopAll = control<HTMLButtonElement>(
      'button',
      'jp-bgjobs-button jp-bgjobs-stop-all',
      'Stop all running jobs shown'
    );
    stopAll.type = 'button';
    stopAll.textContent = 'Stop all';
    stopAll.addEventListener('click', () => void this._stopAll());
    const clear = control<HTMLButtonElement>(
      'button',
      'jp-bgjobs-button jp-bgjobs-clear',
      'Clear ended jobs shown'
    );
    clear.type = 'button';
    clear.textContent = 'Clear ended';
    clear.addEventListener('click', () => void this._clearEnded());
    tools.append(text, state, sort, groupLabel, stopAll, clear);
    header.append(title, tools);
    return header;
  }

  private _tick(): void {
    if (!this.isVisible) {
      return;
    }
    const rows = this._shown ? [this._row] : Array.from(this._rows.values());
    for (const node of rows) {
      const job = this._store.get(node.dataset.jobId || '');
      if (job && isRunning(job)) {
        tickClock(node, job, this._store);
      }
    }
  }

  private _hold(): void {
    this._heldUntil = Date.now() + HOLD_MS;
    window.clearTimeout(this._release);
    this._release = window.setTimeout(() => this._render(), HOLD_MS + 50);
  }

  private _changed(): void {
    this._render();
  }

  private _announce(_: JobStore, job: IJob): void {
    const why =
      job.reason && job.state !== 'succeeded' ? `: ${job.reason}` : '';
    this._live.textContent = `${job.name} ${stateLabel(job.state)}${why}`;
  }

  private _render(force = false): void {
    const job = this._shown ? this._store.get(this._shown) : undefined;
    this._list.hidden = Boolean(job);
    this._detailNode.hidden = !job;
    if (job) {
      this._renderDetail(job);
    } else {
      this._renderList(force);
    }
  }

  /** The jobs the toolbar lets through, in its order. */
  private _shownJobs(): IJob[] {
    const { text, state, sort } = this._view;
    let jobs = this._store.jobs.filter(job => {
      if (
        text &&
        !`${job.name} ${origin(job)} ${job.kind}`.toLowerCase().includes(text)
      ) {
        return false;
      }
      if (state === 'running') {
        return isRunning(job);
      }
      if (state === 'ended') {
        return !isRunning(job);
      }
      if (state === 'failed') {
        return job.state === 'failed' || job.state === 'died';
      }
      return true;
    });
    if (sort === 'finished') {
      jobs = [...jobs].sort((a, b) =>
        (b.finished || '9').localeCompare(a.finished || '9')
      );
    }
    return jobs;
  }

  /** The groups of the list: each sweep's runs under one row of its own, then the
   * other jobs running and ended; or one group per notebook. */
  private _groups(jobs: IJob[]): [string, string, IJob[]][] {
    if (!this._view.group) {
      const sweeps = new Map<string, IJob[]>();
      for (const job of jobs.filter(j => j.sweep)) {
        sweeps.set(job.sweep, [...(sweeps.get(job.sweep) || []), job]);
      }
      const rest = jobs.filter(j => !j.sweep);
      return [
        ...Array.from(sweeps.entries()).map(
          ([id, runs]) =>
            [`sweep:${id}`, sweepSummary(id, runs), runs] as [
              string,
              string,
              IJob[]
            ]
        ),
        ['running', 'Running', rest.filter(isRunning)],
        ['ended', 'Ended', rest.filter(j => !isRunning(j))]
      ];
    }
    const by = new Map<string, IJob[]>();
    for (const job of jobs) {
      const key = origin(job) || 'other';
      by.set(key, [...(by.get(key) || []), job]);
    }
    return Array.from(by.entries()).map(([key, group]) => [
      `notebook:${key}`,
      key,
      group
    ]);
  }

  private _renderList(force: boolean): void {
    const jobs = this._shownJobs();
    const all = this._store.jobs;
    // Rows of jobs that are gone go; the others are updated where they are.
    for (const [id, node] of this._rows) {
      if (!all.some(j => j.id === id)) {
        node.remove();
        this._rows.delete(id);
      }
    }
    if (!all.length) {
      this._body.replaceChildren(this._empty());
      this._sections.clear();
      return;
    }
    if (Date.now() < this._heldUntil && !force) {
      // Under the pointer or the focus: rows change in place and keep their places.
      for (const job of all) {
        const node = this._rows.get(job.id);
        if (node) {
          renderRow(node, job, this._store, this._listActions);
        }
      }
      this._updateHeadings(jobs);
      return;
    }
    // A focused row that moves keeps the focus (a node moved in the DOM loses it).
    const active = document.activeElement as HTMLElement | null;
    const focused = active && this._body.contains(active) ? active : null;
    this._place(jobs);
    if (
      focused &&
      document.activeElement !== focused &&
      this._body.contains(focused)
    ) {
      focused.focus({ preventScroll: true });
    }
    this._updateHeadings(jobs);
  }

  /** Put the rows of ``jobs`` in their groups and order, moving only what is out of place. */
  private _place(jobs: IJob[]): void {
    const wanted = this._groups(jobs).filter(([, , group]) => group.length);
    const keep = new Set(wanted.map(([key]) => key));
    for (const [key, section] of this._sections) {
      if (!keep.has(key)) {
        section.remove();
        this._sections.delete(key);
      }
    }
    let before: Element | null = this._body.firstElementChild;
    if (before && before.classList.contains('jp-bgjobs-empty')) {
      before.remove();
      before = this._body.firstElementChild;
    }
    for (const [key, title, group] of wanted) {
      const section = this._section(key, title);
      if (section !== before) {
        this._body.insertBefore(section, before);
      }
      before = section.nextElementSibling;
      const heading = section.firstElementChild as HTMLElement;
      const words = heading.querySelector('.jp-bgjobs-group-title');
      if (words) {
        // A sweep's row: its summary, and Stop while any of its runs has not ended.
        words.textContent = title;
        const stop = heading.querySelector('button') as HTMLButtonElement;
        stop.hidden = !group.some(isRunning);
      } else {
        heading.textContent = `${title} (${group.length})`;
      }
      const list = section.lastElementChild as HTMLElement;
      let at: Element | null = list.firstElementChild;
      for (const job of group) {
        const node = this._rowFor(job);
        renderRow(node, job, this._store, this._listActions);
        // Moved only when out of place: a node moved would lose its focus.
        if (node !== at) {
          list.insertBefore(node, at);
        }
        at = node.nextElementSibling;
      }
      while (at) {
        const next = at.nextElementSibling;
        at.remove();
        at = next;
      }
    }
  }

  private _updateHeadings(jobs: IJob[]): void {
    const title = this._header.querySelector('.jp-bgjobs-title') as HTMLElement;
    const running = jobs.filter(isRunning).length;
    const hidden = this._store.jobs.length - jobs.length;
    title.textContent =
      `Background jobs (${running} running)` +
      (hidden ? ` · ${hidden} hidden by the filter` : '');
  }

  private _empty(): HTMLElement {
    const empty = document.createElement('div');
    empty.className = 'jp-bgjobs-empty';
    empty.textContent =
      'No jobs yet. Run a cell with "Run Cell as Background Job", a .py file with ' +
      '"Run as Background Job", or %%bgjob in a cell.';
    return empty;
  }

  private _section(key: string, title: string): HTMLElement {
    let section = this._sections.get(key);
    if (!section) {
      section = document.createElement('section');
      section.className = 'jp-bgjobs-group';
      section.dataset.group =
        key.startsWith('notebook:') || key.startsWith('sweep:')
          ? key
          : title.toLowerCase();
      const heading = document.createElement('h3');
      heading.id = `jp-bgjobs-group-${++groupIds}`;
      if (key.startsWith('sweep:')) {
        this._sweepHeading(heading, key.slice('sweep:'.length));
      }
      // The group's rows: a list, named by its heading.
      const list = document.createElement('div');
      list.className = 'jp-bgjobs-group-rows';
      list.setAttribute('role', 'list');
      list.setAttribute('aria-labelledby', heading.id);
      section.append(heading, list);
      this._sections.set(key, section);
    }
    return section;
  }

  /** A sweep's heading: its summary and a Stop that stops every run not ended. */
  private _sweepHeading(heading: HTMLElement, id: string): void {
    heading.classList.add('jp-bgjobs-sweep');
    const words = document.createElement('span');
    words.className = 'jp-bgjobs-group-title';
    const stop = document.createElement('button');
    stop.type = 'button';
    stop.className = 'jp-bgjobs-button jp-bgjobs-stop jp-bgjobs-sweep-stop';
    stop.textContent = 'Stop';
    const name = sweepName(id);
    stop.setAttribute('aria-label', `Stop sweep ${name}`);
    stop.title = `Stop every run of ${name}`;
    stop.addEventListener('click', () => {
      for (const job of this._store.jobs) {
        if (job.sweep === id && isRunning(job) && job.can_stop) {
          this._actions.stop(job);
        }
      }
    });
    heading.append(words, ' ', stop);
  }

  private _rowFor(job: IJob): HTMLElement {
    let node = this._rows.get(job.id);
    if (!node) {
      node = document.createElement('div');
      node.tabIndex = -1;
      node.setAttribute('role', 'listitem');
      const id = job.id;
      node.addEventListener('click', () => this.showJob(id));
      node.addEventListener('keydown', event => {
        if (event.key === 'Enter' && event.target === node) {
          // Its default would press the button the focus moves to.
          event.preventDefault();
          this.showJob(id);
        }
      });
      this._rows.set(job.id, node);
    }
    return node;
  }

  /** The pane's keys: ↓/↑ (and Home/End) move between rows, Enter opens the focused
   * row's detail, Escape goes back to the list, / goes to the filter. A key typed into
   * a field or on a button is that field's or button's. */
  private _key(event: KeyboardEvent): void {
    const target = event.target as HTMLElement;
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName);
    if (event.key === 'Escape' && this._shown && !this._only && !typing) {
      event.preventDefault();
      this.showJob(null);
      return;
    }
    if (
      typing ||
      this._shown ||
      event.altKey ||
      event.ctrlKey ||
      event.metaKey
    ) {
      return;
    }
    if (event.key === '/') {
      event.preventDefault();
      this._header
        .querySelector<HTMLInputElement>('.jp-bgjobs-filter')
        ?.focus();
      return;
    }
    const moves: { [key: string]: number } = {
      ArrowDown: 1,
      ArrowUp: -1,
      Home: -Infinity,
      End: Infinity
    };
    if (!(event.key in moves)) {
      return;
    }
    const rows = Array.from(
      this._body.querySelectorAll<HTMLElement>('[role="listitem"]')
    ).filter(row => row.offsetParent !== null);
    if (!rows.length) {
      return;
    }
    event.preventDefault();
    const at = rows.findIndex(row => row.contains(target));
    const step = moves[event.key];
    const next = isFinite(step)
      ? Math.min(rows.length - 1, Math.max(0, at < 0 ? 0 : at + step))
      : step < 0
        ? 0
        : rows.length - 1;
    rows[next].focus();
  }

  private async _stopAll(): Promise<void> {
    const running = this._shownJobs().filter(j => isRunning(j) && j.can_stop);
    if (!running.length) {
      return;
    }
    const names = running.map(j => j.name).join(', ');
    const answer = await showDialog({
      title: `Stop ${running.length} running job${running.length === 1 ? '' : 's'}?`,
      body: `These stop now: ${names}.`,
      buttons: [
        Dialog.cancelButton(),
        Dialog.warnButton({ label: `Stop ${running.length}` })
      ]
    });
    if (answer.button.accept) {
      for (const job of running) {
        this._actions.stop(job);
      }
    }
  }

  private async _clearEnded(): Promise<void> {
    const ended = this._shownJobs().filter(j => !isRunning(j));
    if (!ended.length) {
      return;
    }
    const answer = await showDialog({
      title: `Clear ${ended.length} ended job${ended.length === 1 ? '' : 's'}?`,
      body: 'Their rows, records and logs are removed from the job store.',
      buttons: [
        Dialog.cancelButton(),
        Dialog.warnButton({ label: `Clear ${ended.length}` })
      ]
    });
    if (answer.button.accept) {
      for (const job of ended) {
        this._actions.remove(job);
      }
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
      back.hidden = Boolean(this._only);
      // The detail in the main area, where it has room.
      const tab = document.createElement('button');
      tab.className = 'jp-bgjobs-button jp-bgjobs-tab-button';
      tab.textContent = 'Open in a tab';
      tab.hidden = Boolean(this._only) || !this._actions.tab;
      tab.addEventListener('click', () => this._actions.tab?.(job));
      this._row = document.createElement('div');
      this._report = document.createElement('div');
      this._report.className = 'jp-bgjobs-report';
      this._usage = document.createElement('div');
      this._usage.className = 'jp-bgjobs-usage-detail';
      this._point = document.createElement('div');
      this._point.className = 'jp-bgjobs-checkpoint';
      this._waits = document.createElement('div');
      this._waits.className = 'jp-bgjobs-waits';
      this._history = document.createElement('ol');
      this._history.className = 'jp-bgjobs-history';
      this._history.setAttribute('aria-label', 'History');
      // What it ran, and with which options: the code or the script.
      this._ran = document.createElement('details');
      this._ran.className = 'jp-bgjobs-ran';
      this._cut = document.createElement('div');
      this._cut.className = 'jp-bgjobs-cut';
      this._cut.hidden = true;
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
        tab,
        this._row,
        this._report,
        this._waits,
        this._point,
        this._usage,
        this._history,
        this._ran,
        this._cut,
        outputs,
        logButton
      );
      node.appendChild(this._logNode);
      Widget.attach(this._outputs, outputs);
    }
    renderRow(this._row, job, this._store, this._actions);
    this._waits.textContent = waitsText(job, this._store.jobs);
    this._waits.hidden = !this._waits.textContent;
    this._logNode.hidden = this._log === null;
    this._logNode.textContent = this._log || '';
    // The output follows the job: fetched again when its record changed.
    const key = JSON.stringify([
      job.state,
      job.progress,
      job.status,
      job.section,
      job.report,
      job.resources?.peak
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
      this._point.textContent = checkpointText(detail.record?.checkpoint);
      this._point.hidden = !this._point.textContent;
      this._cut.textContent =
        detail.log_bytes > detail.shown_bytes
          ? `Showing the last ${size(detail.shown_bytes)} of ${size(detail.log_bytes)}; ` +
            'Full log shows more.'
          : '';
      this._cut.hidden = !this._cut.textContent;
      this._showRan(detail);
      const plot = usagePlot(detail.record?.usage, detail.record?.resources);
      this._usage.replaceChildren(...(plot ? [plot] : []));
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

  private _showRan(detail: IJobDetail): void {
    const spec = detail.spec;
    const summary = document.createElement('summary');
    summary.textContent = spec.script ? `Script: ${spec.script}` : 'Code';
    const options = document.createElement('div');
    options.className = 'jp-bgjobs-options';
    options.textContent = [
      `started ${when(detail.started) || '–'}`,
      detail.finished ? `ended ${when(detail.finished)}` : '',
      spec.env ? `env ${spec.env}` : '',
      spec.results ? `results ${spec.results}` : '',
      spec.kernel ? `kernel ${spec.kernel}` : '',
      spec.timeout ? `timeout ${spec.timeout} s` : '',
      spec.memory_limit ? `memory limit ${sizeText(spec.memory_limit)}` : '',
      spec.checkpoint ? 'checkpoints' : '',
      spec.retries ? `retries ${spec.retries}` : '',
      spec.after ? `after ${spec.after}` : '',
      spec.workdir ? `workdir ${spec.workdir}` : ''
    ]
      .filter(Boolean)
      .join(' · ');
    const code = document.createElement('pre');
    code.className = 'jp-bgjobs-code';
    code.textContent = spec.code ?? '';
    code.hidden = !spec.code;
    this._ran.replaceChildren(summary, options, code);
    this._ran.hidden = !spec.code && !spec.script;
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
  private _header: HTMLElement;
  private _body: HTMLElement;
  private _live: HTMLElement;
  private _rows = new Map<string, HTMLElement>();
  private _sections = new Map<string, HTMLElement>();
  private _heldUntil = 0;
  private _release = 0;
  private _scroll = 0;
  private _view: IView = { text: '', state: '', group: false, sort: 'started' };
  private _detailNode: HTMLElement;
  private _row: HTMLElement = document.createElement('div');
  private _report: HTMLElement = document.createElement('div');
  private _history: HTMLElement = document.createElement('ol');
  private _usage: HTMLElement = document.createElement('div');
  private _point: HTMLElement = document.createElement('div');
  private _waits: HTMLElement = document.createElement('div');
  private _ran: HTMLElement = document.createElement('details');
  private _cut: HTMLElement = document.createElement('div');
  private _logNode: HTMLElement = document.createElement('pre');
  private _outputs: OutputArea;
  private _shown: string | null = null;
  private _fetchedFor = '';
  private _seq = 0;
  private _log: string | null = null;
  private _listActions: IRowActions;
}

/** A job's newest checkpoint in words: where it was taken, what it holds, when. */
export function checkpointText(
  point: { [fact: string]: string | number } | undefined
): string {
  if (!point || point.statement === undefined) {
    return '';
  }
  const left = Number(point.skipped || 0);
  const at =
    typeof point.at === 'number'
      ? new Date(point.at * 1000).toLocaleTimeString()
      : '';
  return (
    `Checkpoint after section ${point.section || '(unnamed)'}: ` +
    `statement ${Number(point.statement) + 1}/${point.total} next, ` +
    `${sizeText(Number(point.nbytes || 0))}, ${point.names} names` +
    (left ? `, ${left} not kept (see the report)` : '') +
    (at ? `, at ${at}` : '') +
    '. Resume goes on from it.'
  );
}

/** A sweep's name, from its id (``fit-3fa2c1``). */
function sweepName(id: string): string {
  return id.replace(/-[0-9a-f]{6}$/, '');
}

/** A sweep's row: ``fit: 6 runs, 4 done, 1 failed, 1 running``. */
export function sweepSummary(id: string, runs: IJob[]): string {
  const count = (states: string[]) =>
    runs.filter(j => states.includes(j.state)).length;
  const words = [`${runs.length} runs`, `${count(['succeeded'])} done`];
  const failed = count(['failed', 'died', 'timed_out']);
  const stopped = count(['cancelled']);
  const running = runs.filter(isRunning).length;
  if (failed) {
    words.push(`${failed} failed`);
  }
  if (stopped) {
    words.push(`${stopped} cancelled`);
  }
  if (running) {
    words.push(`${running} running`);
  }
  return `${sweepName(id)}: ${words.join(', ')}`;
}

/** What a job waits for, and which jobs wait for it (while they have not started). */
export function waitsText(job: IJob, all: IJob[]): string {
  const parts: string[] = [];
  if (job.state === 'waiting' && job.waits_for.length) {
    parts.push(`Waits for ${job.waits_for.join(', ')}.`);
  }
  const waiting = all.filter(
    j => j.state === 'waiting' && (j.waits_for_ids || []).includes(job.id)
  );
  if (waiting.length) {
    parts.push(`Waited on by ${waiting.map(j => j.name).join(', ')}.`);
  }
  return parts.join(' ');
}
