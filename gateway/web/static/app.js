// The dashboard: open alerts with Acknowledge and Mute, the muted list, the site's mode, sensors by
// zone with the summary strip (sensors.js), recently cleared alerts, live over /ws/alerts/.
import { el, keyed, replaceChildren } from "./dom.js";
import { ago, clock, millis, showValue } from "./format.js";
import { Management, describe } from "./manage.js";
import { SensorPanel } from "./sensors.js";
import { AlertStream } from "./stream.js";

const HISTORY = 50;
const STATE_RANK = { active: 0, acknowledged: 1, cleared: 2 };
const SEVERITY_RANK = { critical: 0, warning: 1, info: 2 };

const state = {
  alerts: new Map(), // id -> alert JSON plus `missed`
  healthTimer: null,
  resumeTo: null, // hello's seq after a reconnect: raises up to it happened while we were away
  missedIds: new Set(),
};

const $ = (id) => document.getElementById(id);
const stream = new AlertStream(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/alerts/`, {
  hello,
  alert: onAlert,
  sensor: (msg) => sensors.upsert(msg.sensor),
  sensors: (msg) => sensors.replace(msg.sensors),
  silence: (msg) => manage.onSilence(msg),
  mode: (msg) => manage.onMode(msg),
  error: (msg) => toast(msg.error, "error"),
  state: showConnection,
  unauthorized: () => location.assign("/login"),
});
const manage = new Management(stream, toast, () => render());
manage.bindMode($("mode"));
const sensors = new SensorPanel(manage, () => render());
sensors.bind();

// Alerts: merged by id, and a state never goes back (active -> acknowledged -> cleared),
// so a replayed or repeated event can neither duplicate an alert nor undo a newer one.
function mergeAlert(alert, extra = {}) {
  const known = state.alerts.get(alert.id);
  if (known && STATE_RANK[alert.state] < STATE_RANK[known.state]) return known;
  const merged = { ...known, ...alert, ...extra, missed: Boolean(known?.missed || extra.missed) };
  state.alerts.set(alert.id, merged);
  return merged;
}

let missedCount = 0;
let missedTimer = null;

function hello(msg, resumedFrom) {
  document.title = `${msg.site} · gateway`;
  const open = new Set(msg.alerts.map((a) => a.id));
  for (const alert of msg.alerts) mergeAlert(alert);
  // Open here but not on the server: cleared while we were away (resume brings the details).
  for (const alert of state.alerts.values()) {
    if (alert.state !== "cleared" && !open.has(alert.id)) alert.state = "cleared";
  }
  sensors.hello(msg.sensors);
  manage.hello(msg);
  state.resumeTo = resumedFrom === null ? null : msg.seq;
  if (resumedFrom === null) loadHistory();
  refreshHealth();
  render();
}

function onAlert(msg) {
  // Raised while this page was disconnected: it arrives through `resume`, at or below hello's seq.
  const missed = msg.event === "raised" && state.resumeTo != null && msg.seq <= state.resumeTo;
  mergeAlert(msg.alert, missed ? { missed: true } : {});
  if (missed && !state.missedIds.has(msg.alert.id)) {
    state.missedIds.add(msg.alert.id);
    noteMissed();
  }
  if (msg.event === "repeated") toast(`Still active: ${msg.alert.message}`, "warning");
  if (msg.event === "escalated") toast(`Escalated to level ${msg.level}: ${msg.alert.message}`, "warning");
  if (msg.event === "unsilenced") toast(`No longer muted, still active: ${msg.alert.message}`, "warning");
  render();
}

function noteMissed() {
  missedCount += 1;
  clearTimeout(missedTimer);
  missedTimer = setTimeout(() => {
    toast(`${missedCount} alert${missedCount === 1 ? "" : "s"} raised while this screen was disconnected`, "warning");
    missedCount = 0;
  }, 300);
}

async function loadHistory() {
  try {
    const response = await fetch(`/api/alerts?limit=${HISTORY}`, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const body = await response.json();
    for (const alert of body.alerts) mergeAlert(alert);
    render();
  } catch (err) {
    toast(`Could not load the alert history (${err.message})`, "error");
  }
}

// Rendering, batched to one pass per frame however many events arrive.

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderActive();
    manage.renderList($("silences"), $("silences-empty"), $("silences-count"));
    manage.renderMode($("mode-box"), $("mode"));
    renderHistory();
    sensors.render(new Set([...state.alerts.values()].filter((a) => a.state === "active").map((a) => a.sensor)));
    tick();
  });
}

function byUrgency(a, b) {
  return (
    STATE_RANK[a.state] - STATE_RANK[b.state] ||
    SEVERITY_RANK[a.severity] - SEVERITY_RANK[b.severity] ||
    (millis(b.raised_at) ?? 0) - (millis(a.raised_at) ?? 0)
  );
}

function sensorLabel(alert) {
  return `${sensors.name(alert.sensor)} · ${alert.zone}`;
}

function renderActive() {
  const open = [...state.alerts.values()].filter((a) => a.state !== "cleared").sort(byUrgency);
  // The counter counts what is listed under it; how many still want a hand is said beside it.
  const waiting = open.filter((a) => a.state === "active").length;
  $("active-count").textContent = String(open.length);
  $("unacked").textContent = open.length === 0 ? "" : `${waiting} unacknowledged`;
  $("active-empty").hidden = open.length > 0;
  keyed($("active"), open, (a) => a.id, createAlertItem, updateAlertItem);
}

function createAlertItem(alert) {
  const button = el("button", { type: "button", class: "ack", text: "Acknowledge" });
  button.addEventListener("click", () => acknowledge(alert.id, button));
  // Its rule on its sensor, as Telegram's button does: the sensor's other rules still speak.
  const mute = el("button", { type: "button", class: "mute quiet", text: "Mute 1h", "aria-label": `Mute ${alert.message} for 1 hour` });
  mute.addEventListener("click", () => manage.mute({ sensor: alert.sensor, rule: alert.rule }, mute));
  return el(
    "li",
    { class: "alert", "data-alert-id": alert.id },
    el("div", { class: "message" }),
    el("div", { class: "meta" }),
    el("div", { class: "acked" }),
    el("div", { class: "actions" }, button, mute),
  );
}

function markers(alert, muted) {
  return [
    muted ? el("span", { class: "badge muted-badge", title: `muted until ${clock(muted.ends_at)} (${describe(muted)})`, text: "🔕 muted" }) : null,
    alert.escalation ? el("span", { class: "badge escalated", text: `⏫ level ${alert.escalation}` }) : null,
    alert.missed ? el("span", { class: "missed", text: "while disconnected" }) : null,
  ];
}

function updateAlertItem(node, alert) {
  const muted = manage.mutedBy(alert);
  node.className = `alert sev-${alert.severity} state-${alert.state}${muted ? " is-muted" : ""}`;
  const [message, meta, acked, actions] = node.children;
  replaceChildren(message, el("span", { class: `badge sev-${alert.severity}`, text: alert.severity }), ...markers(alert, muted), alert.message);
  replaceChildren(
    meta,
    `${sensorLabel(alert)} · raised `,
    el("time", { "data-since": millis(alert.raised_at), datetime: alert.raised_at, title: clock(alert.raised_at) }),
    ` · ${alert.display ?? showValue(alert.value)} · id ${alert.id}`,
  );
  const [button, mute] = actions.children;
  mute.hidden = Boolean(muted);
  const active = alert.state === "active";
  button.hidden = !active;
  if (active && button.dataset.pending !== "1") button.disabled = false;
  acked.hidden = active;
  acked.textContent = active ? "" : `Acknowledged by ${alert.acknowledged_by} at ${clock(alert.acknowledged_at)}`;
}

function acknowledge(id, button) {
  if (!stream.ack(id)) {
    toast("Not connected: the acknowledgement was not sent. Try again once the dashboard is live.", "error");
    return;
  }
  button.disabled = true;
  button.dataset.pending = "1";
  // The acknowledged event re-renders the alert; if an error comes instead, the button returns.
  setTimeout(() => {
    button.dataset.pending = "";
    if (state.alerts.get(id)?.state === "active") button.disabled = false;
  }, 5000);
}

function renderHistory() {
  // Open alerts are listed above; here only what has ended.
  const recent = [...state.alerts.values()]
    .filter((a) => a.state === "cleared")
    .sort((a, b) => (millis(b.raised_at) ?? 0) - (millis(a.raised_at) ?? 0))
    .slice(0, HISTORY);
  $("history-empty").hidden = recent.length > 0;
  keyed(
    $("history"),
    recent,
    (a) => a.id,
    (alert) => el("li", { class: "entry", "data-alert-id": alert.id }),
    (node, alert) => {
      node.className = `entry state-${alert.state}`;
      const steps = [el("li", { text: `raised ${clock(alert.raised_at)}` })];
      if (alert.acknowledged_at) {
        steps.push(el("li", { text: `acknowledged by ${alert.acknowledged_by} at ${clock(alert.acknowledged_at)}` }));
      }
      if (alert.cleared_at) steps.push(el("li", { text: `cleared ${clock(alert.cleared_at)}` }));
      replaceChildren(
        node,
        el(
          "div",
          { class: "what" },
          el("span", { class: `badge sev-${alert.severity}`, text: alert.severity }),
          alert.message,
          alert.missed ? el("span", { class: "missed", text: "while disconnected" }) : null,
        ),
        el("div", { class: "meta", text: `${sensorLabel(alert)} · ${alert.state} · id ${alert.id}` }),
        el("ul", { class: "steps" }, steps),
      );
    },
  );
}

// Relative times move on by themselves.
function tick() {
  const now = Date.now();
  for (const node of document.querySelectorAll("[data-since]")) {
    node.textContent = ago(Number(node.dataset.since), now);
  }
}
setInterval(tick, 1000);

function showConnection(name, detail) {
  $("connection").className = `conn conn-${name}`;
  $("connection-text").textContent = detail;
  if (name === "live") return;
  for (const badge of $("protocols").children) badge.className = "proto";
}

async function refreshHealth() {
  clearTimeout(state.healthTimer);
  state.healthTimer = setTimeout(refreshHealth, 10000);
  let report;
  try {
    const response = await fetch("/healthz", { credentials: "same-origin", cache: "no-store" });
    report = await response.json();
  } catch {
    return; // the socket's indicator already says the gateway is unreachable
  }
  const badges = Object.entries(report.protocols || {}).map(([name, p]) =>
    el("span", { class: `proto ${p.up ? "proto-up" : "proto-down"}`, "data-protocol": name, title: p.detail || "", text: `${name} ${p.up ? "up" : "down"}` }),
  );
  replaceChildren($("protocols"), badges);
}

function toast(text, kind = "info") {
  const node = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status", text });
  $("toasts").append(node);
  setTimeout(() => node.remove(), kind === "error" ? 10000 : 6000);
  while ($("toasts").children.length > 4) $("toasts").firstChild.remove();
}

stream.start();
