"""Benchmark: cost of one PF2LoRA local step relative to one HOMLoRA step, and memory per simulated client.

Prints (1) wall time of a PF2LoRA local step divided by a HOMLoRA local step on the same small BERT-like
model, batch and sequence length, for each hypergradient mode and batch policy, and (2) the peak resident
memory of simulating M = 1, 8 and 32 PF2LoRA clients (each M in a fresh process).

Counting forward+backward passes, a HOMLoRA step is 1; PF2LoRA with fd is 4 with independent batches
(lower level, ξ at y⁺, central pair on ζ) and 3 with ζ = π (the lower-level backward is reused). The
paper's cost table implies 4.65× (1202.4 vs 258.4 TFLOPs per round).

    .venv/bin/python benchmarks/step_cost.py [--layers 4 --hidden 256 --batch 16 --seq 128 --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from pf2lora.adapters import AdaptedModel, add_two_level_lora
from pf2lora.algorithms import make_algorithm
from pf2lora.algorithms.base import ClientState
from pf2lora.federation import ClientData, FederationConfig
from pf2lora.runtime.simulation import Simulation


def bert(args: argparse.Namespace, r_private: int) -> AdaptedModel:
    """A random BERT-like classifier with LoRA r=8 on query/value (and r̃ private when asked)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=1000,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=max(512, args.seq),
        num_labels=2,
    )
    net = BertForSequenceClassification(cfg)
    add_two_level_lora(net, ["query", "value"], r=8, r_private=r_private, alpha=16, dropout=0.05)
    return AdaptedModel(net, lambda m, b: m(**b).loss, head_modules=["classifier"])


class RandomBatches:
    """Fresh random token batches of a fixed shape."""

    def __init__(self, batch: int, seq: int, seed: int = 0) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.batch, self.seq = batch, seq

    def next(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.randint(0, 1000, (self.batch, self.seq), generator=self.g),
            "attention_mask": torch.ones(self.batch, self.seq, dtype=torch.long),
            "labels": torch.randint(0, 2, (self.batch,), generator=self.g),
        }


def step_seconds(model: AdaptedModel, algorithm: str, config: dict, args: argparse.Namespace) -> float:
    """Seconds per local step, from one timed local update of ``args.steps`` steps."""
    alg = make_algorithm(algorithm, config)
    state = alg.init_client(model, 0, 1, torch.Generator().manual_seed(0))
    received = model.fresh_lora(model.common_names, torch.Generator().manual_seed(1))
    data = RandomBatches(args.batch, args.seq)
    model.net.train()
    alg.local_update(model, received, ClientState(**vars(state)), data, 1)  # warm-up
    t0 = time.perf_counter()
    alg.local_update(model, received, state, data, args.steps)
    return (time.perf_counter() - t0) / args.steps


def time_ratios(args: argparse.Namespace) -> None:
    """Interleaved repeats of every variant; medians of per-step times and their ratio to HOMLoRA."""
    hom, two = bert(args, 0), bert(args, 2)
    variants = {
        "homlora": (hom, "homlora", {}),
        "pf2lora fd, independent": (two, "pf2lora", {"hypergradient": "fd", "batches": "independent"}),
        "pf2lora fd, ζ=π (reuse)": (two, "pf2lora", {"hypergradient": "fd", "batches": "shared"}),
        "pf2lora exact, independent": (two, "pf2lora", {"hypergradient": "exact", "batches": "independent"}),
        "pf2lora exact, ζ=π (lookahead)": (two, "pf2lora", {"hypergradient": "exact", "batches": "shared"}),
        "pf2lora without BO": (two, "pf2lora_nobo", {}),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, (model, alg, cfg) in variants.items():
            times[name].append(step_seconds(model, alg, cfg, args))
    base = statistics.median(times["homlora"])
    print(
        f"model: BERT-like, {args.layers} layers, hidden {args.hidden}, batch {args.batch}, seq {args.seq}, "
        f"LoRA r=8 (+ r̃=2), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'variant':34s} {'s/step':>8s} {'× HOMLoRA':>10s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:34s} {med:8.4f} {med / base:10.2f}")


def memory_child(m: int, args: argparse.Namespace) -> None:
    """Simulate one round of ``m`` PF2LoRA clients and print the peak RSS in MiB (run in a fresh process)."""
    model = bert(args, 2)
    data = RandomBatches(args.batch, args.seq).next()
    n = args.batch
    clients = [ClientData(str(k), n, lambda idx, d=data: {key: v[idx] for key, v in d.items()}) for k in range(m)]
    sim = Simulation(model, make_algorithm("pf2lora"), clients, FederationConfig(rounds=1, local_steps=1, batch_size=n))
    sim.run()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state_bytes = sum(
        t.numel() * t.element_size()
        for st in sim.states.values()
        for t in [*st.private.values(), *(v for s in st.optimizer["state"].values() for v in s.values())]
        if isinstance(t, torch.Tensor)
    )
    print(json.dumps({"clients": m, "peak_mib": peak_kib / 1024, "client_state_mib": state_bytes / 2**20}))


def memory(args: argparse.Namespace) -> None:
    """Peak memory of M = 1, 8, 32 simulated clients, each in its own process."""
    base = None
    print(f"{'clients':>8s} {'peak RSS MiB':>13s} {'× M=1':>7s} {'all client state MiB':>21s}")
    for m in (1, 8, 32):
        cmd = [sys.executable, __file__, "--memory-child", str(m), *_model_args(args)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        row = json.loads(out)
        peak = row["peak_mib"]
        base = base or peak
        print(f"{m:8d} {peak:13.1f} {peak / base:7.2f} {row['client_state_mib']:21.2f}")


def _model_args(args: argparse.Namespace) -> list[str]:
    return [f"--{k}={getattr(args, k)}" for k in ("layers", "hidden", "batch", "seq")]


def main() -> None:
    """Parse arguments and run both measurements."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="local steps per timed update")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    time_ratios(args)
    memory(args)


if __name__ == "__main__":
    main()
