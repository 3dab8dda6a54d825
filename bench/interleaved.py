"""Latency of gateway trees against the floor, interleaved: all alive at once, measured in turns.

    python bench/interleaved.py [--rounds 6] [--block 100] [--rate 20] [NAME=TREE]...

`bench/run.py` measures one subject after the other, so a machine that slows down or speeds up
during a run moves one subject's figures and not another's: on a shared 2-core machine the
floor's p50 moved by a tenth from run to run. Here the floor and each gateway tree (NAME=TREE:
a checkout, run with PYTHONPATH=TREE; `now` is this checkout) start together, each on its own
MQTT topic, and take turns: each round gives every subject `--block` triggers at `--rate` per
second, one WebSocket client, in a rotating order. The p50 and p99 of all rounds, and each
round's p50 ratio to the floor's, are printed. Nothing is asserted; it is for comparing trees
(a change against its parent) more finely than separate runs can.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402
from bench.common import Proc, Publisher, Services, free_port, gateway_argv, percentile  # noqa: E402
from bench.wsclients import ClientPool  # noqa: E402


class Turn:
    """A subject and its own door topic."""

    def __init__(self, subject: run.Subject, topic: str) -> None:
        self.subject, self.topic = subject, topic
        self.samples: list[float] = []
        self.round_p50: list[float] = []


def start(work: Path, services: Services, trees: list[tuple[str, str]]) -> list[Turn]:
    port = free_port()
    argv = [sys.executable, str(ROOT / "bench" / "floor.py"), "--mqtt", f"127.0.0.1:{services.mqtt_port}"]
    argv += ["--ws", f"127.0.0.1:{port}", "--topic", "floor/#"]
    turns = [Turn(run.Subject("floor", Proc("floor", argv, work), port, None), "floor/door")]
    for name, tree in trees:
        http = free_port()
        config = run.write_gateway_config(work, name, services, "memory", http)
        config.write_text(config.read_text().replace('topic = "bench/door"', f'topic = "{name}/door"'))
        env = {"PYTHONPATH": tree} if tree else None
        proc = Proc(name, gateway_argv(config), work, http_port=http, env=env)
        turns.append(Turn(run.Subject(name, proc, http, http), f"{name}/door"))
    return turns


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=100, help="triggers per subject per round")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("trees", nargs="*", default=["now="], help="NAME=TREE (TREE empty: this checkout)")
    args = parser.parse_args(argv)
    # The gateways run in a scratch directory: a tree is passed to them as an absolute path.
    trees = [
        (name, str(Path(tree).resolve()) if tree else "")
        for name, tree in (t.split("=", 1) for t in args.trees)
    ]
    run.compile_gateway(ROOT, *(Path(tree) for _, tree in trees if tree))
    work = Path(tempfile.mkdtemp(prefix="gateway-interleaved-"))
    services = Services(work, redis=False)
    pool = ClientPool(1)
    turns: list[Turn] = []
    try:
        services.start()
        pub = Publisher(services.mqtt_port, "interleaved")
        turns = start(work, services, trees)
        for turn in turns:
            await turn.subject.proc.wait_ready()
            await run.connect(turn.subject, pool, 1)
            await run.triggers(
                turn.subject, pool, pub, 10, args.rate, turn.topic
            )  # warm-up: lazy imports, first writes
            await pool.close()
        for r in range(args.rounds):
            for turn in turns[r % len(turns) :] + turns[: r % len(turns)]:
                await run.connect(turn.subject, pool, 1)
                await asyncio.sleep(0.2)
                result = await run.triggers(turn.subject, pool, pub, args.block, args.rate, turn.topic)
                await pool.close()
                if result["lost"]:
                    print(f"{turn.subject.name}: {result['lost']} lost in round {r + 1}", flush=True)
                turn.samples += result["samples_ms"]
                turn.round_p50.append(result["p50_ms"])
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        floor = turns[0]
        base = percentile(floor.samples, 50)
        for turn in turns:
            p50, p99 = percentile(turn.samples, 50), percentile(turn.samples, 99)
            ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(turn.round_p50, floor.round_p50, strict=True))
            print(
                f"{turn.subject.name:<10} {len(turn.samples):>5} samples"
                f"  p50 {p50:.3f} ms ({p50 / base:.2f}x)  p99 {p99:.3f} ms  rounds' p50 x floor: {ratios}"
            )
        pub.close()
    finally:
        for turn in turns:
            turn.subject.proc.stop()
        services.stop()
        pool.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":  # the client pool's workers are spawned: they import this module
    sys.exit(asyncio.run(main()))
