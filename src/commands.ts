/**
 * The commands that start jobs: a cell, an editor's selection, a ``.py`` file, and the
 * panel. Each opens the options dialog, or takes its options as arguments (scripted).
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { CodeCell } from '@jupyterlab/cells';
import { CodeEditor } from '@jupyterlab/codeeditor';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { IEditorTracker } from '@jupyterlab/fileeditor';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { OutputArea } from '@jupyterlab/outputarea';
import { KernelMessage, ServerConnection } from '@jupyterlab/services';
import { PageConfig, PathExt } from '@jupyterlab/coreutils';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';

import { DEFAULT_OPTIONS, IJob, IRunOptions, JobStore } from './api';
import { askOptions, Choices, IDialogContext, OPTION_KEYS } from './dialog';
import { runJobIcon, jobsIcon } from './icons';
import { JobsPanel, PANEL_RANK } from './panel';
import { cellCode, scriptCode } from './python';
import { basename } from './rows';
import { ICellRowData, JOB_MIME } from './mime';

export const CommandIDs = {
  runCell: 'bgjobs:run-cell',
  runSelection: 'bgjobs:run-selection',
  runFile: 'bgjobs:run-file',
  openPanel: 'bgjobs:open-panel'
};

export interface ICommandParts {
  app: JupyterFrontEnd;
  store: JobStore;
  panel: JobsPanel;
  choices: Choices;
  notebooks: INotebookTracker | null;
  editors: IEditorTracker | null;
  browser: IDefaultFileBrowser | null;
}

/** The command came from the file browser's context menu. */
function fromFileBrowser(parts: ICommandParts): boolean {
  return Boolean(
    parts.app.contextMenuHitTest(node =>
      node.classList.contains('jp-DirListing-item')
    )
  );
}

/** The current file editor holds a .py file. */
function inPythonEditor(parts: ICommandParts): boolean {
  return Boolean(parts.editors?.currentWidget?.context.path.endsWith('.py'));
}

/** The current notebook is the main area's current widget. */
function inNotebook(parts: ICommandParts): boolean {
  const panel = parts.notebooks?.currentWidget;
  return Boolean(panel && parts.app.shell.currentWidget === panel);
}

/** One line, where JupyterLab shows what went wrong. */
function fail(message: string): void {
  Notification.error(message, { autoClose: 8000 });
}

function kernels(app: JupyterFrontEnd): IDialogContext['kernels'] {
  const specs = app.serviceManager.kernelspecs.specs?.kernelspecs || {};
  return Object.values(specs)
    .filter(spec => spec)
    .map(spec => ({ name: spec!.name, display: spec!.display_name }));
}

/** The check of a working directory typed in the dialog, through the server's contents
 * (so within its root): relative to ``base`` (the notebook's folder, or the root for a
 * job the server starts). A folder it cannot see (outside the root, ``~``) is left to
 * the kernel, which refuses a missing one with a notification. */
function folderCheck(
  app: JupyterFrontEnd,
  base: string
): (path: string) => Promise<string> {
  return async (path: string) => {
    const root = PageConfig.getOption('serverRoot').replace(/\/+$/, '');
    let inRoot: string | null = null;
    if (path.startsWith('/')) {
      if (root.startsWith('/') && (path + '/').startsWith(root + '/')) {
        inRoot = path.slice(root.length + 1);
      }
    } else if (!path.startsWith('~')) {
      inRoot = PathExt.normalize(PathExt.join(base, path));
    }
    if (inRoot === null || inRoot.startsWith('..')) {
      return '';
    }
    try {
      const found = await app.serviceManager.contents.get(inRoot, {
        content: false
      });
      return found.type === 'directory'
        ? ''
        : `The working directory "${path}" is a file, not a folder; name a folder, or leave it empty.`;
    } catch (reason) {
      const status = (reason as ServerConnection.ResponseError).response
        ?.status;
      return status === 404
        ? `The working directory "${path}" does not exist; name an existing folder, or leave it empty.`
        : '';
    }
  };
}

/** The options given as arguments (scripted), or asked for in the dialog. */
async function options(
  parts: ICommandParts,
  args: ReadonlyPartialJSONObject,
  context: Omit<IDialogContext, 'kernels'> & { notebookPath?: string }
): Promise<IRunOptions | null> {
  const given = OPTION_KEYS.filter(k => args[k] !== undefined);
  if (args.dialog === false || given.length) {
    const scripted = (await parts.choices.initial(context)) as unknown as {
      [key: string]: unknown;
    };
    for (const key of given) {
      scripted[key] =
        key === 'detach' || key === 'checkpoint'
          ? Boolean(args[key])
          : String(args[key]);
    }
    return scripted as unknown as IRunOptions;
  }
  const base =
    context.kind === 'server' || !context.notebookPath
      ? ''
      : PathExt.dirname(context.notebookPath);
  return askOptions(
    {
      ...context,
      kernels: kernels(parts.app),
      checkFolder: folderCheck(parts.app, base)
    },
    parts.choices
  );
}

/** What the kernel said when a start was refused: the magics' UsageError (printed to
 * stderr by IPython) or an error; "" when it started. */
function refusal(msg: KernelMessage.IIOPubMessage): string {
  const kind = msg.header.msg_type;
  if (kind === 'error') {
    const content = msg.content as { ename: string; evalue: string };
    return `${content.ename}: ${content.evalue}`;
  }
  if (kind === 'stream') {
    const content = msg.content as { name: string; text: string };
    if (content.name === 'stderr' && content.text.includes('UsageError')) {
      return content.text;
    }
  }
  return '';
}

/** The name of the job whose row the kernel displayed, if it did. */
function startedName(msg: KernelMessage.IIOPubMessage): string {
  const kind = msg.header.msg_type;
  if (kind !== 'display_data' && kind !== 'execute_result') {
    return '';
  }
  const data = (msg.content as { data?: { [mime: string]: unknown } }).data;
  const row = data?.[JOB_MIME] as ICellRowData | undefined;
  return row?.name || '';
}

/** Run ``code`` in a notebook's kernel; into ``cell``'s output when given (as that
 * cell's run: the job's record names the cell). ``name`` is the job's, when known; a
 * toast names the job started unless its row is under the cell the user ran. */
async function runInNotebook(
  panel: NotebookPanel,
  code: string,
  cell: CodeCell | null,
  name = '',
  announce = cell === null
): Promise<void> {
  const session = panel.sessionContext;
  await session.ready;
  const kernel = session.session?.kernel;
  if (!kernel) {
    fail(
      `${panel.title.label} has no kernel: start one to run background jobs from it`
    );
    return;
  }
  let said = '';
  let started = '';
  const watch = (msg: KernelMessage.IIOPubMessage) => {
    said += refusal(msg);
    started = started || startedName(msg);
  };
  let reply: KernelMessage.IExecuteReplyMsg | undefined;
  if (cell) {
    const busy = kernel.status === 'busy';
    const running = OutputArea.execute(code, cell.outputArea, session, {
      cellId: cell.model.sharedModel.getId()
    });
    const future = cell.outputArea.future;
    let waiting = false;
    if (busy && future) {
      // The kernel runs the start once the cell it is busy with ends: until then, a row
      // says so, instead of nothing.
      waiting = true;
      cell.outputArea.model.add({
        output_type: 'display_data',
        data: {
          [JOB_MIME]: {
            name: name || 'Background job',
            waiting: "waiting for the notebook's kernel, busy with another cell"
          },
          'text/plain': "Background job waiting for the notebook's kernel"
        },
        metadata: {}
      });
    }
    future?.registerMessageHook(msg => {
      if (waiting && msg.header.msg_type === 'status') {
        const state = (msg.content as { execution_state?: string })
          .execution_state;
        if (state === 'busy') {
          waiting = false;
          cell.outputArea.model.clear();
        }
      }
      watch(msg);
      return true;
    });
    reply = await running.catch(() => undefined);
  } else {
    const future = kernel.requestExecute({
      code,
      silent: false,
      store_history: false
    });
    future.onIOPub = watch;
    reply = await future.done;
  }
  if (!reply || reply.content.status !== 'ok' || said.trim()) {
    fail(
      `The job did not start: ${said.trim() || reply?.content.status || 'the kernel did not answer'}`
    );
    return;
  }
  if (announce) {
    const who = started || name;
    Notification.info(
      `Background job ${who ? `${who} ` : ''}started from ${panel.title.label}`,
      { autoClose: 3000 }
    );
  }
}

function selected(editor: CodeEditor.IEditor): string {
  const source = editor.model.sharedModel.getSource();
  const range = editor.getSelection();
  const start = editor.getOffsetAt(range.start);
  const end = editor.getOffsetAt(range.end);
  if (start !== end) {
    return source.slice(Math.min(start, end), Math.max(start, end));
  }
  // No selection: the line the cursor is on, as RStudio runs it.
  return source.split('\n')[range.start.line] || '';
}

function notebookOf(
  parts: ICommandParts,
  path: string | null
): NotebookPanel | null {
  let found: NotebookPanel | null = null;
  parts.notebooks?.forEach(panel => {
    if (panel.context.path === path && panel.sessionContext.session?.kernel) {
      found = panel;
    }
  });
  return found;
}

function serverBody(o: IRunOptions): { [key: string]: unknown } | null {
  if (o.timeout && !(Number(o.timeout) > 0)) {
    fail(`The timeout must be a number of seconds above 0, not ${o.timeout}`);
    return null;
  }
  return {
    name: o.name || undefined,
    workdir: o.workdir || undefined,
    kernel: o.kernel || undefined,
    timeout: o.timeout ? Number(o.timeout) : undefined,
    memory_limit: o.memory_limit || undefined,
    checkpoint: o.checkpoint || undefined,
    retries: o.retries ? Number(o.retries) : undefined,
    after: o.after || undefined
  };
}

async function startOnServer(
  parts: ICommandParts,
  options: IRunOptions,
  what: { path: string } | { code: string }
): Promise<IJob | null> {
  const base = serverBody(options);
  if (!base) {
    return null;
  }
  const body = { ...base, ...what };
  try {
    const job = await parts.store.start(body);
    Notification.info(`Background job ${job.name} started`, {
      autoClose: 3000,
      actions: [
        {
          label: 'Show',
          callback: () =>
            void parts.app.commands.execute(CommandIDs.openPanel, {
              id: job.id
            })
        }
      ]
    });
    return job;
  } catch (reason) {
    fail(`The job did not start: ${(reason as Error).message}`);
    return null;
  }
}

async function runCell(
  parts: ICommandParts,
  args: ReadonlyPartialJSONObject
): Promise<void> {
  const panel = parts.notebooks?.currentWidget;
  const cell = panel?.content.activeCell;
  if (!panel || !(cell instanceof CodeCell)) {
    fail('Select a code cell of a notebook to run it as a background job');
    return;
  }
  const source =
    typeof args.code === 'string'
      ? args.code
      : cell.model.sharedModel.getSource();
  await cellJob(parts, args, panel, source, cell);
}

/** A cell's code, or a part of it, as a job of its notebook (the dialog first). */
async function cellJob(
  parts: ICommandParts,
  args: ReadonlyPartialJSONObject,
  panel: NotebookPanel,
  code: string,
  cell: CodeCell | null
): Promise<void> {
  const o = await options(parts, args, {
    title: cell
      ? 'Run Cell as Background Job'
      : 'Run Selection as Background Job',
    kind: 'cell',
    notebook: panel.context.path,
    notebookPath: panel.context.path,
    defaults: {}
  });
  if (o) {
    await runInNotebook(panel, cellCode(code, o), cell, o.name);
  }
}

async function runSelection(
  parts: ICommandParts,
  args: ReadonlyPartialJSONObject
): Promise<void> {
  const panel = parts.notebooks?.currentWidget;
  if (panel && inNotebook(parts)) {
    const cell = panel.content.activeCell;
    if (!(cell instanceof CodeCell) || !cell.editor) {
      fail('Select code in a code cell to run it as a background job');
      return;
    }
    const code =
      typeof args.code === 'string' ? args.code : selected(cell.editor);
    await cellJob(parts, args, panel, code, null);
    return;
  }
  const editor = parts.editors?.currentWidget;
  if (!editor) {
    fail(
      'Select code in a notebook or a file editor to run it as a background job'
    );
    return;
  }
  const code =
    typeof args.code === 'string' ? args.code : selected(editor.content.editor);
  const o = await options(parts, args, {
    title: 'Run Selection as Background Job',
    kind: 'server',
    notebook: null,
    defaults: {
      workdir: editor.context.path.split('/').slice(0, -1).join('/')
    }
  });
  if (o) {
    await startOnServer(parts, o, { code });
  }
}

function pythonFile(
  parts: ICommandParts,
  args: ReadonlyPartialJSONObject
): string | null {
  if (typeof args.path === 'string') {
    return args.path;
  }
  if (fromFileBrowser(parts) && parts.browser) {
    for (const item of parts.browser.selectedItems()) {
      if (item.path.endsWith('.py')) {
        return item.path;
      }
    }
  }
  const editor = parts.editors?.currentWidget;
  return editor && inPythonEditor(parts) ? editor.context.path : null;
}

async function runFile(
  parts: ICommandParts,
  args: ReadonlyPartialJSONObject
): Promise<void> {
  const path = pythonFile(parts, args);
  if (!path) {
    fail(
      'Choose a .py file (in the file browser or an editor) to run as a background job'
    );
    return;
  }
  // With a notebook open, the script runs from its kernel (RStudio's "Source as
  // Background Job": results into that notebook); with none, the server starts it.
  const panel = parts.notebooks?.currentWidget;
  const notebook = panel?.sessionContext.session?.kernel ? panel : null;
  const o = await options(parts, args, {
    title: `Run ${basename(path)} as Background Job`,
    kind: notebook ? 'file' : 'server',
    notebook: notebook ? basename(notebook.context.path) : null,
    notebookPath: notebook?.context.path,
    defaults: { name: basename(path).replace(/\.py$/, '') }
  });
  if (!o) {
    return;
  }
  if (notebook) {
    if (!parts.store.root) {
      fail('The job store is not reachable yet: try again in a moment');
      return;
    }
    const absolute = `${parts.store.root}/${path}`;
    await runInNotebook(notebook, scriptCode(absolute, o), null);
  } else {
    await startOnServer(parts, o, { path });
  }
}

/** Run an ended job again: from its notebook when that is open, else on the server. */
export async function rerun(parts: ICommandParts, job: IJob): Promise<void> {
  let detail;
  try {
    detail = await parts.store.detail(job.id);
  } catch (reason) {
    fail(`Cannot rerun ${job.name}: ${(reason as Error).message}`);
    return;
  }
  const spec = detail.spec;
  const o: IRunOptions = {
    name: job.name,
    env: typeof spec.env === 'string' ? spec.env : DEFAULT_OPTIONS.env,
    results: spec.results || DEFAULT_OPTIONS.results,
    workdir: spec.workdir || '',
    kernel: spec.kernel || '',
    timeout: spec.timeout ? String(spec.timeout) : '',
    memory_limit: spec.memory_limit ? String(spec.memory_limit) : '',
    checkpoint: Boolean(spec.checkpoint),
    retries: spec.retries ? String(spec.retries) : '',
    after: spec.after || '',
    detach: job.detached
  };
  const panel = notebookOf(parts, job.notebook_path);
  if (panel) {
    const code = spec.script
      ? scriptCode(spec.script, o)
      : cellCode(spec.code || '', o);
    // Under the cell that started it, when that cell is still there: where the user
    // looks for it (and its row there is the newest job of the cell).
    const cell = panel.content.widgets.find(
      w => job.cell_id && w.model.sharedModel.getId() === job.cell_id
    );
    await runInNotebook(
      panel,
      code,
      cell instanceof CodeCell ? cell : null,
      job.name,
      true
    );
  } else if (spec.script) {
    await startOnServer(parts, o, { path: spec.script });
  } else {
    await startOnServer(parts, o, { code: spec.code || '' });
  }
}

/** Resume an ended job from its newest checkpoint: from its notebook's kernel when that
 * notebook is open (its results merge there, its row under the cell that started it),
 * else as a detached job of the server. */
export async function resume(parts: ICommandParts, job: IJob): Promise<void> {
  const panel = notebookOf(parts, job.notebook_path);
  if (panel) {
    const cell = panel.content.widgets.find(
      w => job.cell_id && w.model.sharedModel.getId() === job.cell_id
    );
    await runInNotebook(
      panel,
      `%bgjob_resume ${job.id}`,
      cell instanceof CodeCell ? cell : null,
      job.name,
      true
    );
    return;
  }
  try {
    const started = await parts.store.resume(job.id);
    Notification.info(
      `${job.name} resumed on the server as a detached job (${started.id})`,
      { autoClose: 5000 }
    );
  } catch (reason) {
    fail(`Cannot resume ${job.name}: ${(reason as Error).message}`);
  }
}

export function addCommands(parts: ICommandParts): void {
  const { app } = parts;
  const hasCodeCell = () =>
    parts.notebooks?.currentWidget?.content.activeCell instanceof CodeCell;
  app.commands.addCommand(CommandIDs.runCell, {
    label: 'Run Cell as Background Job…',
    caption:
      'Run this cell in a separate kernel; its results come back when it ends',
    icon: runJobIcon,
    isEnabled: hasCodeCell,
    execute: args => runCell(parts, args)
  });
  app.commands.addCommand(CommandIDs.runSelection, {
    label: 'Run Selection as Background Job…',
    caption: 'Run the selected code (or the current line) as a background job',
    isEnabled: args =>
      typeof args.code === 'string' ||
      inNotebook(parts) ||
      inPythonEditor(parts),
    execute: args => runSelection(parts, args)
  });
  app.commands.addCommand(CommandIDs.runFile, {
    label: 'Run as Background Job…',
    caption: 'Run a .py file as a background job',
    isEnabled: args =>
      typeof args.path === 'string' ||
      fromFileBrowser(parts) ||
      inPythonEditor(parts),
    icon: runJobIcon,
    execute: args => runFile(parts, args)
  });
  app.commands.addCommand(CommandIDs.openPanel, {
    label: 'Show Background Jobs',
    caption: 'The Jobs panel: every background job of this server',
    icon: jobsIcon,
    execute: args => {
      if (!parts.panel.isAttached) {
        app.shell.add(parts.panel, 'right', { rank: PANEL_RANK });
      }
      app.shell.activateById(parts.panel.id);
      parts.panel.showJob(typeof args.id === 'string' ? args.id : null);
    }
  });
}
