import { LabIcon } from '@jupyterlab/ui-components';

const JOBS_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M4 5h11v2H4zm0 6h11v2H4zm0 6h7v2H4z"/>
    <path d="M17 13l6 4-6 4z"/>
  </g>
</svg>`;

const RUN_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M3 4l9 6-9 6z"/>
    <path d="M13 14h9v2h-9zm0 4h9v2h-9z"/>
  </g>
</svg>`;

/** The Jobs panel's icon. */
export const jobsIcon = new LabIcon({
  name: 'jupyter-bgjobs:jobs',
  svgstr: JOBS_SVG
});

/** "Run as Background Job". */
export const runJobIcon = new LabIcon({
  name: 'jupyter-bgjobs:run',
  svgstr: RUN_SVG
});
