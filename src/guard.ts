/**
 * Warnings before jobs are lost: leaving the page, restarting or shutting down a kernel
 * whose jobs run. And JupyterLab's notification when a job ends.
 */
import {
  Dialog,
  ISessionContext,
  Notification,
  SessionContext,
  SessionContextDialogs,
  showDialog
} from '@jupyterlab/apputils';
import { ServiceManager, Session } from '@jupyterlab/services';
import { ITranslator } from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';

import { IJob, JobStore } from './api';
import { basename, stateLabel } from './rows';
import { ENDED_NOTICE } from './states';

function list(jobs: IJob[]): string {
  return jobs.map(j => j.name).join(', ');
}

/** Ask before ending the kernels of ``paths`` (notebooks); true to go on. */
async function confirmEnd(
  store: JobStore,
  paths: string[],
  doing: string
): Promise<boolean> {
  const jobs = paths.flatMap(path => store.ofNotebook(path));
  const attached = jobs.filter(j => !j.detached);
  const detached = jobs.filter(j => j.detached);
  if (!jobs.length) {
    return true;
  }
  const body = document.createElement('div');
  body.className = 'jp-bgjobs-warning';
  const those = paths.length === 1 ? 'this kernel' : 'these kernels';
  if (attached.length) {
    const p = document.createElement('p');
    p.textContent =
      `${attached.length === 1 ? 'This job runs' : 'These jobs run'} from ` +
      `${those} and will end: ${list(attached)}.`;
    body.appendChild(p);
  }
  if (detached.length) {
    const p = document.createElement('p');
    p.textContent =
      `Detached, ${detached.length === 1 ? 'this one keeps' : 'these keep'} ` +
      `running unless you stop ${detached.length === 1 ? 'it' : 'them'}: ${list(detached)}.`;
    body.appendChild(p);
  }
  const buttons = [Dialog.cancelButton()];
  if (detached.length) {
    buttons.push(Dialog.warnButton({ label: `${doing} and stop all` }));
  }
  buttons.push(
    Dialog.warnButton({
      label: detached.length ? `${doing}, keep detached` : doing
    })
  );
  const result = await showDialog({
    title:
      paths.length === 1
        ? `${doing} the kernel of ${basename(paths[0])}?`
        : `${doing} the kernels of ${paths.length} notebooks with jobs?`,
    body: new DialogBody(body),
    buttons
  });
  if (!result.button.accept) {
    return false;
  }
  if (result.button.label.endsWith('stop all')) {
    // A job that ended while the dialog was open refuses the cancel: that is no reason
    // to keep the kernel.
    const done = await Promise.allSettled(
      detached.map(job => store.cancel(job.id))
    );
    const refused = done.filter(d => d.status === 'rejected').length;
    if (refused) {
      Notification.warning(`${refused} detached job(s) could not be stopped`, {
        autoClose: 5000
      });
    }
  }
  return true;
}

class DialogBody extends Widget {
  constructor(node: HTMLElement) {
    super({ node });
  }
}

/** JupyterLab's session dialogs, asking first when a restart would end jobs. */
export class GuardedSessionDialogs extends SessionContextDialogs {
  constructor(
    private _store: JobStore,
    translator: ITranslator | null
  ) {
    super({ translator: translator || undefined });
  }

  async restart(sessionContext: ISessionContext): Promise<boolean> {
    // With no kernel (shut down, its detached jobs kept) a restart starts one: it ends
    // no job, so there is nothing to ask.
    if (
      !sessionContext.session?.kernel ||
      !this._store.ofNotebook(sessionContext.path).length
    ) {
      return super.restart(sessionContext);
    }
    if (!(await confirmEnd(this._store, [sessionContext.path], 'Restart'))) {
      return false;
    }
    await sessionContext.restartKernel();
    return true;
  }
}

/** The notebooks whose kernels are among ``kernelIds`` (all, when null). */
function notebooksOf(
  sessions: Session.IManager,
  kernelIds: string[] | null
): string[] {
  const paths: string[] = [];
  for (const model of sessions.running()) {
    if (model.kernel && (!kernelIds || kernelIds.includes(model.kernel.id))) {
      paths.push(model.path);
    }
  }
  return paths;
}

/** The shutdowns that do not pass a notebook's SessionContext ("Shut Down All Kernels",
 * the Running panel's Shut Down and Shut Down All) ask as the single shutdown does. */
function guardManagers(
  store: JobStore,
  services: ServiceManager.IManager
): void {
  const { sessions, kernels } = services;
  const ask = async (paths: string[]) =>
    !paths.length || confirmEnd(store, paths, 'Shut down');
  const kernelShutdown = kernels.shutdown.bind(kernels);
  kernels.shutdown = async (id: string) => {
    if (await ask(notebooksOf(sessions, [id]))) {
      return kernelShutdown(id);
    }
  };
  const kernelsAll = kernels.shutdownAll.bind(kernels);
  kernels.shutdownAll = async () => {
    if (await ask(notebooksOf(sessions, null))) {
      return kernelsAll();
    }
  };
  const sessionShutdown = sessions.shutdown.bind(sessions);
  sessions.shutdown = async (id: string) => {
    const model = Array.from(sessions.running()).find(m => m.id === id);
    if (await ask(model ? [model.path] : [])) {
      return sessionShutdown(id);
    }
  };
  const sessionsAll = sessions.shutdownAll.bind(sessions);
  sessions.shutdownAll = async () => {
    if (await ask(notebooksOf(sessions, null))) {
      return sessionsAll();
    }
  };
}

export function guard(
  store: JobStore,
  openPaths: () => string[],
  services?: ServiceManager.IManager
): void {
  if (services) {
    guardManagers(store, services);
  }
  window.addEventListener('beforeunload', event => {
    const open = new Set(openPaths());
    if (
      store.running.some(j => !j.detached && open.has(j.notebook_path || ''))
    ) {
      // Attached jobs of this page's notebooks keep running while their kernels do;
      // the browser still asks, since closing the page often means shutting them down.
      event.preventDefault();
      event.returnValue = '';
    }
  });
  // JupyterLab's "Shut Down Kernel" asks nothing and has no hook: the one place every
  // shutdown of a notebook's kernel passes is SessionContext.shutdown.
  const proto = SessionContext.prototype as unknown as {
    shutdown: (this: SessionContext) => Promise<void>;
    __bgjobsGuarded?: boolean;
  };
  if (proto.__bgjobsGuarded) {
    return;
  }
  proto.__bgjobsGuarded = true;
  const original = proto.shutdown;
  proto.shutdown = async function (this: SessionContext): Promise<void> {
    if (
      this.session?.kernel &&
      !(await confirmEnd(store, [this.path], 'Shut down'))
    ) {
      return;
    }
    return original.call(this);
  };
}

type Level = 'success' | 'error' | 'warning' | 'info';

/** Ends that arrive within this many milliseconds of each other share one notification. */
const GATHER_MS = 400;
// The level of the notification of several ends: the most serious among them.
const SERIOUS: Level[] = ['error', 'warning', 'info', 'success'];

export function notifyEnds(
  store: JobStore,
  show: (job: IJob | null) => void
): void {
  let gathered: IJob[] = [];
  let timer = 0;
  const flush = () => {
    const jobs = gathered;
    gathered = [];
    timer = 0;
    if (jobs.length === 1) {
      const job = jobs[0];
      const how = stateLabel(job.state);
      const why =
        job.reason && job.state !== 'succeeded' ? `: ${job.reason}` : '';
      Notification.emit(
        `Background job ${job.name} ${how}${why}`,
        (ENDED_NOTICE[job.state] as Level) || 'info',
        {
          autoClose: 8000,
          actions: [{ label: 'Show output', callback: () => show(job) }]
        }
      );
      return;
    }
    // "8 jobs cancelled", or "3 jobs succeeded, 1 failed": one toast, not a stack.
    const counts = new Map<string, number>();
    for (const job of jobs) {
      counts.set(job.state, (counts.get(job.state) || 0) + 1);
    }
    const parts = Array.from(counts.entries()).map(
      ([state, n], i) =>
        `${i ? '' : `${jobs.length} jobs `}${i ? `${n} ` : ''}${stateLabel(state)}`
    );
    const levels = jobs.map(j => (ENDED_NOTICE[j.state] as Level) || 'info');
    const level = SERIOUS.find(l => levels.includes(l)) || 'info';
    Notification.emit(`Background jobs ended: ${parts.join(', ')}`, level, {
      autoClose: 8000,
      actions: [{ label: 'Show jobs', callback: () => show(null) }]
    });
  };
  store.ended.connect((_, job) => {
    gathered.push(job);
    if (!timer) {
      timer = window.setTimeout(flush, GATHER_MS);
    }
  });
}
