// A sparkline of a numeric sensor's recent readings, drawn as SVG (no library, no inline style).

const SVG = "http://www.w3.org/2000/svg";
export const POINTS = 120; // as gateway/engine/board.py keeps them
export const SPACING_MS = 1000;

/** Add a reading to a series the way the server does: one point per slot, the latest wins. */
export function remember(series, ms, value) {
  const last = series[series.length - 1];
  if (last && ms - last[0] < SPACING_MS) last[1] = value;
  else series.push([ms, value]);
  if (series.length > POINTS) series.splice(0, series.length - POINTS);
}

export function sparkline() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 100 30");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.append(document.createElementNS(SVG, "polyline"));
  return svg;
}

export function draw(svg, series, label) {
  svg.setAttribute("aria-label", label);
  const line = svg.firstChild;
  if (series.length < 2) {
    line.setAttribute("points", "");
    return null;
  }
  const values = series.map((p) => p[1]);
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const t0 = series[0][0];
  const span = Math.max(1, series[series.length - 1][0] - t0);
  const points = series.map(([t, v]) => {
    const x = ((t - t0) / span) * 100;
    const y = hi === lo ? 15 : 28 - ((v - lo) / (hi - lo)) * 26;
    return `${x.toFixed(2)},${y.toFixed(2)}`;
  });
  line.setAttribute("points", points.join(" "));
  return { lo, hi };
}
