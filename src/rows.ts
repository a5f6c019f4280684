/**
 * One job's row, the same in the Jobs panel and under a ``%%bgjob`` cell: state icon and
 * colour, name, when it started and ended, notebook, ``k/N``, section or status, a
 * ticking clock, and its buttons. A row is built once and updated in place, so focus,
 * hover and the pointer's place survive every change of its job.
 */
import { IJob, isRunning, JobStore } from './api';
import { ENDED_ON_ITS_WAY, STATE_ICONS, STATE_THEME } from './states';

/** A job's progress as its row and its report both say it: ``3/5`` while it runs or
 * once it succeeded, ``at 4/5`` for one that ended on its way ("failed at statement
 * 4/5", the report says). */
export function countText(done: number, total: number, state: string): string {
  if (!total) {
    return '';
  }
  if (ENDED_ON_ITS_WAY.includes(state) && done < total) {
    return `at ${done + 1}/${total}`;
  }
  return `${done}/${total}`;
}

/** Bytes as a person reads them: ``812 MB``, ``8.1 GB`` (as the Python side says them). */
export function sizeText(n: number): string {
  for (const [unit, scale] of [
    ['TB', 1e12],
    ['GB', 1e9],
    ['MB', 1e6],
    ['kB', 1e3]
  ] as [string, number][]) {
    if (n >= scale) {
      const value = n / scale;
      return `${value < 100 ? value.toFixed(1) : value.toFixed(0)} ${unit}`;
    }
  }
  return `${Math.floor(n)} B`;
}

/** What a job uses, compact: ``1.2 GB · 180 %`` while it runs, ``peak 1.4 GB`` after. */
export function usageText(
  resources: { [figure: string]: number } | undefined,
  running: boolean
): string {
  if (!resources || resources.rss === undefined) {
    return '';
  }
  return running
    ? `${sizeText(resources.rss)} · ${Math.round(resources.cpu || 0)} %`
    : `peak ${sizeText(resources.peak || 0)}`;
}

/** The kinds of row the IDE can start again: code it has (a call's function, a progress
 * row's task and a queue's run live in their notebook only). */
const RERUNNABLE = ['cell', 'script'];

function clock(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n: number) => String(n).padStart(2, '0');
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${pad(m)}:${pad(s % 60)}`;
}

export function basename(path: string | null): string {
  return path ? path.split('/').pop() || path : '';
}

/** A state in words: ``timed_out`` is "timed out". */
export function stateLabel(state: string): string {
  return state.replace('_', ' ');
}

/** A record's time as the pane shows it: the time of day, with the date when it is not
 * today (two jobs of one name are told apart by when they started). */
export function when(stamp: string | null): string {
  if (!stamp) {
    return '';
  }
  const at = new Date(stamp);
  if (isNaN(at.getTime())) {
    return '';
  }
  const time = at.toLocaleTimeString([], {
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit'
  });
  return at.toDateString() === new Date().toDateString()
    ? time
    : `${at.toLocaleDateString()} ${time}`;
}

/** Where a job came from, in a word: its notebook, or ``script``. */
export function origin(job: IJob): string {
  return job.notebook_path
    ? basename(job.notebook_path)
    : job.notebook
      ? basename(job.notebook)
      : job.kind === 'script'
        ? 'script'
        : '';
}

/** Move the clock of ``node``, a row ``renderRow`` drew: all a second's tick changes. */
export function tickClock(node: HTMLElement, job: IJob, store: JobStore): void {
  const shown = node.querySelector('.jp-bgjobs-clock');
  if (shown) {
    shown.textContent = clock(store.elapsed(job));
  }
}

/** What a row does when its buttons are pressed. */
export interface IRowActions {
  stop(job: IJob): void;
  remove(job: IJob): void;
  rerun(job: IJob): void;
  /** Run it again from its newest checkpoint (an end on its way only). */
  resume?(job: IJob): void;
  open?(job: IJob): void;
  /** Its detail as a tab of the main area. */
  tab?(job: IJob): void;
}

function el(tag: string, cls: string, text = ''): HTMLElement {
  const node = document.createElement(tag);
  node.className = cls;
  if (text) {
    node.textContent = text;
  }
  return node;
}

/** The parts of a built row, found again by their classes. */
interface IRowParts {
  icon: HTMLElement;
  name: HTMLElement;
  stateName: HTMLElement;
  clock: HTMLElement;
  times: HTMLElement;
  count: HTMLElement;
  origin: HTMLElement;
  detached: HTMLElement;
  where: HTMLElement;
  usage: HTMLElement;
  said: HTMLElement;
  logNote: HTMLElement;
  bar: HTMLElement;
  fill: HTMLElement;
  buttons: { [name: string]: HTMLButtonElement };
}

const BUTTONS = ['stop', 'open', 'remove', 'resume', 'rerun'];
const BUTTON_WORDS: { [name: string]: string } = {
  stop: 'Stop',
  open: 'Output',
  remove: 'Remove',
  resume: 'Resume',
  rerun: 'Rerun'
};

/** Which attempt of a job that is retried runs (or ran last): ``attempt 2 of 3``. */
export function attemptText(job: IJob): string {
  return job.attempts > 1 && job.attempt > 1
    ? `attempt ${job.attempt} of ${job.attempts}`
    : '';
}

/** A row's current job and actions: its buttons act on what the row shows now. */
const current = new WeakMap<HTMLElement, { job: IJob; actions: IRowActions }>();

function build(node: HTMLElement): IRowParts {
  node.replaceChildren();
  // A list's item in the panel (which says so); a named group elsewhere.
  if (!node.getAttribute('role')) {
    node.setAttribute('role', 'group');
  }
  const top = el('div', 'jp-bgjobs-row-top');
  const icon = el('span', 'jp-bgjobs-icon');
  icon.setAttribute('aria-hidden', 'true');
  const parts = {
    icon,
    name: el('span', 'jp-bgjobs-name'),
    stateName: el('span', 'jp-bgjobs-statename'),
    clock: el('span', 'jp-bgjobs-clock'),
    times: el('div', 'jp-bgjobs-times'),
    count: el('span', 'jp-bgjobs-count'),
    origin: el('span', 'jp-bgjobs-notebook'),
    detached: el('span', 'jp-bgjobs-tag jp-bgjobs-detached', 'detached'),
    where: el('span', 'jp-bgjobs-tag jp-bgjobs-where'),
    usage: el('span', 'jp-bgjobs-usage'),
    said: el('span', 'jp-bgjobs-status'),
    logNote: el('span', 'jp-bgjobs-lognote', '⚠ log incomplete'),
    bar: el('div', 'jp-bgjobs-bar'),
    fill: el('div', 'jp-bgjobs-bar-fill'),
    buttons: {} as { [name: string]: HTMLButtonElement }
  };
  parts.clock.setAttribute('aria-label', 'elapsed');
  top.append(parts.icon, parts.name, parts.stateName, parts.clock);
  const meta = el('div', 'jp-bgjobs-row-meta');
  meta.append(
    parts.count,
    parts.origin,
    parts.detached,
    parts.where,
    parts.usage,
    parts.said,
    parts.logNote
  );
  parts.bar.setAttribute('role', 'progressbar');
  parts.bar.appendChild(parts.fill);
  const actions = el('div', 'jp-bgjobs-row-actions');
  for (const name of BUTTONS) {
    const button = el(
      'button',
      `jp-bgjobs-button jp-bgjobs-${name}`,
      BUTTON_WORDS[name]
    ) as HTMLButtonElement;
    button.type = 'button';
    button.addEventListener('click', event => {
      event.stopPropagation();
      const now = current.get(node);
      if (!now) {
        return;
      }
      const act = (
        now.actions as unknown as {
          [name: string]: ((job: IJob) => void) | undefined;
        }
      )[name];
      act?.(now.job);
    });
    parts.buttons[name] = button;
    actions.appendChild(button);
  }
  node.append(top, parts.times, meta, parts.bar, actions);
  node.dataset.built = '1';
  return parts;
}

function partsOf(node: HTMLElement): IRowParts {
  const found = (cls: string) => node.querySelector(`.${cls}`) as HTMLElement;
  const buttons: { [name: string]: HTMLButtonElement } = {};
  for (const name of BUTTONS) {
    buttons[name] = found(`jp-bgjobs-${name}`) as HTMLButtonElement;
  }
  return {
    icon: found('jp-bgjobs-icon'),
    name: found('jp-bgjobs-name'),
    stateName: found('jp-bgjobs-statename'),
    clock: found('jp-bgjobs-clock'),
    times: found('jp-bgjobs-times'),
    count: found('jp-bgjobs-count'),
    origin: found('jp-bgjobs-notebook'),
    detached: found('jp-bgjobs-detached'),
    where: found('jp-bgjobs-where'),
    usage: found('jp-bgjobs-usage'),
    said: found('jp-bgjobs-status'),
    logNote: found('jp-bgjobs-lognote'),
    bar: found('jp-bgjobs-bar'),
    fill: found('jp-bgjobs-bar-fill'),
    buttons
  };
}

function setText(node: HTMLElement, text: string): void {
  if (node.textContent !== text) {
    node.textContent = text;
  }
  node.hidden = !text;
}

/** Show ``job`` in ``node``: built the first time, updated in place after that (only
 * what changed is touched; its buttons stay the same elements, so focus stays). */
export function renderRow(
  node: HTMLElement,
  job: IJob,
  store: JobStore,
  actions: IRowActions
): void {
  const parts = node.dataset.built === '1' ? partsOf(node) : build(node);
  current.set(node, { job, actions });
  const running = isRunning(job);
  node.className = `jp-bgjobs-row jp-bgjobs-state-${job.state}`;
  const theme = STATE_THEME[job.state];
  if (theme) {
    node.style.setProperty('--jp-bgjobs-state', `var(${theme})`);
  }
  node.dataset.jobId = job.id;
  node.dataset.state = job.state;
  node.dataset.kind = job.kind;
  const [done, total] = job.progress;
  const from = origin(job);
  const count = countText(done, total, job.state);
  node.setAttribute(
    'aria-label',
    [job.name, stateLabel(job.state), count.replace('/', ' of '), from]
      .filter(Boolean)
      .join(', ')
  );
  setText(parts.icon, STATE_ICONS[job.state] || '•');
  parts.icon.hidden = false;
  setText(parts.name, job.name);
  setText(parts.stateName, stateLabel(job.state));
  setText(parts.clock, clock(store.elapsed(job)));
  // One line, whatever the width: a row must not grow when its job ends.
  const started = when(job.started);
  const ended = running ? '' : when(job.finished);
  setText(
    parts.times,
    started ? `${started}${ended ? ` → ${ended}` : ''}` : ''
  );
  parts.times.title = started
    ? `started ${started}${ended ? `, ended ${ended}` : ''}`
    : '';
  setText(parts.count, count);
  setText(parts.origin, from);
  parts.detached.hidden = !job.detached;
  setText(parts.where, job.where && job.where !== 'local' ? job.where : '');
  const usage = usageText(job.resources, running);
  setText(parts.usage, usage);
  parts.usage.title = usage
    ? running
      ? 'memory now (its kernel and what it started) · CPU, percent of one core'
      : 'the most memory its kernel (and what it started) held'
    : '';
  setText(
    parts.said,
    [
      attemptText(job),
      running ? job.section || job.status : job.reason || job.status
    ]
      .filter(Boolean)
      .join(' · ')
  );
  parts.logNote.hidden = !job.log_note;
  parts.logNote.title = job.log_note || '';

  // A progress bar while it runs: its value when it has a count, busy when not. An ended
  // row keeps the bar's room, so rows below do not move when one ends.
  parts.bar.style.visibility = running ? '' : 'hidden';
  parts.bar.setAttribute('aria-hidden', running ? 'false' : 'true');
  parts.bar.setAttribute('aria-label', `${job.name} progress`);
  if (total) {
    parts.bar.classList.remove('jp-bgjobs-bar-busy');
    parts.fill.style.width = `${Math.min(100, (100 * done) / total)}%`;
    parts.bar.setAttribute('aria-valuemin', '0');
    parts.bar.setAttribute('aria-valuemax', String(total));
    parts.bar.setAttribute('aria-valuenow', String(Math.min(done, total)));
    parts.bar.removeAttribute('aria-valuetext');
  } else {
    parts.bar.classList.add('jp-bgjobs-bar-busy');
    parts.fill.style.width = '';
    for (const name of ['aria-valuemin', 'aria-valuemax', 'aria-valuenow']) {
      parts.bar.removeAttribute(name);
    }
    parts.bar.setAttribute('aria-valuetext', 'running');
  }

  // Stop while it runs (where its owner offers it); Output always; Remove and Rerun once
  // it has ended, Rerun last: never where Stop was a moment before.
  const shown: { [name: string]: boolean } = {
    stop: running && job.can_stop,
    open: Boolean(actions.open),
    remove: !running,
    resume:
      !running &&
      Boolean(actions.resume) &&
      RERUNNABLE.includes(job.kind) &&
      ENDED_ON_ITS_WAY.includes(job.state),
    rerun: !running && RERUNNABLE.includes(job.kind)
  };
  for (const name of BUTTONS) {
    const button = parts.buttons[name];
    button.hidden = !shown[name];
    const label = `${BUTTON_WORDS[name]} ${job.name}`;
    if (button.getAttribute('aria-label') !== label) {
      button.setAttribute('aria-label', label);
      button.title = label;
    }
  }
}
