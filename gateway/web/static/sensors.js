// The sensors panel: tiles grouped by zone (each zone can be folded), the summary strip that
// counts and filters what needs looking at, the filter box and the charts' hour/day/week range.
import { append, el, keyed } from "./dom.js";
import { ago, clock, isNumber, millis, showValue } from "./format.js";
import { RANGES, addToMinutes, draw, fetchHistory, remember, series, sparkline } from "./chart.js";
import { KINDS, SensorFilter, countKinds, kindsOf } from "./devices.js";
import { describe } from "./manage.js";

const $ = (id) => document.getElementById(id);

export class SensorPanel {
  /** manage: the Management; changed(): the page re-renders. */
  constructor(manage, changed) {
    this.manage = manage;
    this.changed = changed;
    this.sensors = new Map(); // id -> sensor JSON plus `series` (recent readings)
    this.minutes = new Map(); // id -> the range's stored minutes, extended by live readings
    this.filter = new SensorFilter();
    this.range = "1h";
    this.history = "unknown"; // "present", or "absent" when the gateway has no history endpoint
    this.generation = 0; // a later load (another range, a reconnect) makes an earlier one moot
    this.unfold = false;
  }

  bind() {
    $("filter").addEventListener("input", (event) => {
      this.filter.setText(event.target.value);
      this.filterChanged();
    });
    $("filter-clear").addEventListener("click", () => {
      $("filter").value = "";
      this.filter.setText("");
      this.filter.kind = null;
      this.filterChanged();
    });
    for (const button of document.querySelectorAll(".ranges .range")) {
      button.addEventListener("click", () => this.setRange(button.dataset.range));
    }
  }

  filterChanged() {
    this.unfold = this.filter.active; // a folded zone opens to show what the filter found
    this.changed();
  }

  setRange(range) {
    if (!(range in RANGES) || range === this.range) return;
    this.range = range;
    for (const button of document.querySelectorAll(".ranges .range")) {
      button.setAttribute("aria-pressed", String(button.dataset.range === range));
    }
    this.minutes.clear();
    this.changed();
    this.loadHistory();
  }

  hello(sensors) {
    const seen = new Set();
    for (const sensor of sensors) {
      seen.add(sensor.id);
      this.upsert(sensor, sensor.recent);
    }
    for (const id of [...this.sensors.keys()]) {
      if (!seen.has(id)) {
        this.sensors.delete(id);
        this.minutes.delete(id);
      }
    }
    this.loadHistory(); // again after a reconnect: the minutes missed while away
  }

  replace(list) {
    // Sensors came or went (a reload, discovery): keep the readings of those that stay.
    const seen = new Set(list.map((sensor) => sensor.id));
    for (const id of [...this.sensors.keys()]) {
      if (!seen.has(id)) {
        this.sensors.delete(id);
        this.minutes.delete(id);
      }
    }
    for (const sensor of list) this.upsert(sensor);
  }

  upsert(sensor, recent) {
    const known = this.sensors.get(sensor.id);
    const readings = recent ? recent.map((p) => [p[0], p[1]]) : known?.series ?? [];
    const at = millis(sensor.updated_at);
    if (!recent && isNumber(sensor.value) && at !== null) {
      remember(readings, at, sensor.value);
      const minutes = this.minutes.get(sensor.id);
      if (minutes) addToMinutes(minutes, this.range, at, sensor.value);
    }
    const { recent: _dropped, ...fields } = sensor;
    this.sensors.set(sensor.id, { ...fields, series: readings });
    this.changed();
  }

  name(id) {
    return this.sensors.get(id)?.name ?? id;
  }

  async loadHistory() {
    const generation = ++this.generation;
    const range = this.range;
    if (this.history === "absent") return;
    const numeric = [...this.sensors.values()].filter((s) => isNumber(s.value) || s.unit).map((s) => s.id);
    if (numeric.length === 0) return;
    // One first: a gateway without the endpoint answers one 404, not one per sensor.
    const [first, ...rest] = numeric;
    const answers = [await fetchHistory(first, range).catch(() => null)];
    if (generation !== this.generation) return;
    if (answers[0] === "absent") {
      this.history = "absent";
      this.changed();
      return;
    }
    this.history = "present";
    answers.push(...(await Promise.all(rest.map((id) => fetchHistory(id, range).catch(() => null)))));
    if (generation !== this.generation) return;
    numeric.forEach((id, i) => {
      if (Array.isArray(answers[i])) this.minutes.set(id, answers[i]);
    });
    this.changed();
  }

  render(alerting) {
    const all = [...this.sensors.values()];
    this.renderSummary(countKinds(all));
    const zones = new Map();
    for (const sensor of all) {
      if (!zones.has(sensor.zone)) zones.set(sensor.zone, []);
      zones.get(sensor.zone).push(sensor);
    }
    const ordered = [...zones.entries()].sort(([a], [b]) => a.localeCompare(b));
    let shown = 0;
    keyed($("zones"), ordered, ([zone]) => zone, createZone, (node, [, sensors]) => {
      sensors.sort((a, b) => a.name.localeCompare(b.name));
      const matching = sensors.filter((s) => this.filter.accepts(s));
      shown += matching.length;
      node.hidden = matching.length === 0;
      if (this.unfold && matching.length) node.open = true;
      const [count, flags] = node.firstElementChild.querySelectorAll("span");
      count.textContent = String(sensors.length);
      flags.textContent = zoneFlags(sensors);
      keyed(node.lastElementChild, sensors, (s) => s.id, (s) => this.createTile(s), (tile, s) => {
        tile.hidden = !this.filter.accepts(s);
        if (!tile.hidden) this.updateTile(tile, s, alerting.has(s.id));
      });
    });
    this.unfold = false;
    $("sensors-count").textContent = String(all.length);
    $("filtered").hidden = !this.filter.active;
    $("filtered-text").textContent = this.filter.active ? this.describeFilter(shown, all.length) : "";
    $("history-note").hidden = this.history !== "absent";
  }

  describeFilter(shown, total) {
    const parts = [];
    if (this.filter.kind) parts.push(KINDS.find(([key]) => key === this.filter.kind)[2]);
    if (this.filter.words.length) parts.push(`“${this.filter.words.join(" ")}”`);
    return `${shown} of ${total} sensors: ${parts.join(", ")}.`;
  }

  renderSummary(counts) {
    keyed(
      $("summary"),
      KINDS,
      ([key]) => key,
      ([key]) => {
        const button = el("button", { type: "button", class: "chip", "data-kind": key }, el("span", { class: "chip-count" }), el("span", { class: "chip-label" }));
        button.addEventListener("click", () => {
          this.filter.toggleKind(key);
          this.filterChanged();
          if (this.filter.kind) $("sensors-title").scrollIntoView({ block: "start" });
        });
        return button;
      },
      (button, [key, one, several]) => {
        const n = counts[key];
        button.className = `chip chip-${key}${n ? " chip-some" : ""}`;
        button.setAttribute("aria-pressed", String(this.filter.kind === key));
        const [count, label] = button.children;
        count.textContent = String(n);
        label.textContent = n === 1 ? one : several;
      },
    );
  }

  createTile(sensor) {
    const mute = el("button", { type: "button", class: "mute quiet", text: "Mute 1h", "aria-label": `Mute ${sensor.name} for 1 hour` });
    mute.addEventListener("click", () => this.manage.mute({ sensor: sensor.id }, mute));
    return el(
      "article",
      { class: "tile", "data-sensor-id": sensor.id },
      el("div", { class: "name" }),
      el("div", { class: "value" }),
      el("div", { class: "foot" }, el("span", { class: "availability" }), el("time", { class: "updated" })),
      el("div", { class: "chart" }),
      el("div", { class: "tile-actions" }, el("span", { class: "badge muted-badge", text: "🔕 muted" }), mute),
    );
  }

  updateTile(tile, sensor, alerting) {
    const offline = sensor.online === false;
    const kinds = kindsOf(sensor).filter((k) => k !== "offline");
    tile.className = `tile${alerting ? " alerting" : ""}${offline ? " is-offline" : ""}${kinds.map((k) => ` is-${k}`).join("")}`;
    const [name, value, foot, chart, actions] = tile.children;
    const muted = this.manage.sensorMutedBy(sensor);
    const [badge, mute] = actions.children;
    badge.hidden = !muted;
    badge.title = muted ? `muted until ${clock(muted.ends_at)} (${describe(muted)})` : "";
    mute.hidden = Boolean(muted);
    if (muted) tile.classList.add("is-muted");
    name.textContent = sensor.name;
    name.title = sensor.id;
    const none = sensor.value === null || sensor.value === undefined;
    value.className = `value${none ? " no-data" : ""}`;
    value.textContent = none ? "–" : sensor.display ?? showValue(sensor.value);
    const [availability, updated] = foot.children;
    availability.className = `availability ${sensor.online === true ? "online" : offline ? "offline" : "unknown"}`;
    availability.textContent = sensor.online === true ? "online" : offline ? "offline" : "no data yet";
    const since = millis(sensor.updated_at);
    if (since === null) updated.removeAttribute("data-since");
    else updated.dataset.since = String(since);
    updated.textContent = since === null ? "" : ago(since);
    const points = series(this.minutes.get(sensor.id), sensor.series);
    chart.hidden = points.length < 2;
    if (chart.hidden) return;
    if (!chart.firstChild) append(chart, [sparkline(), el("div", { class: "spark-range" }, el("span"), el("span"))]);
    const range = draw(chart.firstChild, points, `${sensor.name}: ${this.history === "present" ? `the last ${RANGE_WORDS[this.range]}` : "recent values"}`);
    const [lo, hi] = chart.lastChild.children;
    const unit = sensor.unit ? ` ${sensor.unit}` : "";
    lo.textContent = range ? `min ${showValue(range.lo)}${unit}` : "";
    hi.textContent = range ? `max ${showValue(range.hi)}${unit}` : "";
  }
}

const RANGE_WORDS = { "1h": "hour", "24h": "day", "7d": "week" };

// Folded zones stay folded on this screen across reloads.
const FOLDED_KEY = "gateway.folded-zones";

function folded() {
  try {
    return new Set(JSON.parse(localStorage.getItem(FOLDED_KEY) || "[]"));
  } catch {
    return new Set();
  }
}

function createZone([zone]) {
  const node = el(
    "details",
    { class: "zone", "data-zone": zone, open: !folded().has(zone) },
    el("summary", {}, el("h3", { text: zone }), el("span", { class: "zone-count" }), el("span", { class: "zone-flags" })),
    el("div", { class: "tiles" }),
  );
  node.addEventListener("toggle", () => {
    const zones = folded();
    if (node.open) zones.delete(zone);
    else zones.add(zone);
    try {
      localStorage.setItem(FOLDED_KEY, JSON.stringify([...zones]));
    } catch {
      // private browsing or a full store: folding still works, it is only not remembered
    }
  });
  return node;
}

function zoneFlags(sensors) {
  const counts = countKinds(sensors);
  return KINDS.filter(([key]) => counts[key]).map(([key, one, several]) => `${counts[key]} ${counts[key] === 1 ? one : several}`).join(" · ");
}
