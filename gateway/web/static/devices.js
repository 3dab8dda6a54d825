// What a person looks for first in a house of many devices: open doors and windows, leaks, low
// batteries and offline devices, counted in the strip at the top; and the filter over the tiles.
import { isNumber } from "./format.js";

const OPENINGS = new Set(["door", "window", "garage_door", "opening"]);
const LOW_BATTERY_PERCENT = 10;

/** The summary's kinds, in the strip's order: [key, label for one, label for several]. */
export const KINDS = [
  ["open", "open door/window", "open doors/windows"],
  ["leak", "leak", "leaks"],
  ["battery", "low battery", "low batteries"],
  ["offline", "offline", "offline"],
];

/** Which of the summary's kinds a sensor is in now (it can be in several: an open door gone offline). */
export function kindsOf(sensor) {
  const kinds = [];
  const shown = typeof sensor.display === "string" ? sensor.display.toLowerCase() : "";
  if (OPENINGS.has(sensor.device_class) && shown === "open") kinds.push("open");
  if (sensor.device_class === "moisture" && shown === "wet") kinds.push("leak");
  if (sensor.device_class === "battery" && (shown === "low" || (isNumber(sensor.value) && sensor.value < LOW_BATTERY_PERCENT))) {
    kinds.push("battery");
  }
  if (sensor.online === false) kinds.push("offline");
  return kinds;
}

export function countKinds(sensors) {
  const counts = Object.fromEntries(KINDS.map(([key]) => [key, 0]));
  for (const sensor of sensors) for (const kind of kindsOf(sensor)) counts[kind] += 1;
  return counts;
}

/** The filter: a summary kind (or none) and words that must each appear in the name, zone, id or value. */
export class SensorFilter {
  constructor() {
    this.kind = null;
    this.words = [];
  }

  get active() {
    return this.kind !== null || this.words.length > 0;
  }

  setText(text) {
    this.words = text.toLowerCase().split(/\s+/).filter(Boolean);
  }

  toggleKind(kind) {
    this.kind = this.kind === kind ? null : kind;
  }

  accepts(sensor) {
    if (this.kind !== null && !kindsOf(sensor).includes(this.kind)) return false;
    if (this.words.length === 0) return true;
    const haystack = [sensor.name, sensor.zone, sensor.id, sensor.display, sensor.device_class]
      .filter((s) => typeof s === "string")
      .join(" ")
      .toLowerCase();
    return this.words.every((word) => haystack.includes(word));
  }
}
