/**
 * A job's memory and CPU over its life, drawn small in its detail: two lines from the
 * samples its record keeps (``usage``: seconds since start, bytes resident, CPU percent
 * of one core), with the figures in words beside them for readers that cannot see it.
 */
import { sizeText } from './rows';

const WIDTH = 240;
const HEIGHT = 48;
const SVG = 'http://www.w3.org/2000/svg';

function line(
  points: [number, number][],
  className: string
): SVGPolylineElement {
  const node = document.createElementNS(SVG, 'polyline');
  node.setAttribute('class', className);
  node.setAttribute('fill', 'none');
  node.setAttribute(
    'points',
    points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ')
  );
  return node;
}

/** The plot of ``samples`` and its words; null with fewer than two samples. */
export function usagePlot(
  samples: [number, number, number][] | undefined,
  resources: { [figure: string]: number } | undefined
): HTMLElement | null {
  if (!samples || samples.length < 2) {
    return null;
  }
  const last = samples[samples.length - 1][0] || 1;
  const topMemory = Math.max(...samples.map(s => s[1]), 1);
  const topCpu = Math.max(...samples.map(s => s[2]), 100);
  const x = (t: number) => (t / last) * WIDTH;
  const y = (v: number, top: number) => HEIGHT - 2 - (v / top) * (HEIGHT - 4);
  const figure = document.createElement('figure');
  figure.className = 'jp-bgjobs-usage-plot';
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute('width', String(WIDTH));
  svg.setAttribute('height', String(HEIGHT));
  svg.setAttribute('aria-hidden', 'true');
  svg.append(
    line(
      samples.map(s => [x(s[0]), y(s[1], topMemory)]),
      'jp-bgjobs-usage-memory'
    ),
    line(
      samples.map(s => [x(s[0]), y(s[2], topCpu)]),
      'jp-bgjobs-usage-cpu'
    )
  );
  const words = document.createElement('figcaption');
  const peak = resources?.peak ?? topMemory;
  const seconds = resources?.cpu_seconds;
  words.textContent =
    `Memory (peak ${sizeText(peak)}) and CPU (up to ${Math.round(
      Math.max(...samples.map(s => s[2]))
    )} % of a core)` +
    (seconds !== undefined ? `; ${seconds.toFixed(1)} CPU seconds` : '');
  figure.append(svg, words);
  return figure;
}
