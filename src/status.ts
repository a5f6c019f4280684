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
    this._bar = document.createElement('span');
    this._bar.className = 'jp-bgjobs-bar jp-bgjobs-statusbar-bar';
    this._fill = document.createElement('span');
    this._fill.className = 'jp-bgjobs-bar-fill';
    this._bar.appendChild(this._fill);
    this.node.append(this._text, this._bar);
    this.node.addEventListener('click', onClick);
    _store.changed.connect(this._render, this);
    this._render();
  }

  private _render(): void {
    const running = this._store.running;
    this.node.hidden = running.length === 0;
    this.node.dataset.running = String(running.length);
    this._text.textContent =
      running.length === 1 ? '1 job running' : `${running.length} jobs running`;
    // One bar: the jobs' progress together; a job without a count weighs one unit.
    let done = 0;
    let total = 0;
    for (const job of running) {
      const [k, n] = job.progress;
      if (n) {
        done += k / n;
      }
      total += 1;
    }
    this._fill.style.width = total ? `${(100 * done) / total}%` : '0%';
  }

  private _text: HTMLElement;
  private _bar: HTMLElement;
  private _fill: HTMLElement;
}
