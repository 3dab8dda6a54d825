"""MQTT trigger -> WebSocket latency, idle RSS and start-up, with both channel layers and the raw floor.

    python bench/latency.py [--samples 400] [--rate 20] [--out FILE]

Kept for the README: the sections `latency`, `rss` and `startup` of bench/run.py (which see), against
private mosquitto and redis-server. Prints the table and writes JSON (default bench/results/latency.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latency.json"))
    args = parser.parse_args()
    argv = ["--only", "latency,rss,startup", "--samples", str(args.samples), "--rate", str(args.rate)]
    return run.main([*argv, "--json", args.out])


if __name__ == "__main__":
    sys.exit(main())
