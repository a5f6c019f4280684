/** The status bar's summary: "N jobs running" and one bar across them. */
import { Widget } from '@lumino/widgets';

import { JobStore } from './api';

export class JobsStatus extends Widget {
  constructor(
    private _store: JobStore,
    onClick: () => void
  ) {
    super();
    this.addClass('jp-bgjobs-statusbar');
    this.node.title = 'Background jobs: click for the Jobs panel';
    this._text = document.createElement('span');
    this._text.className = 'jp-bgjobs-statusbar-text';
    const bar = document.createElement('span');
    bar.className = 'jp-bgjobs-bar jp-bgjobs-statusbar-bar';
    this._fill = document.createElement('span');
    this._fill.className = 'jp-bgjobs-bar-fill';
    bar.appendChild(this._fill);
    this.node.append(this._text, bar);
    this.node.addEventListener('click', onClick);
    // A button to the keyboard and to screen readers too.
    this.node.tabIndex = 0;
    this.node.setAttribute('role', 'button');
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        onClick();
      }
    });
    _store.changed.connect(this._render, this);
    this._render();
  }

  private _render(): void {
    const running = this._store.running;
    this.node.hidden = running.length === 0;
    this.node.dataset.running = String(running.length);
    this._text.textContent =
      running.length === 1 ? '1 job running' : `${running.length} jobs running`;
    this.node.setAttribute(
      'aria-label',
      `${this._text.textContent}: open the Jobs panel`
    );
    // One bar: the jobs' progress together; a job without a count weighs one unit.
    let done = 0;
    for (const job of running) {
      const [k, n] = job.progress;
      if (n) {
        done += k / n;
      }
    }
    this._fill.style.width = running.length
      ? `${(100 * done) / running.length}%`
      : '0%';
  }

  private _text: HTMLElement;
  private _fill: HTMLElement;
}
