"""Run an experiment config end to end: data → clients → model → federation → files.

``prepare`` loads and partitions the data once, so ``compare`` runs every algorithm on identical clients.
Each run writes ``config.resolved.yaml`` and ``partition.json`` first, appends ``metrics.jsonl`` round by
round, keeps the whole federation in ``checkpoint/`` (every ``federation.checkpoint_every`` rounds and
after the last), and ends with ``summary.json`` and plots. A run directory holding a checkpoint is
resumed from it, to the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import platform
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pf2lora import checkpoint, models
from pf2lora.adapters import AdaptedModel, Params, add_two_level_lora, lora_layers
from pf2lora.algorithms import ALGORITHMS, Algorithm, ClientState, make_algorithm
from pf2lora.config import ExperimentConfig, dump_config
from pf2lora.data import (
    DATASET_LAYOUT,
    Partition,
    dirichlet_split,
    group_split,
    held_out_sample,
    label_sorted_split,
    load_dataset,
    train_test_split_per_client,
)
from pf2lora.devices import resolve_device
from pf2lora.errors import ConfigError, InputError, OutputError
from pf2lora.federation import ClientData, History, pool_clients
from pf2lora.io import JsonlLog, atomic_write, write_json, write_jsonl, write_text
from pf2lora.runtime.simulation import Simulation
from pf2lora.tasks import DATASET_TASKS, Task


def display_name(name: str) -> str:
    """The table/plot name of a registered algorithm."""
    return getattr(ALGORITHMS.get(name), "display_name", name)


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


#: Seed of the shared held-out sample: one set for every run seed, so that spread over seeds is training's alone.
GLOBAL_TEST_SEED = 0


def global_split(cfg: ExperimentConfig) -> str | None:
    """``data.global_split``, ``auto`` resolved: ``dev`` where the dataset has one beside the pool, else ``pool``."""
    d = cfg.data
    if d.global_split == "auto":
        return "dev" if "dev" in DATASET_LAYOUT[d.dataset].splits and d.split != "dev" else "pool"
    return d.global_split


def global_test_examples(
    cfg: ExperimentConfig, task_cls: type[Task], pool: list[Any]
) -> tuple[list[Any] | None, dict[str, Any] | None, list[Any]]:
    """The shared held-out set of ``data.global_split`` (None when off), what ``partition.json`` records of it,
    and the pool left for the clients (smaller only when the set is held out of it)."""
    d = cfg.data
    split = global_split(cfg)
    if split is None:
        return None, None, pool
    if split == d.split:
        raise InputError(
            f"data.global_split: {split!r} is the pool the clients are drawn from, so the shared set would overlap "
            "their data; use 'pool' to hold it out of the pool, or another split"
        )
    source = pool if split == "pool" else load_dataset(d.dataset, split, d.data_dir)
    labels = task_cls.partition_keys(source) if task_cls.kind == "classification" else None
    try:
        picked = held_out_sample(labels, d.global_examples, len(source), GLOBAL_TEST_SEED)
    except ValueError as e:
        raise InputError(f"data.global_examples: {e} in split {split!r}") from None
    info: dict[str, Any] = {"split": split, "indices": picked}
    if labels is not None:
        info["histogram"] = {str(a): b for a, b in sorted(Counter(labels[i] for i in picked).items())}
    if split != "pool":
        return [source[i] for i in picked], info, pool
    held = set(picked)
    return [pool[i] for i in picked], info, [e for i, e in enumerate(pool) if i not in held]


def prepare(cfg: ExperimentConfig, tokenizer: Any | None = None, only: Sequence[int] | None = None) -> Prepared:
    r"""Load the pool, subsample, partition, and build every client's tokenized data (``only``: just those
    clients', as a node that holds one client of the federation does).

    Input problems (model name, data files, partitions the data cannot fill) are :class:`InputError`\ s,
    raised before any model weights load.
    """
    task_cls = DATASET_TASKS[cfg.data.dataset]
    models.check(cfg.model.name, task_cls.kind)
    examples = load_dataset(cfg.data.dataset, cfg.data.split, cfg.data.data_dir)
    shared, shared_info, examples = global_test_examples(cfg, task_cls, examples)
    if cfg.data.max_examples and len(examples) > cfg.data.max_examples:
        keep = sorted(random.Random(cfg.seed).sample(range(len(examples)), cfg.data.max_examples))
        examples = [examples[i] for i in keep]
    keys = task_cls.partition_keys(examples)
    try:
        train, test = split_clients(cfg, keys)
    except ValueError as e:
        raise InputError(f"partition: {e}") from None
    for k in range(train.num_clients):
        for part, split in (("train", train), ("test", test)):
            if not split.clients[k]:
                raise InputError(
                    f"partition.num_clients: client {k} of {train.num_clients} gets no {part} examples from "
                    f"{len(examples)} examples (test_fraction {cfg.partition.test_fraction}); use fewer clients "
                    "or more data (data.max_examples)"
                )
    if tokenizer is None and (only is None or len(only)):  # the partition alone needs no tokenizer
        tokenizer = models.load_tokenizer(cfg.model.name, task_cls.kind)
    task = task_cls(tokenizer, cfg.task)
    clients = [
        task.client(str(k), [examples[i] for i in train.clients[k]], [examples[i] for i in test.clients[k]])
        for k in (range(train.num_clients) if only is None else only)
    ]
    if shared is not None and clients:
        global_test = task.test_set(shared)  # encoded once: every client's model is scored on the same set
        for client in clients:
            client.global_test = global_test
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
        **({"global_test": shared_info} if shared_info else {}),
    }
    return Prepared(cfg, task, clients, partition, _num_labels(examples))


def build_model(
    cfg: ExperimentConfig, algorithm: Algorithm, task: Task, num_labels: int, device: torch.device | None = None
) -> AdaptedModel:
    """The pretrained model with the LoRA shape ``algorithm`` trains, on ``device`` (default: the config's)."""
    lora = cfg.lora_for(algorithm.name)
    # Double backward needs eager/math attention: ask for eager where exact second derivatives are taken.
    attention = cfg.model.attn_implementation or ("eager" if algorithm.needs_exact_second_derivatives() else None)
    dtype = PRECISIONS[cfg.federation.precision]
    net, _ = models.load(cfg.model.name, task.kind, num_labels, attention, dtype)
    heads = cfg.model.head_modules or models.head_modules(net, task.kind)
    modules = dict(net.named_modules())
    for h in heads:
        if h not in modules or not any(True for _ in modules[h].parameters()):
            raise ConfigError(f"model.head_modules: {h!r} is no module with parameters of {cfg.model.name}")
    if dtype != torch.float32:
        keep_heads_fp32(net, heads)
    targets = lora.target_modules or models.target_modules(net)
    try:
        add_two_level_lora(net, targets, lora.r, lora.r_private, lora.alpha, lora.alpha_private, lora.dropout)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"lora.target_modules: {e}") from None
    for layer in lora_layers(net):
        if any(layer == h or layer.startswith(h + ".") for h in heads):
            raise ConfigError(f"lora.target_modules: {layer!r} is in the task head, which is trained in full")
    net.to(device if device is not None else resolve_device(cfg.federation.device))
    return AdaptedModel(net, task.loss, heads, lora.head_group, task.loss_from_outputs, task.targets)


#: ``federation.precision`` → dtype of the frozen base.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def keep_heads_fp32(net: torch.nn.Module, heads: Sequence[str]) -> None:
    """Trainable heads stay fp32 over a low-precision base: their weights are cast up and their inputs too."""

    def upcast(module: torch.nn.Module, args: tuple) -> tuple:
        return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    for name in heads:
        module = net.get_submodule(name)
        module.float()
        module.register_forward_pre_hook(upcast)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (model head initialisation happens at load time)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rows(name: str, train: Sequence[dict[str, Any]], evals: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``metrics.jsonl`` rows in file order: per round its training rows, then its evaluations (a stable sort)."""
    rows = [{"kind": "train", "algorithm": name, **r} for r in train]
    rows += [{"kind": "eval", "algorithm": name, **r} for r in evals]
    return sorted(rows, key=lambda r: (r["round"], r["kind"] == "eval"))


def run_algorithm(
    prepared: Prepared,
    name: str,
    out: Path,
    on_client: Callable[[dict[str, Any]], None] | None = None,
    on_round: Callable[[int, History], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one algorithm on the prepared clients in this process; write its files; return its
    summary (see :func:`execute`)."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.resolved.yaml", dump_config(prepared.cfg))
    write_json(out / "partition.json", prepared.partition)
    sim = build_simulation(prepared, name)
    return execute(sim, prepared.cfg, name, prepared.task.primary_metric, out, on_client, on_round)


class Federation(Protocol):
    """What :func:`execute` runs: a runtime's whole federation (in-process or a Flower server)."""

    history: History
    global_state: Params

    def run(
        self,
        on_round: Callable[[int, History], None] | None = None,
        on_client: Callable[[dict[str, Any]], None] | None = None,
    ) -> History: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def private_parameters_per_client(self) -> float: ...

    def trainable_parameters_per_client(self) -> float: ...


def execute(
    runtime: Federation,
    cfg: ExperimentConfig,
    name: str,
    metric: str,
    out: Path,
    on_client: Callable[[dict[str, Any]], None] | None = None,
    on_round: Callable[[int, History], None] | None = None,
) -> dict[str, Any]:
    """Run ``runtime`` to the end, writing ``metrics.jsonl`` round by round, checkpoints, then ``summary.json``
    and plots into ``out``; return the summary.

    If ``out`` holds a checkpoint of this run, training continues from it (``metrics.jsonl`` is cut back
    to the checkpoint's rounds first). The caller decides whether ``out`` may hold an earlier run.
    """
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.resolved.yaml", dump_config(cfg))
    state = checkpoint.load(out)
    elapsed, threads = 0.0, [torch.get_num_threads()]
    if state is not None:
        checkpoint.restore(out, runtime, state)
        elapsed = float(state.get("elapsed_seconds", 0.0))
        threads = sorted({*state.get("torch_threads", []), *threads})
    metrics_path = out / "metrics.jsonl"
    write_jsonl(metrics_path, _rows(name, runtime.history.train, runtime.history.eval))
    log = JsonlLog(metrics_path)
    written = [len(runtime.history.train), len(runtime.history.eval)]  # rows already in the file
    t0 = time.perf_counter()

    def after_round(rnd: int, history: History) -> None:
        log.append(_rows(name, history.train[written[0] :], history.eval[written[1] :]))
        written[:] = len(history.train), len(history.eval)
        if rnd % cfg.federation.checkpoint_every == 0 or rnd == cfg.federation.rounds:
            seconds = elapsed + time.perf_counter() - t0
            checkpoint.save(out, {**runtime.state_dict(), "elapsed_seconds": seconds, "torch_threads": threads})
        if on_round is not None:
            on_round(rnd, history)

    try:
        history = runtime.run(on_round=after_round, on_client=on_client)
    finally:
        log.close()
    seconds = elapsed + time.perf_counter() - t0
    summary = {**summarize(name, runtime, history, metric, seconds), "environment": environment(threads)}
    plot_run(history, metric, out / "curves.png", display_name(name))
    plot_ranks(history, out / "ranks.png", display_name(name))
    write_json(out / "summary.json", summary)  # last: its presence marks a finished run
    return summary


def build_simulation(
    prepared: Prepared, name: str, device: torch.device | None = None, indices: Sequence[int] | None = None
) -> Simulation:
    """The seeded model, algorithm and in-process federation of algorithm ``name`` on the prepared clients
    (``indices``: their places among the config's clients when ``prepared`` holds only some of them)."""
    cfg, task = prepared.cfg, prepared.task
    seed_everything(cfg.seed)
    algorithm = make_algorithm(name, cfg.hyperparameters(name))
    model = build_model(cfg, algorithm, task, prepared.num_labels, device)
    fed, train_clients = cfg.federation, prepared.clients
    if algorithm.pools_client_data:
        # one client with everyone's data takes as many steps per round as all clients together
        train_clients = [pool_clients(prepared.clients)]
        fed = fed.model_copy(update={"local_steps": fed.local_steps * len(prepared.clients)})
    if indices is not None:
        return Simulation(model, algorithm, train_clients, fed, task.evaluate, None, indices, cfg.partition.num_clients)
    return Simulation(model, algorithm, train_clients, fed, task.evaluate, prepared.clients)


def restore_run(run_dir: Path, clients: Sequence[str] | None = None) -> tuple[Prepared, Simulation, list[ClientData]]:
    """The run in ``run_dir`` rebuilt in this process at its last checkpoint (from its resolved config, on the
    CPU: rebuilding is light work, so any run restores here), and its clients named in ``clients`` (default:
    all)."""
    from pf2lora.config import load_config

    state = checkpoint.load(run_dir)
    if state is None:
        runs = sorted(p.parent.name for p in run_dir.glob(f"*/{checkpoint.CHECKPOINT_DIR}"))
        hint = f": name one of its runs ({', '.join(str(run_dir / r) for r in runs)})" if runs else ""
        raise OutputError(f"{run_dir}: no checkpoint of a run here{hint}")
    cfg = load_config(run_dir / "config.resolved.yaml")
    name = state["algorithm"]
    if name not in ALGORITHMS:
        raise OutputError(f"{run_dir}: checkpoint of an unknown algorithm {name!r}")
    prepared = prepare(cfg)
    known = [c.cid for c in prepared.clients]
    unknown = [c for c in clients or () if c not in known]
    if unknown:
        raise InputError(f"--client {unknown[0]}: no such client; the run has clients {', '.join(known)}")
    sim = build_simulation(prepared, name, torch.device("cpu"))
    if state.get("runtime") == "flower":
        _restore_flower_run(run_dir, sim, state)
    else:
        checkpoint.restore(run_dir, sim, state)
    return prepared, sim, [c for c in prepared.clients if not clients or c.cid in clients]


def export_run(run_dir: Path, out: Path, clients: Sequence[str] | None = None) -> list[Path]:
    """Write each client's personalized model of the run in ``run_dir`` as a PEFT adapter ``out/client_<id>``,
    holding the values the run's own evaluation scored at its last checkpoint."""
    from pf2lora.export import export_peft_adapter, peft_task_type

    if out.exists() and any(
        not (p.is_dir() and p.name.startswith("client_") and (p / "adapter_config.json").is_file())
        for p in out.iterdir()
    ):
        raise OutputError(f"--out {out}: holds files other than earlier exports; choose another folder")
    prepared, sim, wanted = restore_run(run_dir, clients)
    return [
        export_peft_adapter(
            sim.model,
            sim.evaluated_params(client),
            out / f"client_{client.cid}",
            base_model_name_or_path=models.resolve(prepared.cfg.model.name),
            task_type=peft_task_type(prepared.task.kind),
            client=client.cid,
        )
        for client in wanted
    ]


#: ``pf2lora predict --split``: which test set of each client.
PREDICT_SPLITS = ("own", "global")


def predict_run(run_dir: Path, out: Path, clients: Sequence[str] | None = None, split: str = "own") -> int:
    """Write ``out`` (JSON lines): for each client of the run in ``run_dir``, each example of its own test split
    (``split="own"``) or of the shared held-out set (``"global"``) with the personalized model's output, exactly
    as the run's evaluation scored it at its last checkpoint; class labels by name. Returns the record count."""
    from pf2lora.config import load_config
    from pf2lora.data import LABEL_NAMES

    if split not in PREDICT_SPLITS:
        raise InputError(f"--split {split}: choose one of {', '.join(PREDICT_SPLITS)}")
    if split == "global" and global_split(load_config(run_dir / "config.resolved.yaml")) is None:  # before loading
        raise InputError("--split global: the run has no shared held-out set (data.global_split is null)")
    prepared, sim, wanted = restore_run(run_dir, clients)
    task, names = prepared.task, LABEL_NAMES.get(prepared.cfg.data.dataset)

    def predictions(model: AdaptedModel, params: Params, client: ClientData) -> list[dict[str, Any]]:
        return task.predict(model, params, client.test if split == "own" else client.global_test)

    rows = []
    for client in wanted:
        for r in sim.as_evaluated(client, predictions):
            if names is not None:
                r |= {k: names[r[k]] for k in ("label", "prediction") if k in r}
            rows.append({"client": client.cid, "split": split, **r})
    write_jsonl(out, rows)
    return len(rows)


def _restore_flower_run(run_dir: Path, sim: Simulation, state: dict[str, Any]) -> None:
    """Put a Flower run's checkpoint (global state) and its nodes' state files of that round (private states, kept
    under ``.flower/nodes`` by ``--runtime flower``/``flower-sim``) into the in-process ``sim``."""
    rnd, key = int(state["round"]), str(state["run_key"])
    folders = [
        d / ".flower" / "nodes" / key for d in (run_dir, run_dir.parent) if (d / ".flower" / "nodes" / key).is_dir()
    ]
    if not folders:
        raise OutputError(
            f"{run_dir}: a Flower run whose clients' private state is on their nodes (state-dir/{key}); "
            "export on each node, or copy those folders to .flower/nodes/ here"
        )
    sim.global_state = {k: v.clone() for k, v in state["global"].items()}
    sim.round = rnd
    for cid in sim.states:
        files = sorted(
            (int(p.stem.removeprefix("round_")), p) for p in (folders[0] / f"client_{cid}").glob("round_*.pt")
        )
        done = [p for r, p in files if r <= rnd]
        if done:
            saved = torch.load(done[-1], map_location="cpu", weights_only=True)
            sim.states[cid] = ClientState.from_state_dict(saved["state"])
            sim.streams[cid].load_state_dict(saved["stream"])


def environment(threads: Sequence[int]) -> dict[str, Any]:
    """What a run's numbers depend on besides its config: library versions, the CPU (its vector instructions
    pick torch's kernels) and the torch intra-op thread counts it ran with (all of them, when resumed with
    another): float sums, and so chaotic runs, differ between them. On Flower these are the server's."""
    import transformers

    from pf2lora import __version__

    return {
        "pf2lora": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": list(threads),
    }


def _cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; elsewhere what :mod:`platform` knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def summarize(name: str, sim: Federation, history: History, metric: str, seconds: float) -> dict[str, Any]:
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
    private = sim.private_parameters_per_client()
    rounds = history.rounds
    privacy = {k: rounds[-1][k] for k in ("dp_epsilon", "dp_delta") if rounds and k in rounds[-1]}
    return {
        "algorithm": name,
        "metric": metric,
        "final": {"mean": mean, "clients": final},
        "trainable_parameters_per_client": sim.trainable_parameters_per_client(),
        "common_parameters": common,
        "private_parameters_per_client": private,
        "communicated_parameters_per_round": statistics.fmean(
            r["upload_params"] + r["download_params"] for r in rounds
        ),
        "communicated_bytes_per_round": statistics.fmean(r["upload_bytes"] + r["download_bytes"] for r in rounds),
        "rounds": len(rounds),
        **({"privacy": privacy} if privacy else {}),
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
    b.plot(*_mean_by_round(history.eval, metric), label=f"{label}, own test split")
    if any(f"global_{metric}" in r for r in history.eval):
        b.plot(*_mean_by_round(history.eval, f"global_{metric}"), "--", label=f"{label}, shared held-out set")
    b.set(title=f"mean client test {metric}", xlabel="round")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def plot_ranks(history: History, path: Path, label: str) -> None:
    """Effective rank of each client's personalized ΔW per round: the mean over adapted layers (marker, line) and
    their range (bar), one colour per client, nudged apart; nothing when ranks were not tracked."""
    rows = [r for r in history.eval if "rank_mean" in r]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    clients = sorted({r["client"] for r in rows}, key=lambda c: (len(c), c))
    for i, cid in enumerate(clients):
        mine = [r for r in rows if r["client"] == cid]
        layers = [[v for k, v in r.items() if k.startswith("rank:")] for r in mine]
        rounds = [r["round"] + 0.25 * (i - (len(clients) - 1) / 2) / max(1, len(clients)) for r in mine]
        mean = [r["rank_mean"] for r in mine]
        spread = [
            [m - min(x) for m, x in zip(mean, layers, strict=True)],
            [max(x) - m for m, x in zip(mean, layers, strict=True)],
        ]
        colour = plt.get_cmap("tab10")(i % 10)
        ax.errorbar(rounds, mean, yerr=spread, marker="o", ms=3, capsize=2, color=colour, label=f"client {cid}")
    ax.set(title=f"{label}: effective rank of each client's ΔW (mean and range over layers)", xlabel="round")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def comparison_table(cfg: ExperimentConfig, per_seed: Mapping[int, Sequence[dict[str, Any]]]) -> str:
    """The paper's layout: one row per method, trainable/communicated parameters and the mean client metric;
    over several seeds (``per_seed``: each seed's summaries, algorithms in one order), mean ± std (n − 1)."""
    seeds = list(per_seed)
    runs = list(zip(*per_seed.values(), strict=True))  # per algorithm: its summary of each seed
    metric = runs[0][0]["metric"]
    extra = {
        "accuracy": ["balanced_accuracy", "mcc"],
        "mcc": ["accuracy", "balanced_accuracy"],
        "f1": ["exact_match"],
        "BLEU": ["NIST", "METEOR", "METEOR_exact_match", "ROUGE_L", "CIDEr", "TER"],
    }
    # the shared set is balanced: accuracy is balanced there; generation: the metrics that read the meaning too
    shared = {"accuracy": ["mcc"], "mcc": ["accuracy"], "f1": ["exact_match"], "BLEU": ["METEOR", "CIDEr"]}
    found = {k for summaries in runs for summary in summaries for k in summary["final"]["mean"]}
    # METEOR's exact-match stand-in (no Java runtime) gets a column only where it was reported
    cols = [metric, *(c for c in extra.get(metric, []) if c != "METEOR_exact_match" or c in found)]
    cols += [f"global_{c}" for c in (metric, *shared.get(metric, [])) if f"global_{c}" in found]
    over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± std over seeds {', '.join(map(str, seeds))}"
    split = global_split(cfg)
    task = DATASET_TASKS[cfg.data.dataset](None, cfg.task)
    kind = "label-balanced " if task.kind == "classification" else ""
    where = "a held-out part of the pool" if split == "pool" else f"the `{split}` split"
    limit = task.eval_limit  # the examples of each set that are scored (generation: beam search caps them)
    scored = min(cfg.data.global_examples, limit) if limit else cfg.data.global_examples
    lines = [
        f"**{cfg.name}** — {cfg.data.dataset}, {cfg.model.name}, {cfg.partition.num_clients} clients "
        f"({cfg.partition.method}), {cfg.federation.rounds} rounds × {cfg.federation.local_steps} local steps, "
        f"{over}. Personalized: mean over clients of each client's model on its own test split"
        + (f" (its first {limit} inputs)" if limit else "")
        + (
            f"; global_*: mean over clients of each client's model on one shared {kind}set "
            f"({scored} examples at most, from {where})"
            if any(c.startswith("global_") for c in cols)
            else ""
        ),
        "",
        "| Method | Trainable params / client | Communicated params / round | " + " | ".join(cols) + " |",
        "|---|---:|---:|" + "---:|" * len(cols),
    ]

    def cell(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.2f}"
        return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"

    for summaries in runs:
        vals = []
        for c in cols:
            found = [s["final"]["mean"][c] for s in summaries if c in s["final"]["mean"]]
            vals.append(cell(found) if len(found) == len(summaries) else "–")
        first = summaries[0]
        trainable = statistics.fmean(s["trainable_parameters_per_client"] for s in summaries)
        lines.append(
            f"| {display_name(first['algorithm'])} | {trainable:,.0f} | "
            f"{first['communicated_parameters_per_round']:,.0f} | {' | '.join(vals)} |"
        )
    return "\n".join(lines) + "\n"


def finished_run(run_dir: Path, resume: bool, label: str, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The summary of a run that finished earlier, which ``--resume`` skips (saying so); else None."""
    import json

    summary = run_dir / "summary.json"
    if not (resume and summary.is_file()):
        return None
    say(f"{label}: finished earlier, skipped (--resume)")
    return json.loads(summary.read_text(encoding="utf-8"))


def algorithm_dir(out: Path, names: Sequence[str], name: str) -> Path:
    """Where algorithm ``name`` of a comparison of ``names`` writes: ``out/<name>``, or ``out`` if it runs alone."""
    return out / name if len(names) > 1 else out


def plot_comparison(out: Path, names: Sequence[str], metric: str, runs: Sequence[Path] | None = None) -> None:
    """``out/compare.png``: the mean client test metric per round, one line per algorithm, beside the same on the
    shared held-out set (``global_<metric>``, where evaluated); over several ``runs`` (one folder per seed) the
    mean over seeds with a ± std band."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(runs or [out])

    def evals_of(run: Path, name: str) -> list[dict[str, Any]]:
        rows = map(json.loads, (algorithm_dir(run, names, name) / "metrics.jsonl").read_text().splitlines())
        return [r for r in rows if r["kind"] == "eval"]

    evals = {name: [evals_of(run, name) for run in runs] for name in names}
    keys = [k for k in (metric, f"global_{metric}") if any(k in r for per in evals.values() for r in per[0])]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        series = {}  # per algorithm: the rounds all runs evaluated and each run's value there
        for name in names:
            curves = [dict(zip(*_mean_by_round(rows, key), strict=True)) for rows in evals[name]]
            rounds = sorted(set.intersection(*(set(c) for c in curves)))
            if rounds:
                series[name] = rounds, np.array([[c[k] for k in rounds] for c in curves])
        if series and all(len(rounds) == 1 for rounds, _ in series.values()):  # evaluated once: points, not lines
            for i, (_, values) in enumerate(series.values()):
                err = values.std(0, ddof=1)[0] if len(runs) > 1 else 0.0
                ax.errorbar(i, values.mean(), yerr=err, fmt="o", capsize=4, color=f"C{i}")
            ax.set_xticks(range(len(series)), [display_name(name) for name in series])
            ax.set_xlabel(f"after round {next(iter(series.values()))[0][0]}")
        else:
            for name, (rounds, values) in series.items():
                mean = values.mean(0)
                (line,) = ax.plot(rounds, mean, label=display_name(name))
                if len(runs) > 1:
                    sd = values.std(0, ddof=1)
                    ax.fill_between(rounds, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
            ax.set_xlabel("round")
            ax.legend()
        where = "each client's own test split" if key == metric else "the shared held-out set"
        seeds = f"; mean ± std over {len(runs)} seeds" if len(runs) > 1 else ""
        ax.set_title(f"{key}\nmean over clients, on {where}{seeds}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out / "compare.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
