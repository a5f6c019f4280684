/**
 * One job's row, the same in the Jobs panel and under a ``%%bgjob`` cell: state icon and
 * colour, name, notebook, ``k/N``, section or status, a ticking clock, and its buttons.
 */
import { IJob, isRunning, JobStore } from './api';
import { STATE_ICONS, STATE_THEME } from './states';

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
  open?(job: IJob): void;
}

function el(tag: string, cls: string, text = ''): HTMLElement {
  const node = document.createElement(tag);
  node.className = cls;
  if (text) {
    node.textContent = text;
  }
  return node;
}

function button(label: string, cls: string, act: () => void): HTMLElement {
  const node = el(
    'button',
    `jp-bgjobs-button ${cls}`,
    label
  ) as HTMLButtonElement;
  node.type = 'button';
  node.title = label;
  node.addEventListener('click', event => {
    event.stopPropagation();
    act();
  });
  return node;
}

/** Fill ``node`` with ``job``'s row (all of it: rows are small and redrawn whole when
 * their job changes; ``tickClock`` moves their clocks in between). */
export function renderRow(
  node: HTMLElement,
  job: IJob,
  store: JobStore,
  actions: IRowActions
): void {
  const running = isRunning(job);
  node.className = `jp-bgjobs-row jp-bgjobs-state-${job.state}`;
  const theme = STATE_THEME[job.state];
  if (theme) {
    node.style.setProperty('--jp-bgjobs-state', `var(${theme})`);
  }
  node.dataset.jobId = job.id;
  node.dataset.state = job.state;
  node.replaceChildren();
  const top = el('div', 'jp-bgjobs-row-top');
  const icon = el('span', 'jp-bgjobs-icon', STATE_ICONS[job.state] || '•');
  icon.setAttribute('aria-hidden', 'true');
  top.appendChild(icon);
  top.appendChild(el('span', 'jp-bgjobs-name', job.name));
  top.appendChild(el('span', 'jp-bgjobs-statename', stateLabel(job.state)));
  top.appendChild(el('span', 'jp-bgjobs-clock', clock(store.elapsed(job))));
  node.appendChild(top);

  const meta = el('div', 'jp-bgjobs-row-meta');
  const [done, total] = job.progress;
  if (total) {
    meta.appendChild(el('span', 'jp-bgjobs-count', `${done}/${total}`));
  }
  const where = job.notebook_path
    ? basename(job.notebook_path)
    : job.notebook
      ? basename(job.notebook)
      : job.kind === 'script'
        ? 'script'
        : '';
  if (where) {
    meta.appendChild(el('span', 'jp-bgjobs-notebook', where));
  }
  if (job.detached) {
    meta.appendChild(el('span', 'jp-bgjobs-tag', 'detached'));
  }
  if (job.where && job.where !== 'local') {
    meta.appendChild(el('span', 'jp-bgjobs-tag', job.where));
  }
  const said = running ? job.section || job.status : job.reason || job.status;
  if (said) {
    meta.appendChild(el('span', 'jp-bgjobs-status', said));
  }
  if (job.log_note) {
    const note = el('span', 'jp-bgjobs-lognote', '⚠ log incomplete');
    note.title = job.log_note;
    meta.appendChild(note);
  }
  node.appendChild(meta);

  if (running) {
    const bar = el('div', 'jp-bgjobs-bar');
    const fill = el('div', 'jp-bgjobs-bar-fill');
    if (total) {
      fill.style.width = `${Math.min(100, (100 * done) / total)}%`;
    } else {
      bar.classList.add('jp-bgjobs-bar-busy');
    }
    bar.appendChild(fill);
    node.appendChild(bar);
  }

  const buttons = el('div', 'jp-bgjobs-row-actions');
  if (running) {
    if (job.can_stop) {
      buttons.appendChild(
        button('Stop', 'jp-bgjobs-stop', () => actions.stop(job))
      );
    }
  } else {
    if (RERUNNABLE.includes(job.kind)) {
      buttons.appendChild(
        button('Rerun', 'jp-bgjobs-rerun', () => actions.rerun(job))
      );
    }
    buttons.appendChild(
      button('Remove', 'jp-bgjobs-remove', () => actions.remove(job))
    );
  }
  if (actions.open) {
    const open = actions.open;
    buttons.appendChild(button('Output', 'jp-bgjobs-open', () => open(job)));
  }
  node.appendChild(buttons);
}
