"""Training-step time on a shared machine: OpenMP spin-waiting vs passive waiting, idle vs one busy neighbour.

Each variant runs in a fresh process (``OMP_WAIT_POLICY`` is read once, when torch loads) that times HOMLoRA
steps of MiniLM (batch 16 × 64 tokens) with all available threads; the "busy" variants run one CPU-bound
Python process beside it. Prints seconds per step and ratios to the idle passive run. Usage:

    .venv/bin/python benchmarks/shared_cores.py [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, torch
from pf2lora.adapters import AdaptedModel, add_two_level_lora
from pf2lora.cli import available_cpus
from pf2lora.models import load
torch.set_num_threads(available_cpus())
net, tok = load("minilm", "classification", 2)
add_two_level_lora(net, ["query", "value"], r=8)
model = AdaptedModel(net, lambda m, b: m(**b).loss, ["classifier"])
batch = dict(tok(["a rather long sentence about a film that was fine"] * 16, padding="max_length", max_length=64,
                 truncation=True, return_tensors="pt"))
batch["labels"] = torch.zeros(16, dtype=torch.long)
x = {k: v.requires_grad_(True) for k, v in model.current(model.common_names).items()}
steps = int(sys.argv[1])
for i in range(steps + 2):
    if i == 2:
        t0 = time.perf_counter()
    torch.autograd.grad(model.loss(x, batch), list(x.values()))
print(json.dumps({"s_per_step": (time.perf_counter() - t0) / steps, "threads": torch.get_num_threads()}))
"""

BUSY = "while True: pass"


def measure(policy: str | None, busy: bool, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    neighbour = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        out = subprocess.run([sys.executable, "-c", CHILD, str(steps)], env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(out.stderr)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    variants = [("PASSIVE", False), ("ACTIVE", False), ("PASSIVE", True), ("ACTIVE", True)]
    results = {v: measure(v[0], v[1], args.steps) for v in variants}
    ref = results[("PASSIVE", False)]["s_per_step"]
    print(f"threads: {results[('PASSIVE', False)]['threads']}")
    print(f"{'OMP_WAIT_POLICY':>16} {'neighbour':>10} {'s/step':>8} {'× idle passive':>15}")
    for (policy, busy), r in results.items():
        print(f"{policy:>16} {'busy' if busy else 'idle':>10} {r['s_per_step']:8.3f} {r['s_per_step'] / ref:15.2f}")


if __name__ == "__main__":
    main()
