/**
 * The code the IDE sends to a notebook's kernel to start a job: the public magics, so a
 * job started from a menu is the job a user would have typed.
 */
import { DEFAULT_OPTIONS, IRunOptions } from './api';

/** A Python string literal of ``text`` (JSON's escapes are Python's too). */
function pyString(text: string): string {
  return JSON.stringify(text);
}

/** ``text`` as one shell word, for the magics' shlex parsing. */
function shellWord(text: string): string {
  return /^[\w@%+=:,./-]+$/.test(text)
    ? text
    : "'" + text.replace(/'/g, "'\\''") + "'";
}

function shared(o: IRunOptions): string[] {
  const words: string[] = [];
  if (o.workdir) {
    words.push('--workdir', shellWord(o.workdir));
  }
  if (o.kernel) {
    words.push('--kernel', shellWord(o.kernel));
  }
  if (o.timeout) {
    words.push('--timeout', shellWord(o.timeout));
  }
  if (o.memory_limit) {
    words.push('--memory-limit', shellWord(o.memory_limit));
  }
  if (o.checkpoint) {
    words.push('--checkpoint');
  }
  if (o.retries && Number(o.retries) > 0) {
    words.push('--retries', shellWord(String(Number(o.retries))));
  }
  if (o.after) {
    words.push('--after', shellWord(o.after.replace(/\s+/g, '')));
  }
  if (o.detach) {
    words.push('--detach');
  }
  return words;
}

/** A magic's line as IPython reads it: ``$x`` and ``{x}`` would be expanded from the
 * notebook's variables, so they are doubled to stand for themselves. */
function magicLine(words: string[]): string {
  return pyString(
    words.join(' ').replace(/[${}]/g, c => (c === '$' ? '$$' : c + c))
  );
}

// Loaded once: a second load_ext would say "already loaded" above every job's row.
const LOAD =
  "if 'jupyter_bgjobs' not in get_ipython().extension_manager.loaded:\n" +
  "    get_ipython().run_line_magic('load_ext', 'jupyter_bgjobs')\n";

/** ``%%bgjob`` of ``source`` with the dialog's options. */
export function cellCode(source: string, o: IRunOptions): string {
  const words = o.name ? [shellWord(o.name)] : [];
  words.push('--env', shellWord(o.env || DEFAULT_OPTIONS.env));
  words.push('--results', shellWord(o.results || DEFAULT_OPTIONS.results));
  words.push(...shared(o));
  return (
    LOAD +
    `get_ipython().run_cell_magic('bgjob', ${magicLine(words)}, ${pyString(source)})`
  );
}

/** ``%bgjob_script`` of the file at ``path`` (as the kernel sees it). */
export function scriptCode(path: string, o: IRunOptions): string {
  const words = [shellWord(path)];
  if (o.name) {
    words.push('--name', shellWord(o.name));
  }
  words.push('--env', o.env === 'all' ? 'all' : 'none');
  words.push('--results', shellWord(o.results || 'object'));
  words.push(...shared(o));
  return (
    LOAD + `get_ipython().run_line_magic('bgjob_script', ${magicLine(words)})`
  );
}
