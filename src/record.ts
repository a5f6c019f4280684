/**
 * A job's record and the row of the Jobs pane, generated from the Python
 * package's `_record.py`. Do not edit: a test holds this file to it.
 */

/** One transition of a job: what happened, the state it led to, when, and why. */
export interface IHistoryEntry {
  event: string;
  state: string;
  at: string;
  reason: string;
}

/** What a job is, as its record (`state.json`) says. */
export interface IJobRecord {
  id: string;
  name: string;
  kind: string;
  state: string;
  progress: [number, number];
  section: string;
  status: string;
  started: string | null;
  finished: string | null;
  finished_ts: number | null;
  elapsed: number | null;
  error: [string, string, string[]] | null;
  reason: string;
  exit_code: number | null;
  log_path: string | null;
  log_note: string;
  owner: string | null;
  owner_pid: number | null;
  host_pid: number | null;
  host_id: string | null;
  kernel_pid: number | null;
  pid: number | null;
  detached: boolean;
  where: string | null;
  kernel: string | null;
  notebook: string | null;
  cell_id: string;
  skipped: { [key: string]: string }[];
  history: IHistoryEntry[];
  can_stop: boolean;
  report: string;
  resources: { [figure: string]: number };
  usage: [number, number, number][];
  memory_limit: number;
  attempt: number;
  attempts: number;
  checkpoint: { [fact: string]: string | number };
  resumed_from: string;
  resumed: string;
  waits_for: string[];
  waits_for_ids: string[];
  sweep: string;
  params: { [name: string]: unknown };
  timings: { [milestone: string]: number };
}

/** A row of the Jobs pane, as the server sends it. */
export interface IJob {
  id: string;
  name: string;
  state: string;
  progress: [number, number];
  section: string;
  status: string;
  started: string | null;
  finished: string | null;
  elapsed: number;
  where: string;
  notebook: string | null;
  notebook_path: string | null;
  cell_id: string;
  kind: string;
  detached: boolean;
  reason: string;
  log_note: string;
  report: string;
  can_stop: boolean;
  resources: { [figure: string]: number };
  attempt: number;
  attempts: number;
  checkpoint: { [fact: string]: string | number };
  resumed_from: string;
  resumed: string;
  waits_for: string[];
  waits_for_ids: string[];
  sweep: string;
  params: { [name: string]: unknown };
}
