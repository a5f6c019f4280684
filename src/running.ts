/**
 * Jobs in JupyterLab's own Running panel, where users look for "things that run": each
 * running job with Open (its detail in the Jobs pane) and Stop, and Stop All.
 */
import { IRunningSessionManagers } from '@jupyterlab/running';
import { Signal } from '@lumino/signaling';

import { IJob, JobStore } from './api';
import { jobsIcon } from './icons';
import { origin, stateLabel } from './rows';

export function addToRunning(
  managers: IRunningSessionManagers,
  store: JobStore,
  open: (job: IJob) => void,
  stop: (job: IJob) => void
): void {
  const changed = new Signal<JobStore, void>(store);
  store.changed.connect(() => changed.emit());
  const stoppable = () => store.running.filter(job => job.can_stop);
  managers.add({
    name: 'Background Jobs',
    running: () =>
      store.running.map(job => {
        const [done, total] = job.progress;
        const detail = [
          stateLabel(job.state),
          total ? `${done}/${total}` : '',
          origin(job)
        ]
          .filter(Boolean)
          .join(' · ');
        return {
          className: 'jp-bgjobs-running-item',
          icon: () => jobsIcon,
          label: () => job.name,
          labelTitle: () => `${job.name}: ${detail}`,
          detail: () => detail,
          open: () => open(job),
          shutdown: job.can_stop ? () => stop(job) : undefined
        };
      }),
    shutdownAll: () => stoppable().forEach(stop),
    refreshRunning: () => undefined,
    runningChanged: changed,
    shutdownLabel: 'Stop',
    shutdownAllLabel: 'Stop All',
    shutdownAllConfirmationText: () =>
      `Stop every running background job (${stoppable().length})?`
  });
}
