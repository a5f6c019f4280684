/**
 * jupyter-bgjobs: the IDE's side of background jobs. The Jobs panel of the whole IDE,
 * commands and a dialog to start jobs, a status-bar summary, warnings before jobs are
 * lost, notifications when they end, and rows under cells read from the job store.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  ISessionContextDialogs,
  MainAreaWidget,
  Notification
} from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { IEditorTracker } from '@jupyterlab/fileeditor';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { IRunningSessionManagers } from '@jupyterlab/running';
import { IStateDB } from '@jupyterlab/statedb';
import { IStatusBar } from '@jupyterlab/statusbar';
import { ITranslator } from '@jupyterlab/translation';

import { IJob, JobStore } from './api';
import {
  addCommands,
  CommandIDs,
  ICommandParts,
  rerun,
  resume
} from './commands';
import { Choices } from './dialog';
import { guard, GuardedSessionDialogs, notifyEnds } from './guard';
import { rendererFactory } from './mime';
import { jobsIcon } from './icons';
import { JobsPanel, PANEL_RANK } from './panel';
import { IRowActions } from './rows';
import { addToRunning } from './running';
import { JobsStatus } from './status';

/** The command that opens a job's detail as a tab of the main area. */
const OPEN_TAB = 'bgjobs:open-tab';

let shared: JobStore | null = null;

/** One store for the page: every view reads the same rows. */
function store(): JobStore {
  if (!shared) {
    shared = new JobStore();
  }
  return shared;
}

/** How long a removed row can be brought back before it is removed for good. */
const UNDO_MS = 6000;

/** Remove a row with a moment to undo it: hidden at once, deleted once the moment is
 * over (a stray click on Remove loses nothing). */
function removeWithUndo(jobs: JobStore, job: IJob): void {
  jobs.hide(job.id);
  let undone = false;
  Notification.info(`Removed ${job.name}`, {
    autoClose: UNDO_MS,
    actions: [
      {
        label: 'Undo',
        callback: () => {
          undone = true;
          jobs.show(job.id);
        }
      }
    ]
  });
  window.setTimeout(() => {
    if (!undone) {
      jobs.remove(job.id).catch(reason => {
        jobs.show(job.id);
        Notification.error(
          `${job.name} was not removed: ${(reason as Error).message}`,
          {
            autoClose: 8000
          }
        );
      });
    }
  }, UNDO_MS);
}

function actionsFor(
  app: JupyterFrontEnd,
  parts: () => ICommandParts
): IRowActions {
  const report = (what: string) => (reason: Error) =>
    console.error(`jupyter-bgjobs: ${what}:`, reason);
  return {
    stop: (job: IJob) => void store().cancel(job.id).catch(report('stop')),
    remove: (job: IJob) => removeWithUndo(store(), job),
    rerun: (job: IJob) => void rerun(parts(), job),
    resume: (job: IJob) => void resume(parts(), job),
    open: (job: IJob) =>
      void app.commands.execute(CommandIDs.openPanel, { id: job.id }),
    tab: (job: IJob) => void app.commands.execute(OPEN_TAB, { id: job.id })
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-bgjobs:plugin',
  description:
    'The Jobs panel, commands, status bar and warnings of jupyter_bgjobs.',
  autoStart: true,
  requires: [IRenderMimeRegistry],
  optional: [
    INotebookTracker,
    IEditorTracker,
    IDefaultFileBrowser,
    ICommandPalette,
    IStatusBar,
    IStateDB,
    ILayoutRestorer,
    IRunningSessionManagers
  ],
  activate: (
    app: JupyterFrontEnd,
    rendermime: IRenderMimeRegistry,
    notebooks: INotebookTracker | null,
    editors: IEditorTracker | null,
    browser: IDefaultFileBrowser | null,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null,
    state: IStateDB | null,
    restorer: ILayoutRestorer | null,
    running: IRunningSessionManagers | null
  ) => {
    const jobs = store();
    let parts: ICommandParts | null = null;
    const actions = actionsFor(app, () => parts!);
    const panel = new JobsPanel(jobs, rendermime, {
      ...actions,
      open: undefined
    });
    parts = {
      app,
      store: jobs,
      panel,
      choices: new Choices(state),
      notebooks,
      editors,
      browser
    };
    addCommands(parts);
    app.commands.addCommand(OPEN_TAB, {
      label: 'Open Background Job in a Tab',
      caption:
        "A job's detail in the main area, where tracebacks and plots have room",
      execute: args => {
        const id = typeof args.id === 'string' ? args.id : '';
        const open = Array.from(app.shell.widgets('main')).find(
          w => w.id === `jupyter-bgjobs-tab-${id}`
        );
        if (open) {
          app.shell.activateById(open.id);
          return;
        }
        const content = new JobsPanel(
          jobs,
          rendermime,
          { ...actions, open: undefined, tab: undefined },
          id
        );
        const tab = new MainAreaWidget({ content });
        tab.id = `jupyter-bgjobs-tab-${id}`;
        tab.title.label = jobs.get(id)?.name || id;
        tab.title.icon = jobsIcon;
        tab.title.closable = true;
        app.shell.add(tab, 'main');
        app.shell.activateById(tab.id);
      }
    });
    app.shell.add(panel, 'right', { rank: PANEL_RANK });
    restorer?.add(panel, panel.id);
    rendermime.addFactory(rendererFactory(jobs, actions), -20);
    for (const command of Object.values(CommandIDs)) {
      palette?.addItem({ command, category: 'Background Jobs' });
    }
    statusBar?.registerStatusItem('jupyter-bgjobs:status', {
      item: new JobsStatus(
        jobs,
        () => void app.commands.execute(CommandIDs.openPanel)
      ),
      align: 'left',
      rank: 4
    });
    guard(
      jobs,
      () => {
        const paths: string[] = [];
        notebooks?.forEach(panel => paths.push(panel.context.path));
        return paths;
      },
      app.serviceManager
    );
    if (running) {
      addToRunning(running, jobs, actions.open!, actions.stop);
    }
    notifyEnds(
      jobs,
      job =>
        void app.commands.execute(CommandIDs.openPanel, {
          id: job ? job.id : null
        })
    );
  }
};

/** JupyterLab's restart dialog, naming the jobs a restart would end. */
const sessionDialogs: JupyterFrontEndPlugin<ISessionContextDialogs> = {
  id: 'jupyter-bgjobs:session-dialogs',
  description:
    'Session dialogs that warn before a restart ends background jobs.',
  autoStart: true,
  provides: ISessionContextDialogs,
  optional: [ITranslator],
  activate: (app: JupyterFrontEnd, translator: ITranslator | null) =>
    new GuardedSessionDialogs(store(), translator)
};

export default [plugin, sessionDialogs];
