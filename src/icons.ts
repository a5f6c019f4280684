import { LabIcon } from '@jupyterlab/ui-components';

/** A 16 px icon in the theme's icon colour (``jp-icon3``) from its paths. */
function icon(name: string, paths: string[]): LabIcon {
  const body = paths.map(d => `<path d="${d}"/>`).join('');
  return new LabIcon({
    name,
    svgstr:
      '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
      `<g class="jp-icon3" fill="#616161">${body}</g></svg>`
  });
}

/** The Jobs panel's icon: a list with a run mark. */
export const jobsIcon = icon('jupyter-bgjobs:jobs', [
  'M4 5h11v2H4zm0 6h11v2H4zm0 6h7v2H4z',
  'M17 13l6 4-6 4z'
]);

/** "Run as Background Job": a run mark over lines. */
export const runJobIcon = icon('jupyter-bgjobs:run', [
  'M3 4l9 6-9 6z',
  'M13 14h9v2h-9zm0 4h9v2h-9z'
]);
