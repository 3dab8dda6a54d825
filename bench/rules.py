"""Rule evaluations per second of the pure engine on one core, with and without payload parsing.

    python bench/rules.py [--messages 300000]

One sensor with four rules (a hysteresis pair, `for`, an `equals` with cooldown, an
offline rule): each value message evaluates the three value rules, so "rule
evaluations" = messages x 3. Values wander through the bands so that raises and
clears happen, as with a real temperature sensor.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import parse_config  # noqa: E402
from gateway.engine.formats import parse_value  # noqa: E402
from gateway.engine.rules import SensorRules  # noqa: E402

CONFIG = {
    "sensors": [{"id": "t", "topic": "t", "format": "json", "field": "temp.water", "expire_after": "10m"}],
    "rules": [
        {"id": "hot", "sensor": "t", "when": {"above": 30}, "clear": {"below": 28}},
        {"id": "hot-long", "sensor": "t", "when": {"above": 29}, "for": "5s"},
        {"id": "exact", "sensor": "t", "when": {"equals": 31}, "cooldown": "1m"},
        {"id": "gone", "sensor": "t", "when": {"offline": True}},
    ],
}


def run(messages: int, parse: bool) -> tuple[float, int]:
    config = parse_config(CONFIG, {}, "bench")
    sensor = config.sensors[0]
    rules = SensorRules(sensor, config.rules_for(sensor), 0.0)
    rng = random.Random(7)
    values = [round(25 + 8 * rng.random(), 1) for _ in range(1000)]
    payloads = [json.dumps({"temp": {"water": v}, "battery": 90}).encode() for v in values]
    transitions = 0
    started = time.perf_counter()
    for i in range(messages):
        now = i * 0.01
        value = parse_value(payloads[i % 1000], "json", "temp.water") if parse else values[i % 1000]
        transitions += len(rules.on_value(value, now))
        if i % 100 == 0:
            transitions += len(rules.tick(now))
    return time.perf_counter() - started, transitions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rules.json"))
    args = parser.parse_args()
    results = {}
    for label, parse in (("engine", False), ("parse+engine", True)):
        elapsed, transitions = run(args.messages, parse)
        results[label] = {
            "messages_per_s": round(args.messages / elapsed),
            "rule_evaluations_per_s": round(3 * args.messages / elapsed),
            "transitions": transitions,
        }
        r = results[label]
        print(
            f"{label:<14}{r['messages_per_s']:>12,} messages/s {r['rule_evaluations_per_s']:>12,} "
            f"rule evaluations/s ({transitions} raises/clears)"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
