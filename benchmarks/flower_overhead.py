"""What Flower costs: wall time per round and bytes per round of ``inprocess``, ``flower-sim`` and ``flower``.

Runs ``pf2lora run CONFIG --runtime R`` for each runtime (one after another, same config and seed) and
prints, per runtime, the command's wall time, the mean training-round time (from the run's checkpoint
history: broadcast, local updates, replies, aggregation), the fixed cost (wall time not spent in rounds:
start-up, model loads, the final evaluation, shutdown), and the bytes sent per round. Evaluation runs only
after the last round (``federation.eval_every=0``) so that a round is a training round. Also checks that
the runtimes' summaries agree.

    .venv/bin/python benchmarks/flower_overhead.py [CONFIG] [--set key=value ...] [--runtimes inprocess,flower]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETS = [
    "partition.num_clients=3",
    "data.max_examples=600",
    "federation.rounds=4",
    "federation.local_steps=10",
    "federation.eval_every=0",
    "algorithm=pf2lora",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/mini/sst2.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[], help="Extra override (repeatable).")
    parser.add_argument("--runtimes", default="inprocess,flower-sim,flower")
    args = parser.parse_args()
    sets = [*DEFAULT_SETS, *args.sets]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in args.runtimes.split(","):
            out = Path(tmp) / runtime
            command = [sys.executable, "-m", "pf2lora.cli", "run", args.config, "--out", str(out), "--runtime", runtime]
            for item in sets:
                command += ["--set", item]
            t0 = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                sys.exit(f"{runtime} failed:\n{done.stdout}\n{done.stderr}")
            state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
            rounds = state["history"]["rounds"]
            per_round = sum(r["seconds"] for r in rounds) / len(rounds)
            summary = json.loads((out / "summary.json").read_text())
            results[runtime] = (wall, per_round, summary)
            fixed = wall - per_round * len(rounds)
            print(
                f"{runtime:10s} wall {wall:6.1f}s  per round {per_round:6.2f}s  fixed {fixed:6.1f}s"
                f"  bytes/round {summary['communicated_bytes_per_round']:,.0f}",
                flush=True,
            )
    if "inprocess" in results:
        base_wall, base_round, base = results["inprocess"]
        for runtime, (wall, per_round, summary) in results.items():
            if runtime == "inprocess":
                continue
            same = summary["final"] == base["final"]
            extra = wall - base_wall - (per_round - base_round) * len(rounds)
            print(
                f"{runtime}: per round {per_round / base_round:.2f}x in-process "
                f"(+{per_round - base_round:.2f}s), fixed +{extra:.1f}s, same final metrics: {same}"
            )


if __name__ == "__main__":
    main()
