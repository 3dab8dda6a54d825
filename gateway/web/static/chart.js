// A numeric sensor's chart, drawn as SVG (no library, no inline style): the last hour, day or week
// from GET /api/sensors/<id>/history (a minute's min, max and last), then the latest readings.
// A gateway without that endpoint gets the recent readings the WebSocket brings, as before.

const SVG = "http://www.w3.org/2000/svg";
export const POINTS = 120; // as gateway/engine/board.py keeps them
export const SPACING_MS = 1000;
const MINUTE = 60000;
const DRAWN = 240; // at most this many points across the chart: a week is 10080 minutes

export const RANGES = { "1h": 3600000, "24h": 86400000, "7d": 604800000 };

/** Add a reading to a series the way the server does: one point per slot, the latest wins. */
export function remember(series, ms, value) {
  const last = series[series.length - 1];
  if (last && ms - last[0] < SPACING_MS) last[1] = value;
  else series.push([ms, value]);
  if (series.length > POINTS) series.splice(0, series.length - POINTS);
}

/**
 * The sensor's minutes over `range`, oldest first, as {t (ms), min, max, last}; "absent" when this
 * gateway has no history endpoint (its route answers 404), null when this sensor's could not be had.
 */
export async function fetchHistory(id, range) {
  const response = await fetch(`/api/sensors/${encodeURIComponent(id)}/history?since=${range}`, {
    credentials: "same-origin",
    cache: "no-store",
  });
  const body = await response.json().catch(() => null);
  if (response.status === 404 && (body === null || body.error === "not found")) return "absent";
  if (!response.ok || !body || !Array.isArray(body.points)) return null;
  return body.points
    .map((p) => ({ t: Date.parse(p.t), min: p.min, max: p.max, last: p.last }))
    .filter((p) => Number.isFinite(p.t) && [p.min, p.max, p.last].every(Number.isFinite));
}

/** A live reading into the minutes already fetched: it joins its minute or starts the next one. */
export function addToMinutes(minutes, range, ms, value) {
  const t = Math.floor(ms / MINUTE) * MINUTE;
  const last = minutes[minutes.length - 1];
  if (last && last.t === t) {
    last.min = Math.min(last.min, value);
    last.max = Math.max(last.max, value);
    last.last = value;
  } else if (!last || t > last.t) minutes.push({ t, min: value, max: value, last: value });
  const from = ms - RANGES[range];
  while (minutes.length && minutes[0].t < from) minutes.shift();
}

/** What the chart draws, as [t, last, min, max]: stored minutes before the recent readings, then those. */
export function series(minutes, recent) {
  const fine = recent.map(([t, v]) => [t, v, v, v]);
  if (!minutes || minutes.length === 0) return fine;
  const before = fine.length ? Math.floor(fine[0][0] / MINUTE) * MINUTE : Infinity;
  const coarse = thin(minutes.filter((m) => m.t < before));
  return coarse.concat(fine);
}

function thin(minutes) {
  if (minutes.length <= DRAWN) return minutes.map((m) => [m.t, m.last, m.min, m.max]);
  const per = Math.ceil(minutes.length / DRAWN);
  const out = [];
  for (let i = 0; i < minutes.length; i += per) {
    const group = minutes.slice(i, i + per);
    out.push([group[0].t, group[group.length - 1].last, Math.min(...group.map((m) => m.min)), Math.max(...group.map((m) => m.max))]);
  }
  return out;
}

export function sparkline() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 100 30");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const band = document.createElementNS(SVG, "polygon");
  band.setAttribute("class", "band");
  svg.append(band, document.createElementNS(SVG, "polyline"));
  return svg;
}

/** Draw [t, last, min, max] points; the band shows each minute's min to max. Returns {lo, hi}. */
export function draw(svg, points, label) {
  svg.setAttribute("aria-label", label);
  const [band, line] = svg.children;
  if (points.length < 2) {
    line.setAttribute("points", "");
    band.setAttribute("points", "");
    return null;
  }
  const lo = Math.min(...points.map((p) => p[2]));
  const hi = Math.max(...points.map((p) => p[3]));
  const t0 = points[0][0];
  const span = Math.max(1, points[points.length - 1][0] - t0);
  const x = (t) => (((t - t0) / span) * 100).toFixed(2);
  const y = (v) => (hi === lo ? 15 : 28 - ((v - lo) / (hi - lo)) * 26).toFixed(2);
  line.setAttribute("points", points.map((p) => `${x(p[0])},${y(p[1])}`).join(" "));
  const spread = points.some((p) => p[2] !== p[3]);
  const edge = points.map((p) => `${x(p[0])},${y(p[3])}`).concat(points.map((p) => `${x(p[0])},${y(p[2])}`).reverse());
  band.setAttribute("points", spread ? edge.join(" ") : "");
  return { lo, hi };
}
