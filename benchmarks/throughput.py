"""Throughput on whatever device is here: client-steps per second, framework overhead, memory per client, paper ETA.

Prints, for the device ``auto`` resolves to (or ``--device``):

1. client-steps per second of one federated round run by the in-process runtime at M = 1, 4, 8, 16 clients,
   for HOMLoRA and PF2LoRA (``fd`` with ζ = π, ``fd`` independent, ``exact``), per model, executed
   sequentially (``federation.parallel_clients: 1``) and batched (all M clients in one pass), with the ratio;
2. pf2lora's HOMLoRA step divided by a plain PEFT LoRA training step of the same model (framework overhead);
3. peak memory (CPU: resident set; GPU: max allocated) after one round of M = 1, 32 and 1,000 PF2LoRA clients
   of MiniLM with ``offload_client_state``, each M in a fresh process;
4. the estimated wall time of the paper's Table 1 SST-2 run (8 clients, 100 rounds × 10 local steps, batch 16,
   128 tokens) per algorithm on the RoBERTa-base-shaped model, from the measured rates at M = 8 (training
   only; evaluation excluded).

    .venv/bin/python benchmarks/throughput.py [--models minilm roberta-base-shaped smollm2]
        [--clients 1 4 8 16] [--steps 2] [--batch 16] [--seq 128] [--device auto] [--variants homlora ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from pf2lora.adapters import AdaptedModel, add_two_level_lora
from pf2lora.algorithms import make_algorithm
from pf2lora.devices import resolve_device
from pf2lora.federation import ClientData, FederationConfig
from pf2lora.runtime.simulation import Simulation
from pf2lora.tasks.base import Task
from pf2lora.tasks.classification import Classification
from pf2lora.tasks.generation import Generation

VARIANTS: dict[str, tuple[str, dict]] = {
    "homlora": ("homlora", {}),
    "pf2lora fd ζ=π": ("pf2lora", {"hypergradient": "fd", "batches": "shared"}),
    "pf2lora fd indep.": ("pf2lora", {"hypergradient": "fd", "batches": "independent"}),
    "pf2lora exact": ("pf2lora", {"hypergradient": "exact", "batches": "independent"}),
}


def base_model(name: str) -> tuple[torch.nn.Module, int, list[str], type[Task]]:
    """(frozen network, vocab size, LoRA targets, task whose loss it trains) of a benchmark model."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from pf2lora import models

    torch.manual_seed(0)
    if name == "minilm":
        net, _ = models.load("minilm", "classification", 2)
        return net, net.config.vocab_size, ["query", "value"], Classification
    if name == "smollm2":
        net, _ = models.load("smollm2-135m", "causal_lm")
        return net, net.config.vocab_size, ["q_proj", "v_proj"], Generation
    if name == "roberta-base-shaped":  # RoBERTa-base's shape with random weights (no hub here)
        cfg = RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, num_labels=2)
        return RobertaForSequenceClassification(cfg), cfg.vocab_size, ["query", "value"], Classification
    raise SystemExit(f"unknown model {name!r}")


def adapted(name: str, r_private: int, device: torch.device) -> tuple[AdaptedModel, int, bool]:
    """The benchmark model with LoRA r = 8 (+ r̃) on its targets, on ``device``."""
    net, vocab, targets, task = base_model(name)
    add_two_level_lora(net, targets, r=8, r_private=r_private, alpha=16, dropout=0.05)
    heads = [h for h in ("classifier",) if hasattr(net, h)]
    net.to(device)
    return (
        AdaptedModel(net, task.loss, heads, "common", task.loss_from_outputs, task.targets),
        vocab,
        task is Generation,
    )


def clients(m: int, vocab: int, causal: bool, args: argparse.Namespace) -> list[ClientData]:
    """``m`` clients, each with ``4 × batch`` random token sequences."""
    out = []
    for k in range(m):
        g = torch.Generator().manual_seed(k)
        n = 4 * args.batch
        ids = torch.randint(0, vocab, (n, args.seq), generator=g)
        labels = ids.clone() if causal else torch.randint(0, 2, (n,), generator=g)

        def fetch(idx, ids=ids, labels=labels):
            return {"input_ids": ids[idx], "attention_mask": torch.ones_like(ids[idx]), "labels": labels[idx]}

        out.append(ClientData(str(k), n, fetch))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def client_steps_per_second(
    name: str, args: argparse.Namespace, device: torch.device
) -> dict[str, dict[str, list[float]]]:
    """Client-steps/s of one round (after a warm-up round) per variant, execution (sequential, batched) and M.

    The two executions of a variant and M alternate over ``args.repeats`` rounds each and the median is kept,
    so load from elsewhere on the machine hits both alike.
    """
    hom, vocab, causal = adapted(name, 0, device)
    two, _, _ = adapted(name, 2, device)
    out: dict[str, dict[str, list[float]]] = {}
    for label, (alg, cfg) in VARIANTS.items():
        if args.variants and label not in args.variants:
            continue
        model = hom if alg == "homlora" else two
        rates: dict[str, list[float]] = {"sequential": [], "batched": []}
        for m in args.clients:
            sims = {}
            for mode, parallel in (("sequential", 1), ("batched", None)):
                fed = FederationConfig(
                    rounds=args.repeats + 1,
                    local_steps=args.steps,
                    batch_size=args.batch,
                    device=str(device),
                    parallel_clients=parallel,
                )
                sims[mode] = Simulation(model, make_algorithm(alg, cfg), clients(m, vocab, causal, args), fed)
                sims[mode].run_round()  # warm-up
            times: dict[str, list[float]] = {"sequential": [], "batched": []}
            for _ in range(args.repeats):
                for mode, sim in sims.items():
                    _sync(device)
                    t0 = time.perf_counter()
                    sim.run_round()
                    _sync(device)
                    times[mode].append(time.perf_counter() - t0)
            for mode in sims:
                rates[mode].append(m * args.steps / statistics.median(times[mode]))
        out[label] = rates
    return out


def peft_overhead(args: argparse.Namespace, device: torch.device, steps: int = 4, repeats: int = 3) -> list[float]:
    """Per-step seconds of pf2lora's HOMLoRA local update and of a plain PEFT LoRA loop on MiniLM: medians of
    interleaved repeats (the two alternate, so a busy neighbour slows both alike).

    Both fetch their batch inside the timed step, use AdamW and dropout 0.05, and take ``steps`` steps after
    one warm-up step; only the local update is timed (no aggregation or payload checks).
    """
    import peft

    from pf2lora.federation import BatchStream

    model, vocab, causal = adapted("minilm", 0, device)
    (client,) = clients(1, vocab, causal, args)
    alg = make_algorithm("homlora", {"lr": 1e-3})
    state = alg.init_client(model, 0, 1, torch.Generator().manual_seed(0))
    received = model.fresh_lora(alg.communicated(model), torch.Generator().manual_seed(1))
    net, _, targets, _ = base_model("minilm")
    lora = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets, task_type="SEQ_CLS")
    plain = peft.get_peft_model(net, lora).to(device).train()
    opt = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=1e-3)

    def ours() -> float:
        stream = BatchStream(client, args.batch, seed=0)
        model.net.train()
        alg.local_update(model, received, state, stream, 1)
        _sync(device)
        t0 = time.perf_counter()
        alg.local_update(model, received, state, stream, steps)
        _sync(device)
        return (time.perf_counter() - t0) / steps

    def theirs() -> float:
        stream = BatchStream(client, args.batch, seed=0)
        for i in range(steps + 1):
            if i == 1:
                _sync(device)
                t0 = time.perf_counter()
            batch = {k: v.to(device) for k, v in stream.next().items()}
            plain(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)
        return (time.perf_counter() - t0) / steps

    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        times[0].append(ours())
        times[1].append(theirs())
    return [statistics.median(t) for t in times]


def memory_child(m: int, args: argparse.Namespace) -> None:
    """One round of ``m`` offloaded MiniLM PF2LoRA clients (1 step, batch 2 × 16 tokens); print peak memory."""
    device = resolve_device(args.device)
    model, vocab, causal = adapted("minilm", 2, device)
    small = argparse.Namespace(batch=2, seq=16)
    fed = FederationConfig(rounds=1, local_steps=1, batch_size=2, device=str(device), offload_client_state=True)
    sim = Simulation(model, make_algorithm("pf2lora"), clients(m, vocab, causal, small), fed)
    sim.run_round()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # this process's own high-water mark (ru_maxrss would carry over the parent's from before exec)
        status = Path("/proc/self/status")
        hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM")] if status.exists() else []
        peak = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    state = sum(
        t.numel() * t.element_size()
        for s in sim.states.values()
        for t in [*s.private.values(), *(v for st in s.optimizer["state"].values() for v in st.values())]
        if isinstance(t, torch.Tensor)
    )
    print(json.dumps({"clients": m, "peak_mib": peak, "state_mib": state / 2**20}))


def main() -> None:
    """Parse arguments, measure, print."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["minilm", "roberta-base-shaped", "smollm2"])
    p.add_argument("--clients", nargs="+", type=int, default=[1, 4, 8, 16])
    p.add_argument("--steps", type=int, default=2, help="local steps per client in the timed round")
    p.add_argument("--repeats", type=int, default=1, help="timed rounds per execution (median kept)")
    p.add_argument("--variants", nargs="*", default=[], help=f"some of: {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--memory-clients", nargs="*", type=int, default=[1, 32, 1000])
    p.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows in a log file as it is measured
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the freshly initialised heads' load reports are expected
    hf_logging.disable_progress_bar()
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"device: {device} ({name}), torch {torch.__version__}, batch {args.batch} × {args.seq} tokens")

    rates_by_model = {}
    for model in args.models:
        rates = client_steps_per_second(model, args, device)
        rates_by_model[model] = rates
        print(f"\n{model}: client-steps/s, sequential / batched (× batched over sequential)")
        print(f"{'variant':20s}" + "".join(f"{'M=' + str(m):>22s}" for m in args.clients))
        for label, rs in rates.items():
            cells = (f"{s:.3f} / {b:.3f} ({b / s:.2f}×)" for s, b in zip(rs["sequential"], rs["batched"], strict=True))
            print(f"{label:20s}" + "".join(f"{c:>22s}" for c in cells))

    ours, plain = peft_overhead(args, device)
    print(f"\nMiniLM step: pf2lora HOMLoRA {ours:.4f} s, plain PEFT LoRA {plain:.4f} s, ratio {ours / plain:.2f}")

    if args.memory_clients:
        print(f"\npeak memory after one round of offloaded MiniLM PF2LoRA clients ({device.type})")
        print(f"{'clients':>8s} {'peak MiB':>10s} {'× M=1':>7s} {'client state MiB':>17s}")
    first = None
    for m in args.memory_clients:
        cmd = [sys.executable, __file__, "--memory-child", str(m), "--device", args.device]
        row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        first = first or row["peak_mib"]
        print(f"{m:8d} {row['peak_mib']:10.1f} {row['peak_mib'] / first:7.2f} {row['state_mib']:17.1f}")

    if "roberta-base-shaped" in rates_by_model:
        m = 8 if 8 in args.clients else max(args.clients)
        print(
            "\nestimated Table 1 SST-2 training time (8 clients × 100 rounds × 10 steps, RoBERTa-base shape; "
            f"rates at M={m})"
        )
        for label, rs in rates_by_model["roberta-base-shaped"].items():
            s, b = (8 * 100 * 10 / rs[mode][args.clients.index(m)] / 60 for mode in ("sequential", "batched"))
            print(f"{label:20s} {s:10.1f} min sequential {b:10.1f} min batched")


if __name__ == "__main__":
    main()
