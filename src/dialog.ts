/**
 * RStudio's "Start Background Job" dialog: name, environment, results, working
 * directory, kernel, timeout, memory limit, checkpoints, retries and detach; the last
 * choices are remembered.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { IStateDB } from '@jupyterlab/statedb';
import { ReadonlyJSONObject } from '@lumino/coreutils';
import { Widget } from '@lumino/widgets';

import { DEFAULT_OPTIONS, IRunOptions } from './api';

/** What is being run decides which choices make sense. */
export interface IDialogContext {
  title: string;
  /** ``cell``: a notebook's cell or selection; ``file``: a script; ``server``: code with
   * no notebook (started by the server, so detached and with nothing shipped). */
  kind: 'cell' | 'file' | 'server';
  /** The notebook whose variables a ``file`` job may copy, if one is open. */
  notebook: string | null;
  kernels: { name: string; display: string }[];
  defaults: Partial<IRunOptions>;
  /** What is wrong with a working directory ("" when nothing, or when it cannot tell):
   * asked before the dialog closes. */
  checkFolder?: (path: string) => Promise<string>;
}

export const OPTION_KEYS: (keyof IRunOptions)[] = [
  'name',
  'env',
  'results',
  'workdir',
  'kernel',
  'timeout',
  'memory_limit',
  'checkpoint',
  'retries',
  'after',
  'detach'
];

const STATE_KEY = 'jupyter-bgjobs:dialog';

/** Remembered choices, per kind of job (a script's results default is not a cell's). */
export class Choices {
  constructor(private _db: IStateDB | null) {}

  async get(kind: string): Promise<IRunOptions> {
    const base: IRunOptions =
      kind === 'cell'
        ? { ...DEFAULT_OPTIONS }
        : {
            ...DEFAULT_OPTIONS,
            env: 'none',
            results: kind === 'file' ? 'object' : 'none'
          };
    if (kind === 'server') {
      base.detach = true;
    }
    try {
      const all = ((await this._db?.fetch(STATE_KEY)) || {}) as {
        [kind: string]: Partial<IRunOptions>;
      };
      return { ...base, ...(all[kind] || {}), name: '', after: '' };
    } catch {
      return base;
    }
  }

  /** What a job of ``context`` starts from: the remembered choices, then its own. */
  async initial(
    context: Pick<IDialogContext, 'kind' | 'defaults'>
  ): Promise<IRunOptions> {
    return { ...(await this.get(context.kind)), ...context.defaults };
  }

  async set(kind: string, options: IRunOptions): Promise<void> {
    if (!this._db) {
      return;
    }
    const all = ((await this._db.fetch(STATE_KEY)) || {}) as {
      [kind: string]: ReadonlyJSONObject;
    };
    // The name and what it waits for are the job's own; the rest is how this user
    // likes to run jobs.
    const { name: _name, after: _after, ...rest } = options;
    void _name;
    void _after;
    await this._db.save(STATE_KEY, { ...all, [kind]: rest });
  }
}

function field(label: string, control: HTMLElement, help = ''): HTMLElement {
  const row = document.createElement('label');
  row.className = 'jp-bgjobs-field';
  const text = document.createElement('span');
  text.textContent = label;
  row.append(text, control);
  if (help) {
    const note = document.createElement('small');
    note.textContent = help;
    row.appendChild(note);
  }
  return row;
}

function select(
  name: string,
  choices: [string, string][],
  value: string
): HTMLSelectElement {
  const node = document.createElement('select');
  node.name = name;
  node.className = 'jp-mod-styled';
  for (const [key, label] of choices) {
    const option = document.createElement('option');
    option.value = key;
    option.textContent = label;
    node.appendChild(option);
  }
  node.value = choices.some(([k]) => k === value) ? value : choices[0][0];
  return node;
}

function input(
  name: string,
  value: string,
  placeholder: string
): HTMLInputElement {
  const node = document.createElement('input');
  node.name = name;
  node.className = 'jp-mod-styled';
  node.value = value;
  node.placeholder = placeholder;
  return node;
}

class OptionsBody extends Widget implements Dialog.IBodyWidget<IRunOptions> {
  constructor(context: IDialogContext, options: IRunOptions, problem = '') {
    super();
    this.addClass('jp-bgjobs-dialog');
    if (problem) {
      const said = document.createElement('p');
      said.className = 'jp-bgjobs-dialog-problem';
      said.setAttribute('role', 'alert');
      said.textContent = problem;
      this.node.appendChild(said);
    }
    const kind = context.kind;
    this._name = input('name', options.name, 'automatic');
    const envs: [string, string][] =
      kind === 'cell'
        ? [
            ['auto', 'Names the code reads (auto)'],
            ['all', "A copy of the notebook's variables (all)"],
            ['none', 'Nothing: a clean kernel (none)']
          ]
        : kind === 'file' && context.notebook
          ? [
              ['none', 'Nothing: a clean kernel (none)'],
              ['all', `A copy of ${context.notebook}'s variables (all)`]
            ]
          : [['none', 'Nothing: a clean kernel (none)']];
    this._env = select('env', envs, options.env);
    const results: [string, string][] =
      kind === 'server'
        ? [['none', 'Kept in the store (%bgjob_attach NAME)']]
        : [
            ['globals', "Into the notebook's globals"],
            ['object', 'Into an object, <name>_results'],
            ['none', 'Not copied (job.results only)']
          ];
    this._results = select('results', results, options.results);
    this._workdir = input(
      'workdir',
      options.workdir,
      kind === 'file' ? "the script's folder" : "the notebook's folder"
    );
    const kernels: [string, string][] = [['', 'Default (python3)']].concat(
      context.kernels.map(k => [k.name, k.display] as [string, string])
    ) as [string, string][];
    this._kernel = select('kernel', kernels, options.kernel);
    this._timeout = input('timeout', options.timeout, 'none (seconds)');
    this._memory = input(
      'memory_limit',
      options.memory_limit || '',
      'none (8G, 300MB)'
    );
    this._checkpoint = document.createElement('input');
    this._checkpoint.type = 'checkbox';
    this._checkpoint.name = 'checkpoint';
    this._checkpoint.checked = Boolean(options.checkpoint);
    this._retries = input('retries', options.retries || '', 'none (a count)');
    this._after = input(
      'after',
      options.after || '',
      'the jobs that make the names it reads'
    );
    this._detach = document.createElement('input');
    this._detach.type = 'checkbox';
    this._detach.name = 'detach';
    this._detach.checked = options.detach || kind === 'server';
    this._detach.disabled = kind === 'server';
    this.node.append(
      field('Name', this._name),
      field('Environment', this._env, 'what the job gets to start with'),
      field('Results', this._results, 'where what it makes goes when it ends'),
      field('Working directory', this._workdir),
      field('Kernel', this._kernel),
      field('Timeout', this._timeout),
      field(
        'Memory limit',
        this._memory,
        'ends the job, failed, when its kernel holds more'
      ),
      field(
        'Checkpoints',
        this._checkpoint,
        'saves its variables where each section ends: Resume goes on from there'
      ),
      field(
        'Retries',
        this._retries,
        'resumes it by itself this many times if it fails or dies'
      ),
      field(
        'Wait for',
        this._after,
        'jobs to wait for whatever the names (fit,clean); none: no wait at all'
      ),
      field(
        'Detach',
        this._detach,
        kind === 'server'
          ? 'started by the server: it outlives every kernel'
          : 'outlives this kernel; results wait in the store'
      )
    );
  }

  getValue(): IRunOptions {
    return {
      name: this._name.value.trim(),
      env: this._env.value,
      results: this._results.value,
      workdir: this._workdir.value.trim(),
      kernel: this._kernel.value,
      timeout: this._timeout.value.trim(),
      memory_limit: this._memory.value.trim(),
      checkpoint: this._checkpoint.checked,
      retries: this._retries.value.trim(),
      after: this._after.value.trim(),
      detach: this._detach.checked
    };
  }

  private _name: HTMLInputElement;
  private _env: HTMLSelectElement;
  private _results: HTMLSelectElement;
  private _workdir: HTMLInputElement;
  private _kernel: HTMLSelectElement;
  private _timeout: HTMLInputElement;
  private _memory: HTMLInputElement;
  private _checkpoint: HTMLInputElement;
  private _retries: HTMLInputElement;
  private _after: HTMLInputElement;
  private _detach: HTMLInputElement;
}

/** Ask for the options; ``null`` when the user cancels. */
export async function askOptions(
  context: IDialogContext,
  choices: Choices
): Promise<IRunOptions | null> {
  let options = await choices.initial(context);
  let problem = '';
  for (;;) {
    const body = new OptionsBody(context, options, problem);
    const result = await showDialog({
      title: context.title,
      body,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Start' })],
      focusNodeSelector: 'input[name="name"]'
    });
    if (!result.button.accept || !result.value) {
      return null;
    }
    // A refused value is said in the dialog, shown again as typed, and not remembered.
    problem = refused(result.value);
    if (!problem && result.value.workdir && context.checkFolder) {
      problem = await context.checkFolder(result.value.workdir);
    }
    if (!problem) {
      await choices.set(context.kind, result.value);
      return result.value;
    }
    options = result.value;
  }
}

/** What is wrong with the options, in one line that names the fix; "" when nothing. */
export function refused(options: IRunOptions): string {
  if (options.timeout && !(Number(options.timeout) > 0)) {
    return `The timeout must be a number of seconds above 0, not "${options.timeout}"; leave it empty for none.`;
  }
  if (
    options.memory_limit &&
    !/^\s*\d+(\.\d+)?\s*([kmgt]i?b?|b)?\s*$/i.test(options.memory_limit)
  ) {
    return `A memory limit is a size such as 8G, 300MB or 1.5GiB, not "${options.memory_limit}"; leave it empty for none.`;
  }
  if (options.retries && !/^\s*\d+\s*$/.test(options.retries)) {
    return `Retries is a whole number of times (0 or more), not "${options.retries}"; leave it empty for none.`;
  }
  if (
    options.after &&
    !/^\s*[A-Za-z_][\w-]*(\s*,\s*[A-Za-z_][\w-]*)*\s*$/.test(options.after)
  ) {
    return `Wait for takes the names of jobs (fit,clean) or none, not "${options.after}".`;
  }
  if (options.name && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(options.name)) {
    return `A job's name is a Python identifier (letters, digits and _, for example fit_model), not "${options.name}".`;
  }
  return '';
}
