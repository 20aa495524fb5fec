"""The ``pf2lora`` command line.

Input errors end in one ``error:`` line (exit 2), a diverged run in one line (exit 1) with its last
checkpoint kept, Ctrl-C in one line (exit 130); ``--debug`` shows the traceback instead. Threads follow
the CPUs this process may use, and OpenMP waits passively, so a run on a shared machine is not slowed by
spinning threads; when stdout is not a terminal (a log file) progress is one line per round.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

# Before torch loads: spinning OpenMP workers slow a shared machine 2-3× (README, "Runs under load").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
console = Console(width=100)


def say(message: str) -> None:
    """Plain text (no markup), never hard-wrapped: paths, the job plan and markdown tables stay whole in logs."""
    console.print(message, soft_wrap=True, highlight=False, markup=False)


DebugOption = Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")]


@app.callback()
def _root() -> None:
    """pf2lora: personalized federated fine-tuning with two-level LoRA."""


def _warn(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """Warnings of ours are one ``warning:`` line; other libraries' keep Python's format."""
    if str(message).startswith("federation."):
        console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", soft_wrap=True, highlight=False)
    else:
        _show_warning(message, category, *args, **kwargs)  # type: ignore[arg-type]


_show_warning = warnings.showwarning


def _fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False, markup=True)
    raise typer.Exit(code)


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask), the first of them only as many as a cgroup v2 CPU
    quota allows if one is set."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = cpus[: max(1, math.ceil(int(quota) / int(period)))]
    return cpus or [0]


def available_cpus() -> int:
    """How many CPUs this process may use (:func:`usable_cpus`)."""
    return len(usable_cpus())


def _threads() -> None:
    import torch

    torch.set_num_threads(available_cpus())


@contextlib.contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """Turn any error into one line (``--debug``: the traceback)."""
    if debug:
        yield
        return
    from pf2lora.errors import DivergenceError, FederationError, InputError, WorkerDied
    from pf2lora.federation import PrivacyError

    try:
        yield
    except InputError as e:
        _fail(_one_line(e))
    except (DivergenceError, PrivacyError, FederationError, WorkerDied) as e:
        _fail(f"{_one_line(e)} (the last checkpoint is kept)", 1)
    except KeyboardInterrupt:
        _fail("interrupted; the last checkpoint is kept: rerun with --resume to continue", 130)
    except MemoryError:
        _fail("out of memory; lower federation.batch_size or task.max_length, then rerun with --resume", 1)
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _fail(f"{e.strerror or e}{where}", 1)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as e:  # a pf2lora bug: still one line, the traceback is one flag away
        _fail(f"internal error ({type(e).__name__}: {_one_line(e)}); rerun with --debug for the traceback", 1)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _parse_ranks(text: str) -> tuple[int, int]:
    try:
        ranks = tuple(int(v) for v in text.split(","))
    except ValueError:
        _fail(f"--ranks must be two integers like 3,4, got {text!r}")
    if len(ranks) != 2:
        _fail(f"--ranks must name exactly two ranks (two clients), got {text!r}")
    return ranks  # type: ignore[return-value]


@app.command()
def synthetic(
    out: Annotated[Path, typer.Option(help="Output directory.")],
    seed: Annotated[int, typer.Option(help="Seed of data, ground truth and initialisation.")] = 0,
    ground_truth: Annotated[
        str, typer.Option(help="shared (exactly recoverable) or independent (the paper's text).")
    ] = "shared",
    ranks: Annotated[str, typer.Option(help="Ranks of W_1*, W_2*.")] = "3,4",
    shared_rank: Annotated[int, typer.Option(help="Rank of the part W_1*, W_2* share (shared only).")] = 2,
    steps: Annotated[int, typer.Option(help="Local steps in all (communication every 10).")] = 2000,
    lr: Annotated[float, typer.Option(help="PF2LoRA common-adapter learning rate η.")] = 1e-2,
    lr_private: Annotated[float, typer.Option(help="PF2LoRA client-adapter learning rate α.")] = 1e-2,
    hetlora_aggregation: Annotated[
        str, typer.Option(help="HETLoRA's aggregation: zero_padded (the default) or per_component.")
    ] = "zero_padded",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier study in --out.")] = False,
    debug: DebugOption = False,
) -> None:
    """The synthetic rank-learning study: PF2LoRA vs HETLoRA on two clients (paper Section 5)."""
    with _errors(debug):
        _synthetic(out, seed, ground_truth, ranks, shared_rank, steps, lr, lr_private, hetlora_aggregation, overwrite)


def _synthetic(
    out: Path,
    seed: int,
    ground_truth: str,
    ranks: str,
    shared_rank: int,
    steps: int,
    lr: float,
    lr_private: float,
    hetlora_aggregation: str,
    overwrite: bool,
) -> None:
    import torch
    import yaml

    from pf2lora import synthetic as syn
    from pf2lora.io import write_jsonl
    from pf2lora.rundir import open_run_dir

    gt: Literal["shared", "independent"]
    if ground_truth not in ("shared", "independent"):
        _fail(f"--ground-truth must be 'shared' or 'independent', got {ground_truth!r}")
    gt = ground_truth  # type: ignore[assignment]
    if hetlora_aggregation not in ("zero_padded", "per_component"):
        _fail(f"--hetlora-aggregation must be 'zero_padded' or 'per_component', got {hetlora_aggregation!r}")
    try:
        cfg = syn.SyntheticConfig(
            seed=seed,
            ground_truth=gt,
            ranks=_parse_ranks(ranks),
            shared_rank=shared_rank,
            steps=steps,
            pf2lora={"lr": lr, "lr_private": lr_private, "hypergradient": "exact"},
        )
        cfg.hetlora["aggregation"] = hetlora_aggregation
    except ValidationError as e:
        err = e.errors()[0]
        _fail(f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {str(err['msg']).removeprefix('Value error, ')}")
    open_run_dir(out, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), resume=False, overwrite=overwrite)
    torch.set_num_threads(1)  # 10×10 problems: threads only add overhead and reduction-order noise
    t0 = time.perf_counter()
    rows, summary = syn.run_study(cfg)
    write_jsonl(out / "metrics.jsonl", rows)
    syn.plot(rows, str(out / "synthetic.png"), syn.noise_floors())
    table = Table(title=f"synthetic study, {cfg.ground_truth} ground truth, seed {cfg.seed}")
    for col in (
        "algorithm",
        "client",
        "train loss",
        "test loss",
        "floor",
        "test/floor",
        "‖W−W*‖_F",
        "rank",
        "true rank",
    ):
        table.add_column(col, justify="right")
    for r in summary:
        table.add_row(
            r["algorithm"],
            r["client"],
            f"{r['train_loss']:.4f}",
            f"{r['test_loss']:.4f}",
            f"{r['noise_floor']:.2f}",
            f"{r['test_over_floor']:.2f}",
            f"{r['distance']:.4f}",
            str(r["effective_rank"]),
            str(r["true_effective_rank"]),
        )
    console.print(table)
    say(f"wrote {out / 'metrics.jsonl'} and {out / 'synthetic.png'} in {time.perf_counter() - t0:.1f}s")


def _config(path: Path, overrides: list[str] | None) -> Any:
    from pf2lora.config import load_config

    return load_config(path, overrides)


def _round_line(name: str, rnd: int, rounds: int, history: Any, metric: str, seconds: float) -> str:
    """One log line per round (for log files, where a progress bar shows nothing)."""
    losses = [r["train_loss"] for r in history.train if r["round"] == rnd and "train_loss" in r]
    evals = [r[metric] for r in history.eval if r["round"] == rnd and metric in r]
    parts = [f"{name} round {rnd}/{rounds}"]
    if losses:
        parts.append(f"train_loss {sum(losses) / len(losses):.4f}")
    if evals:
        parts.append(f"{metric} {sum(evals) / len(evals):.2f}")
    parts.append(f"{seconds:.1f}s")
    return ", ".join(parts)


def _run_all(prepared: Any, names: list[str], out: Path, resume: bool) -> list[dict[str, Any]]:
    """Run (or resume, or skip when finished) each algorithm, with a progress bar or per-round log lines."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pf2lora.algorithms import ALGORITHMS
    from pf2lora.experiment import algorithm_dir, run_algorithm

    cfg = prepared.cfg
    rounds = cfg.federation.rounds
    summaries = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    live = console.is_terminal
    with Progress(*columns, console=console, transient=False, disable=not live) as progress:
        for name in names:
            run_dir = algorithm_dir(out, names, name)
            if (done := _finished(run_dir, resume, name)) is not None:
                summaries.append(done)
                continue
            per_round = (
                1
                if ALGORITHMS[name].pools_client_data
                else max(1, math.ceil(cfg.federation.client_fraction * len(prepared.clients)))
            )
            bar = progress.add_task(name, total=rounds * per_round)
            started = [time.perf_counter()]

            def tick(row: dict[str, Any], bar: Any = bar, name: str = name) -> None:
                progress.update(
                    bar,
                    advance=1,
                    description=f"{name:12s} round {row['round']}/{rounds} "
                    f"client {row['client']} loss {row.get('train_loss', float('nan')):.4f}",
                )

            def log_round(
                rnd: int, history: Any, name: str = name, bar: Any = bar, started: Any = started, n: int = per_round
            ) -> None:
                progress.update(bar, completed=rnd * n)
                if not live:
                    seconds = time.perf_counter() - started[0]
                    print(_round_line(name, rnd, rounds, history, prepared.task.primary_metric, seconds), flush=True)
                started[0] = time.perf_counter()

            summaries.append(run_algorithm(prepared, name, run_dir, tick, log_round))
    return summaries


def _finished(run_dir: Path, resume: bool, label: str) -> dict[str, Any] | None:
    """:func:`pf2lora.experiment.finished_run`, said on the console."""
    from pf2lora.experiment import finished_run

    return finished_run(run_dir, resume, label, say)


JobsOption = Annotated[
    int,
    typer.Option(
        help="Runs side by side (in-process runtime): worker processes, each pinned to its share of the CPUs "
        "and using as many threads; each run gives the numbers it gives alone on that many CPUs."
    ),
]


def _check_jobs(jobs: int, runtime: str = "inprocess") -> list[int]:
    """The CPUs ``--jobs`` splits (a one-line error for a count they cannot take or a Flower runtime)."""
    from pf2lora.parallel import cpu_shares

    if jobs != 1 and runtime != "inprocess":
        _fail("--jobs: only with --runtime inprocess (Flower runs each client on its own node)")
    cpus = usable_cpus()
    cpu_shares(cpus, jobs)
    return cpus


def _parallel(jobs: list[Any], workers: int, cpus: list[int], fresh: list[tuple[Path, bool]]) -> list[dict[str, Any]]:
    """Run ``jobs`` (:class:`pf2lora.parallel.Job`) on ``workers`` pinned processes, one line per finished run.

    An input error a worker finds (a LoRA target that does not fit the model) removes what the new runs in
    ``fresh`` (folder, whether it existed before) wrote, as :func:`_session` does in this process.
    """
    from pf2lora.errors import InputError
    from pf2lora.parallel import cpu_shares, run_jobs
    from pf2lora.rundir import discard_new_run

    if not jobs:
        return []
    shares = " | ".join(",".join(map(str, share)) for share in cpu_shares(cpus, workers))
    say(
        f"{len(jobs)} runs, {min(workers, len(jobs))} at a time, each on one CPU share of {shares} "
        "(threads: its CPUs); each run's progress is in its metrics.jsonl",
    )
    done = [0]

    def report(job: Any, summary: dict[str, Any]) -> None:
        done[0] += 1
        value = summary["final"]["mean"].get(summary["metric"])
        say(
            f"[{done[0]}/{len(jobs)}] {job.label}: {summary['metric']} "
            f"{value if value is None else format(value, '.2f')} in {summary['wall_seconds']:.0f}s",
        )

    try:
        return run_jobs(jobs, workers, cpus, report)
    except InputError:
        for where, existed in fresh:
            if where.exists():
                discard_new_run(where, remove_dir=not existed)
        raise


def _fresh(where: Path) -> list[tuple[Path, bool]]:
    """``[(where, whether it exists)]`` if a run started there now would be new (nothing there yet), else []."""
    return [] if where.is_dir() and any(where.iterdir()) else [(where, where.exists())]


def _flower(runtime: str, supernodes: int | None) -> Any:
    """The runner of ``--runtime flower``/``flower-sim`` (same signature as :func:`_run_all`)."""
    if supernodes is not None and runtime != "flower":
        _fail("--supernodes: only with --runtime flower")
    if runtime not in ("flower", "flower-sim"):
        _fail(f"--runtime must be inprocess, flower or flower-sim, got {runtime!r}")
    try:
        import flwr  # noqa: F401
    except ImportError:
        _fail(f'--runtime {runtime}: Flower is not installed; pip install -e ".[flower]" (Python >= 3.11)')

    def run_all(prepared: Any, names: list[str], out: Path, resume: bool) -> list[dict[str, Any]]:
        from pf2lora.runtime.flower.run import run_flower

        return run_flower(prepared, names, out, resume, runtime, supernodes, say)

    return run_all


@contextlib.contextmanager
def _session(
    config: Path, overrides: list[str], out: Path, resume: bool, overwrite: bool, tokenize: bool = True
) -> Iterator[Any]:
    """Validate the config and ``--out`` (before anything loads), prepare the data, run the body
    (``tokenize=False``: the partition only, for runtimes whose nodes tokenize their own clients).

    An input error found later (a model or LoRA target that does not fit) removes what this new run wrote,
    so a corrected rerun into the same ``--out`` needs no ``--overwrite``.
    """
    from pf2lora.config import dump_config
    from pf2lora.devices import resolve_device
    from pf2lora.errors import InputError
    from pf2lora.experiment import prepare
    from pf2lora.models import quiet_transformers
    from pf2lora.rundir import discard_new_run, open_run_dir

    cfg = _config(config, overrides)
    resolve_device(cfg.federation.device)  # a device this machine lacks is an error before anything loads
    existed = out.exists()
    resumed = open_run_dir(out, dump_config(cfg), resume=resume, overwrite=overwrite)
    try:
        _threads()
        quiet_transformers()
        yield prepare(cfg) if tokenize else prepare(cfg, only=[])
    except InputError:
        if not resumed:
            discard_new_run(out, remove_dir=not existed)
        raise


RuntimeOption = Annotated[
    str,
    typer.Option(
        help="inprocess (one process), flower (a SuperLink and a SuperNode per client as local processes) or "
        "flower-sim (Flower's Simulation Engine)."
    ),
]
SupernodesOption = Annotated[
    int | None, typer.Option(help="--runtime flower: SuperNodes to start (one per client; default: all clients).")
]
ResumeOption = Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")]
OverwriteOption = Annotated[bool, typer.Option(help="Replace the earlier run in --out.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override: key.path=value (repeatable).")]
DeviceOption = Annotated[
    str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps (default: the config's federation.device).")
]


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    set_: SetOption = None,
    algorithm: Annotated[str | None, typer.Option(help="Algorithm (default: the config's).")] = None,
    device: DeviceOption = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    runtime: RuntimeOption = "inprocess",
    supernodes: SupernodesOption = None,
    debug: DebugOption = False,
) -> None:
    """Run one algorithm of an experiment config."""
    with _errors(debug):
        overrides = (set_ or []) + ([f"algorithm={algorithm}"] if algorithm else [])
        overrides += [f"federation.device={device}"] if device else []
        local = runtime == "inprocess"
        runner = _run_all if local else _flower(runtime, supernodes)
        with _session(config, overrides, out, resume, overwrite, tokenize=local) as prepared:
            summary = runner(prepared, [prepared.cfg.algorithm], out, resume)[0]
        cfg = prepared.cfg
        mean = summary["final"]["mean"]
        value = mean.get(summary["metric"])
        say(
            f"{cfg.algorithm}: mean client {summary['metric']} "
            f"{value if value is None else format(value, '.2f')} in {summary['wall_seconds']:.0f}s; wrote {out}"
        )


@app.command()
def compare(
    config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    algorithms: Annotated[
        str | None, typer.Option(help="Comma-separated (default: the config's compare list).")
    ] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    resume: Annotated[
        bool, typer.Option(help="Continue: skip finished algorithms, resume the interrupted one.")
    ] = False,
    overwrite: OverwriteOption = False,
    runtime: RuntimeOption = "inprocess",
    supernodes: SupernodesOption = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated seeds: the whole comparison once per seed (partitions too) into OUT/seed_<s>/; "
            "OUT/table.md gives mean ± std over seeds, OUT/summary.json every seed's numbers."
        ),
    ] = None,
    jobs: JobsOption = 1,
    debug: DebugOption = False,
) -> None:
    """Run several algorithms on identical client partitions; write table.md and compare.png (both metrics)."""
    with _errors(debug):
        from pf2lora.experiment import algorithm_dir, comparison_table, plot_comparison
        from pf2lora.io import write_json, write_text
        from pf2lora.parallel import Job

        overrides = list(set_ or []) + ([f"federation.device={device}"] if device else [])
        if algorithms is not None:
            overrides.append("compare=[" + ",".join(a.strip() for a in algorithms.split(",")) + "]")
        seed_list = _seeds(seeds)
        cpus = _check_jobs(jobs, runtime)
        local = runtime == "inprocess"
        runner = _run_all if local else _flower(runtime, supernodes)
        per_seed: dict[int, list[dict[str, Any]]] = {}
        found: dict[tuple[int, str], dict[str, Any]] = {}  # --jobs: (seed, algorithm) -> summary
        todo, folders, fresh = [], [], []
        for seed in seed_list or [None]:
            where = out if seed is None else out / f"seed_{seed}"
            extra = [] if seed is None else [f"seed={seed}"]
            fresh += _fresh(where)
            tokenize = local and jobs == 1  # --jobs: each worker tokenizes for its runs; here the checks only
            with _session(config, overrides + extra, where, resume, overwrite, tokenize=tokenize) as prepared:
                cfg = prepared.cfg
                names = list(dict.fromkeys(cfg.compare))
                if jobs == 1:
                    per_seed[cfg.seed] = runner(prepared, names, where, resume)
            folders.append((cfg.seed, where, names))
            for name in names if jobs > 1 else []:
                run_dir, label = algorithm_dir(where, names, name), name if seed is None else f"seed {seed} {name}"
                if (done := _finished(run_dir, resume, label)) is not None:
                    found[cfg.seed, name] = done
                else:
                    todo.append(Job(cfg, name, run_dir, label))
        for job, summary in zip(todo, _parallel(todo, jobs, cpus, fresh), strict=True):
            found[job.cfg.seed, job.algorithm] = summary
        for seed, where, names in folders:
            if seed not in per_seed:
                per_seed[seed] = [found[seed, name] for name in names]
            summaries = per_seed[seed]
            plot_comparison(where, names, summaries[0]["metric"])
        table = comparison_table(cfg, per_seed)
        write_text(out / "table.md", table)
        if seed_list:
            plot_comparison(out, names, summaries[0]["metric"], [out / f"seed_{s}" for s in seed_list])
            write_json(
                out / "summary.json", {"seeds": seed_list, "summaries": {str(k): v for k, v in per_seed.items()}}
            )
        say(table)
        say(f"wrote {out / 'table.md'} and {out / 'compare.png'}" + (" and per-seed folders" if seed_list else ""))


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
    out: Annotated[Path, typer.Option(help="Output directory: one run directory per grid point (and seed).")],
    grid: Annotated[
        list[str], typer.Option(help="key.path=value1,value2,... (repeatable: the grid is every combination).")
    ],
    algorithm: Annotated[str | None, typer.Option(help="Algorithm (default: the config's).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds: every point once per seed.")] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    resume: Annotated[bool, typer.Option(help="Continue: skip finished points, resume the interrupted one.")] = False,
    overwrite: OverwriteOption = False,
    jobs: JobsOption = 1,
    debug: DebugOption = False,
) -> None:
    """Run one algorithm over a grid of config values; write sweep.md and one plot per metric."""
    with _errors(debug):
        from pf2lora.io import write_json, write_text
        from pf2lora.parallel import Job
        from pf2lora.sweep import parse_grid, plot_sweep, sweep_metrics, sweep_table

        try:
            spec = parse_grid(grid)
        except ValueError as e:
            _fail(str(e))
        overrides = list(set_ or []) + ([f"algorithm={algorithm}"] if algorithm else [])
        overrides += [f"federation.device={device}"] if device else []
        seed_list = _seeds(seeds)
        runs = [
            (point, seed, out / spec.folder(point) / (f"seed_{seed}" if seeds else ""))
            for point in spec.points()
            for seed in seed_list or [None]
        ]
        for point, seed, _ in runs:  # every point's config is checked before anything runs
            cfg = _config(config, overrides + spec.overrides(point) + ([] if seed is None else [f"seed={seed}"]))
        if resume and overwrite:
            _fail("--resume and --overwrite exclude each other")
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (resume or overwrite))):
            _fail(f"--out {out}: holds an earlier sweep or other files; pass --resume to continue it or --overwrite")
        cpus = _check_jobs(jobs)
        found: dict[int, dict[str, Any]] = {}  # run index -> summary
        todo: list[tuple[int, Any]] = []  # --jobs: (run index, Job)
        fresh: list[tuple[Path, bool]] = []
        for i, (point, seed, where) in enumerate(runs):
            label = f"point {i + 1}/{len(runs)}: {' '.join(spec.overrides(point))}" + (
                "" if seed is None else f", seed {seed}"
            )
            if (done := _finished(where, resume, label)) is not None:
                found[i] = done
                continue
            if jobs == 1:
                say(label)
            extra = spec.overrides(point) + ([] if seed is None else [f"seed={seed}"])
            fresh += _fresh(where)
            with _session(config, overrides + extra, where, resume, overwrite, tokenize=jobs == 1) as prepared:
                if jobs == 1:
                    found[i] = _run_all(prepared, [prepared.cfg.algorithm], where, resume)[0]
                else:
                    todo.append((i, Job(prepared.cfg, prepared.cfg.algorithm, where, label)))
        found.update(zip([i for i, _ in todo], _parallel([job for _, job in todo], jobs, cpus, fresh), strict=True))
        results: dict[tuple[str, ...], list[dict[str, Any]]] = {point: [] for point in spec.points()}
        for i, (point, _, _) in enumerate(runs):
            results[point].append(found[i])
        title = f"{cfg.name}: {cfg.algorithm} sweep"
        table = sweep_table(spec, results, title, seed_list or [cfg.seed])
        write_text(out / "sweep.md", table)
        write_json(
            out / "sweep.json",
            {
                "keys": list(spec.keys),
                "points": [
                    {"values": list(point), "dir": spec.folder(point), "summaries": results[point]}
                    for point in spec.points()
                ],
            },
        )
        plots = []
        for metric in sweep_metrics([s for r in results.values() for s in r]):
            plot_sweep(spec, results, metric, out / f"sweep_{metric}.png")
            plots.append(f"sweep_{metric}.png")
        say(table)
        say(f"wrote {out / 'sweep.md'}, {', '.join(plots)}")


def _seeds(text: str | None) -> list[int]:
    """``--seeds 0,1,2`` as distinct non-negative integers (a one-line error otherwise)."""
    if text is None:
        return []
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        _fail(f"--seeds: {text!r} is not a comma-separated list of integers")
    if any(not 0 <= s < 2**63 for s in seeds) or len(set(seeds)) != len(seeds):
        _fail(f"--seeds: {text!r} must list distinct seeds from 0 to 2**63 - 1")
    return seeds


RunDirArgument = Annotated[
    Path, typer.Argument(help="A run's output directory (of `run`, or one algorithm's of `compare`).")
]


def _before_restoring(run_dir: Path) -> None:
    """Refuse a folder that is no run (before any model loads); set threads and quiet transformers."""
    from pf2lora.models import quiet_transformers

    if not (run_dir / "config.resolved.yaml").is_file():
        _fail(f"{run_dir}: not a pf2lora run directory (no config.resolved.yaml)")
    _threads()
    quiet_transformers()


@app.command()
def export(
    run_dir: RunDirArgument,
    out: Annotated[Path, typer.Option(help="Output directory: one PEFT adapter folder per client.")],
    client: Annotated[list[str] | None, typer.Option(help="Client id to export (repeatable; default: all).")] = None,
    debug: DebugOption = False,
) -> None:
    """Write each client's personalized model as a standard PEFT LoRA adapter (`PeftModel.from_pretrained`)."""
    with _errors(debug):
        from pf2lora.experiment import export_run

        _before_restoring(run_dir)
        paths = export_run(run_dir, out, client)
        say(f"wrote {len(paths)} PEFT adapter(s) under {out}")


@app.command()
def predict(
    run_dir: RunDirArgument,
    out: Annotated[Path, typer.Option(help="Output file (JSON lines): one record per client and test example.")],
    client: Annotated[list[str] | None, typer.Option(help="Client id (repeatable; default: all).")] = None,
    split: Annotated[
        str, typer.Option(help="own: each client's own test split; global: the shared held-out set.")
    ] = "own",
    debug: DebugOption = False,
) -> None:
    """Write each client's personalized model's outputs on its test examples (input, prediction, reference),
    exactly as the run's evaluation scored them at its last checkpoint."""
    with _errors(debug):
        from pf2lora.experiment import predict_run

        if out.is_dir():
            _fail(f"--out {out}: is a folder; name a file")
        _before_restoring(run_dir)
        n = predict_run(run_dir, out, client, split)
        say(f"wrote {n} predictions to {out}")


def main() -> None:
    """Entry point: command-line usage errors are one ``error:`` line too (exit 2)."""
    import sys

    # click's UsageError, whether typer vendors click or uses the installed one
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    warnings.showwarning = _warn
    try:
        code = app(standalone_mode=False)
    except usage_error as e:
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            console.print(ctx.get_help())
            sys.exit(0)
        command = ctx.command_path if ctx is not None else "pf2lora"
        console.print(f"[red]error:[/red] {escape(e.format_message())} (see {command} --help)", soft_wrap=True)
        code = 2
    except typer.Abort:
        console.print("[red]error:[/red] interrupted", soft_wrap=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
