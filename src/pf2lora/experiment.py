"""Run an experiment config end to end: data → clients → model → federation → files.

``prepare`` loads and partitions the data once, so ``compare`` runs every algorithm on identical clients.
Each run writes ``metrics.jsonl``, ``summary.json``, ``config.resolved.yaml``, ``partition.json`` and plots.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pf2lora import models
from pf2lora.adapters import AdaptedModel, add_two_level_lora
from pf2lora.algorithms import ALGORITHMS, make_algorithm
from pf2lora.config import ExperimentConfig, dump_config
from pf2lora.data import (
    Partition,
    dirichlet_split,
    group_split,
    label_sorted_split,
    load_dataset,
    train_test_split_per_client,
)
from pf2lora.io import atomic_write, write_json, write_jsonl, write_text
from pf2lora.runtime.simulation import ClientData, History, Simulation, pool_clients
from pf2lora.tasks import DATASET_TASKS, Task

DISPLAY_NAMES = {
    "centralized": "Centralized LoRA",
    "homlora": "HOMLoRA",
    "perfedavg": "Per-FedAvg-LoRA",
    "hetlora": "HETLoRA",
    "pf2lora": "PF2LoRA",
    "pf2lora_nobo": "PF2LoRA w/o BO",
}


@dataclass
class Prepared:
    """Everything shared by the algorithms of one config: task, tokenized clients and the partition."""

    cfg: ExperimentConfig
    task: Task
    clients: list[ClientData]
    partition: dict[str, Any]
    num_labels: int


def _num_labels(examples: Sequence[Any]) -> int:
    return max(int(e.label) for e in examples) + 1 if examples and hasattr(examples[0], "label") else 2


def split_clients(cfg: ExperimentConfig, keys: Sequence[Any]) -> tuple[Partition, Partition]:
    """Partition example indices into clients, then each client's local train/test split."""
    p, n = cfg.partition, len(keys)
    if p.method == "label_sorted":
        part = label_sorted_split(keys, p.num_clients, p.iid_fraction, cfg.seed)
    elif p.method == "iid":
        part = label_sorted_split(keys, p.num_clients, 1.0, cfg.seed)
    elif p.method == "dirichlet":
        part = dirichlet_split(keys, p.num_clients, p.dirichlet_alpha, cfg.seed, min_size=min(10, n // p.num_clients))
    else:
        part = group_split(keys, p.num_clients, cfg.seed)
    stratify = keys if p.method in ("label_sorted", "iid", "dirichlet") else None
    return train_test_split_per_client(part, p.test_fraction, cfg.seed, labels=stratify)


def prepare(cfg: ExperimentConfig, tokenizer: Any | None = None) -> Prepared:
    """Load the pool, subsample, partition, and build every client's tokenized data."""
    examples = load_dataset(cfg.data.dataset, cfg.data.split, cfg.data.data_dir)
    if cfg.data.max_examples and len(examples) > cfg.data.max_examples:
        keep = sorted(random.Random(cfg.seed).sample(range(len(examples)), cfg.data.max_examples))
        examples = [examples[i] for i in keep]
    task_cls = DATASET_TASKS[cfg.data.dataset]
    if tokenizer is None:
        _, tokenizer = models.load(cfg.model.name, task_cls.kind, _num_labels(examples))
    task = task_cls(tokenizer, cfg.task)
    keys = task.partition_keys(examples)
    train, test = split_clients(cfg, keys)
    clients = [
        task.client(str(k), [examples[i] for i in train.clients[k]], [examples[i] for i in test.clients[k]])
        for k in range(train.num_clients)
    ]
    partition = {
        "method": cfg.partition.method,
        "clients": {
            str(k): {
                "train": [int(i) for i in train.clients[k]],
                "test": [int(i) for i in test.clients[k]],
                "train_histogram": {str(a): b for a, b in train.label_histograms()[k].items()},
                "test_histogram": {str(a): b for a, b in test.label_histograms()[k].items()},
            }
            for k in range(train.num_clients)
        },
    }
    return Prepared(cfg, task, clients, partition, _num_labels(examples))


def build_model(cfg: ExperimentConfig, name: str, task: Task, num_labels: int) -> AdaptedModel:
    """The pretrained model with the two-level LoRA shape algorithm ``name`` trains."""
    lora = cfg.lora_for(name)
    net, _ = models.load(cfg.model.name, task.kind, num_labels, _attention(cfg, name))
    targets = lora.target_modules or models.target_modules(net)
    add_two_level_lora(net, targets, lora.r, lora.r_private, lora.alpha, lora.alpha_private, lora.dropout)
    return AdaptedModel(net, task.loss, models.head_modules(net, task.kind), lora.head_group)


def _attention(cfg: ExperimentConfig, name: str) -> str | None:
    """Double backward needs eager/math attention: ask for eager where exact second derivatives are taken."""
    if cfg.model.attn_implementation:
        return cfg.model.attn_implementation
    hyper = cfg.hyperparameters(name)
    exact = (name == "pf2lora" and hyper.get("hypergradient") == "exact") or (
        name == "perfedavg" and hyper.get("variant") == "hessian"
    )
    return "eager" if exact else None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (model head initialisation happens at load time)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_algorithm(
    prepared: Prepared,
    name: str,
    out: Path,
    on_client: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one algorithm on the prepared clients; write its files; return its summary."""
    cfg, task = prepared.cfg, prepared.task
    seed_everything(cfg.seed)
    model = build_model(cfg, name, task, prepared.num_labels)
    algorithm = make_algorithm(name, cfg.hyperparameters(name))
    fed, train_clients = cfg.federation, prepared.clients
    if ALGORITHMS[name].pools_client_data:
        # one client with everyone's data takes as many steps per round as all clients together
        train_clients = [pool_clients(prepared.clients)]
        fed = fed.model_copy(update={"local_steps": fed.local_steps * len(prepared.clients)})
    sim = Simulation(model, algorithm, train_clients, fed, task.evaluate, prepared.clients)
    t0 = time.perf_counter()
    history = sim.run(on_client=on_client)
    seconds = time.perf_counter() - t0
    summary = summarize(name, sim, history, task.primary_metric, seconds)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(
        out / "metrics.jsonl",
        [{"kind": "train", "algorithm": name, **r} for r in history.train]
        + [{"kind": "eval", "algorithm": name, **r} for r in history.eval],
    )
    write_json(out / "summary.json", summary)
    write_text(out / "config.resolved.yaml", dump_config(cfg))
    write_json(out / "partition.json", prepared.partition)
    plot_run(history, task.primary_metric, out / "curves.png", DISPLAY_NAMES.get(name, name))
    return summary


def summarize(name: str, sim: Simulation, history: History, metric: str, seconds: float) -> dict[str, Any]:
    """Final per-client and mean metrics, trainable and communicated parameters, wall time."""
    last_round = max(r["round"] for r in history.eval)
    final = {
        r["client"]: {k: v for k, v in r.items() if k not in ("round", "step", "client")}
        for r in history.eval
        if r["round"] == last_round
    }
    keys = sorted({k for v in final.values() for k in v})
    mean = {k: statistics.fmean(v[k] for v in final.values() if k in v) for k in keys}
    common = sum(t.numel() for t in sim.global_state.values())
    private = statistics.fmean(sum(t.numel() for t in s.private.values()) for s in sim.states.values())
    rounds = history.rounds
    return {
        "algorithm": name,
        "metric": metric,
        "final": {"mean": mean, "clients": final},
        "trainable_parameters_per_client": common + private,
        "common_parameters": common,
        "private_parameters_per_client": private,
        "communicated_parameters_per_round": statistics.fmean(
            r["upload_params"] + r["download_params"] for r in rounds
        ),
        "communicated_bytes_per_round": statistics.fmean(r["upload_bytes"] + r["download_bytes"] for r in rounds),
        "rounds": len(rounds),
        "wall_seconds": seconds,
    }


def _mean_by_round(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    by: dict[int, list[float]] = {}
    for r in rows:
        if key in r:
            by.setdefault(r["round"], []).append(r[key])
    rounds = sorted(by)
    return rounds, [statistics.fmean(by[k]) for k in rounds]


def plot_run(history: History, metric: str, path: Path, label: str) -> None:
    """Mean client training loss and mean client test metric per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(*_mean_by_round(history.train, "train_loss"), label=label)
    a.set(title="mean client training loss", xlabel="round")
    b.plot(*_mean_by_round(history.eval, metric), label=label)
    b.set(title=f"mean client test {metric}", xlabel="round")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def comparison_table(cfg: ExperimentConfig, summaries: Sequence[dict[str, Any]]) -> str:
    """The paper's layout: one row per method, trainable/communicated parameters and the mean client metric."""
    metric = summaries[0]["metric"]
    extra = {
        "accuracy": ["mcc"],
        "mcc": ["accuracy"],
        "f1": ["exact_match"],
        "BLEU": ["NIST", "METEOR", "ROUGE_L", "CIDEr", "TER"],
    }
    cols = [metric, *extra.get(metric, [])]
    lines = [
        f"**{cfg.name}** — {cfg.data.dataset}, {cfg.model.name}, {cfg.partition.num_clients} clients "
        f"({cfg.partition.method}), {cfg.federation.rounds} rounds × {cfg.federation.local_steps} local steps, "
        f"seed {cfg.seed}; mean over clients of each client's own test split",
        "",
        "| Method | Trainable params / client | Communicated params / round | " + " | ".join(cols) + " |",
        "|---|---:|---:|" + "---:|" * len(cols),
    ]
    for s in summaries:
        mean = s["final"]["mean"]
        vals = " | ".join(f"{mean[c]:.2f}" if c in mean else "–" for c in cols)
        lines.append(
            f"| {DISPLAY_NAMES.get(s['algorithm'], s['algorithm'])} | {s['trainable_parameters_per_client']:,.0f} | "
            f"{s['communicated_parameters_per_round']:,.0f} | {vals} |"
        )
    return "\n".join(lines) + "\n"


def plot_comparison(out: Path, names: Sequence[str], metric: str) -> None:
    """Mean client test metric per round, one line per algorithm."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        ax.plot(*_mean_by_round([r for r in rows if r["kind"] == "eval"], metric), label=DISPLAY_NAMES.get(name, name))
    ax.set(title=f"mean client test {metric}", xlabel="round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out / "compare.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
