/**
 * The states of a job and how each shows, generated from the Python
 * package's `_states.py`. Do not edit: a test holds this file to it.
 */
/** A job's states, in the order it goes through them. */
export const STATES = [
  'pending',
  'waiting',
  'starting',
  'running',
  'succeeded',
  'failed',
  'cancelled',
  'timed_out',
  'died'
];

/** The states a job ends in. */
export const FINAL_STATES = [
  'succeeded',
  'failed',
  'cancelled',
  'timed_out',
  'died'
];

/** The ends that can come before a job's last statement. */
export const ENDED_ON_ITS_WAY = ['failed', 'cancelled', 'timed_out', 'died'];

/** Each state's icon. */
export const STATE_ICONS: { [state: string]: string } = {
  pending: '◌',
  waiting: '⧗',
  starting: '⏳',
  running: '▶',
  idle: '○',
  succeeded: '✔',
  failed: '✖',
  cancelled: '■',
  timed_out: '⏱',
  died: '☠',
  damaged: '⚠',
  partial: '⚠'
};

/** Each state's colour, a JupyterLab theme variable. */
export const STATE_THEME: { [state: string]: string } = {
  pending: '--jp-brand-color1',
  waiting: '--jp-brand-color1',
  starting: '--jp-brand-color1',
  running: '--jp-brand-color1',
  idle: '--jp-ui-font-color2',
  succeeded: '--jp-success-color1',
  failed: '--jp-error-color1',
  cancelled: '--jp-ui-font-color2',
  timed_out: '--jp-warn-color0',
  died: '--jp-error-color1',
  damaged: '--jp-warn-color0',
  partial: '--jp-warn-color0'
};

/** The level of the notification each end raises. */
export const ENDED_NOTICE: { [state: string]: string } = {
  succeeded: 'success',
  failed: 'error',
  cancelled: 'info',
  timed_out: 'warning',
  died: 'error',
  damaged: 'warning'
};
