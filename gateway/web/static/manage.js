// The site's silences ("Mute 1h", the muted list with Unmute) and its mode selector (SPEC §10).
// Changes go over the WebSocket; what the page shows comes back from the gateway, from whoever made it.
import { el, keyed, replaceChildren } from "./dom.js";
import { clock, millis } from "./format.js";

const MATCHERS = ["sensor", "zone", "rule", "severity"];
export const MUTE_FOR = "1h";

export class Management {
  /** stream: the AlertStream; toast(text, kind); changed(): the page re-renders what depends on silences. */
  constructor(stream, toast, changed) {
    this.stream = stream;
    this.toast = toast;
    this.changed = changed;
    this.silences = new Map(); // id -> silence object, the active ones
    this.mode = { mode: "", modes: [] };
    this.expiry = null;
  }

  hello(msg) {
    this.silences = new Map((msg.silences || []).map((s) => [s.id, s]));
    this.mode = { mode: msg.mode || "", modes: msg.modes || [] };
    this.changedNow();
  }

  onSilence(msg) {
    // Applying "created" twice (it can race the hello) or "ended" for one never seen is harmless.
    if (msg.event === "created") this.silences.set(msg.silence.id, msg.silence);
    else this.silences.delete(msg.silence.id);
    this.changedNow();
  }

  onMode(msg) {
    const { type: _type, ...mode } = msg;
    const before = this.mode.mode;
    this.mode = mode;
    if (before && before !== mode.mode) this.toast(`Mode: ${mode.mode} (set by ${mode.changed_by})`, "info");
    this.changedNow();
  }

  changedNow() {
    // The gateway ends a silence on time and says so; this only keeps the page right if that word is late.
    clearTimeout(this.expiry);
    const ends = [...this.silences.values()].map((s) => millis(s.ends_at)).filter((t) => t !== null);
    if (ends.length) this.expiry = setTimeout(() => this.changedNow(), Math.max(1000, Math.min(...ends) - Date.now() + 1000));
    this.changed();
  }

  active() {
    const now = Date.now();
    return [...this.silences.values()].filter((s) => (millis(s.ends_at) ?? Infinity) > now);
  }

  /** The active silence over an open alert: the one it names, or any whose matchers it meets. */
  mutedBy(alert) {
    const active = this.active();
    return active.find((s) => s.id === alert.silenced) || active.find((s) => matches(s, alert)) || null;
  }

  /** The silence that mutes everything from a sensor (by sensor or its zone alone), if any. */
  sensorMutedBy(sensor) {
    return this.active().find((s) => !s.rule && !s.severity && (s.sensor || s.zone) && matches(s, sensor)) || null;
  }

  mute(request, button) {
    this.send({ type: "silence", for: MUTE_FOR, comment: "muted from the dashboard", ...request }, button);
  }

  unmute(id, button) {
    this.send({ type: "unsilence", silence: id }, button);
  }

  send(message, button) {
    if (!this.stream.send(message)) {
      this.toast("Not connected: nothing was changed. Try again once the dashboard is live.", "error");
      return;
    }
    if (!button) return;
    // The gateway's answer re-renders the button's place; if an error comes instead, it returns.
    button.disabled = true;
    setTimeout(() => (button.disabled = false), 5000);
  }

  renderList(list, empty, count) {
    const silences = this.active().sort((a, b) => (millis(a.ends_at) ?? 0) - (millis(b.ends_at) ?? 0));
    count.textContent = String(silences.length);
    empty.hidden = silences.length > 0;
    keyed(list, silences, (s) => s.id, (s) => this.createItem(s), (node, s) => updateItem(node, s));
  }

  createItem(silence) {
    const button = el("button", { type: "button", class: "unmute quiet", text: "Unmute", "aria-label": `Unmute ${describe(silence)}` });
    button.addEventListener("click", () => this.unmute(silence.id, button));
    return el("li", { class: "silence", "data-silence-id": silence.id }, el("div", { class: "what" }), el("div", { class: "meta" }), button);
  }

  renderMode(box, select) {
    const { mode, modes } = this.mode;
    box.hidden = modes.length === 0;
    if (box.hidden) return;
    if ([...select.options].map((o) => o.value).join() !== modes.join()) {
      replaceChildren(select, modes.map((name) => el("option", { value: name, text: name })));
    }
    select.value = mode;
    select.disabled = false;
    select.title = this.mode.changed_by ? `set by ${this.mode.changed_by} at ${clock(this.mode.changed_at)}` : "";
  }

  bindMode(select) {
    select.addEventListener("change", () => {
      const wanted = select.value;
      select.value = this.mode.mode; // shown once the gateway says it is so
      if (wanted === this.mode.mode) return;
      if (!this.stream.send({ type: "mode", mode: wanted })) {
        this.toast("Not connected: the mode was not changed.", "error");
        return;
      }
      select.disabled = true;
      setTimeout(() => (select.disabled = false), 5000);
    });
  }
}

export function matches(silence, subject) {
  const given = MATCHERS.filter((key) => silence[key]);
  return given.length > 0 && given.every((key) => silence[key] === (key === "sensor" ? subject.sensor ?? subject.id : subject[key]));
}

export function describe(silence) {
  return MATCHERS.filter((key) => silence[key]).map((key) => `${key} ${silence[key]}`).join(" · ");
}

function updateItem(node, silence) {
  const [what, meta] = node.children;
  replaceChildren(what, el("span", { class: "badge muted-badge", text: "🔕 muted" }), describe(silence));
  const parts = [`until ${clock(silence.ends_at)}`, `by ${silence.created_by}`];
  if (silence.comment) parts.push(silence.comment);
  meta.textContent = parts.join(" · ");
}
