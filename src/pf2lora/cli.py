"""The ``pf2lora`` command line."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(width=100)


@app.callback()
def _root() -> None:
    """pf2lora: personalized federated fine-tuning with two-level LoRA."""


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


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
) -> None:
    """The synthetic rank-learning study: PF2LoRA vs HETLoRA on two clients (paper Section 5)."""
    import torch

    from pf2lora import synthetic as syn
    from pf2lora.io import write_jsonl

    gt: Literal["shared", "independent"]
    if ground_truth not in ("shared", "independent"):
        _fail(f"--ground-truth must be 'shared' or 'independent', got {ground_truth!r}")
    gt = ground_truth  # type: ignore[assignment]
    try:
        cfg = syn.SyntheticConfig(
            seed=seed,
            ground_truth=gt,
            ranks=_parse_ranks(ranks),
            shared_rank=shared_rank,
            steps=steps,
            pf2lora={"lr": lr, "lr_private": lr_private, "hypergradient": "exact"},
        )
    except ValidationError as e:
        err = e.errors()[0]
        _fail(f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}")
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
    console.print(f"wrote {out / 'metrics.jsonl'} and {out / 'synthetic.png'} in {time.perf_counter() - t0:.1f}s")


def _config(path: Path, overrides: list[str] | None) -> Any:
    from transformers.utils import logging as hf_logging

    from pf2lora.config import ConfigError, load_config

    hf_logging.set_verbosity_error()  # load reports about the freshly initialised task head are expected
    hf_logging.disable_progress_bar()

    try:
        return load_config(path, overrides)
    except ConfigError as e:
        _fail(str(e))


def _run_with_progress(prepared: Any, names: list[str], out: Path) -> list[dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pf2lora.algorithms import ALGORITHMS
    from pf2lora.experiment import run_algorithm

    cfg = prepared.cfg
    summaries = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        for name in names:
            per_round = (
                1
                if ALGORITHMS[name].pools_client_data
                else max(1, math.ceil(cfg.federation.client_fraction * len(prepared.clients)))
            )
            bar = progress.add_task(name, total=cfg.federation.rounds * per_round)

            def tick(row: dict[str, Any], bar: Any = bar, name: str = name) -> None:
                progress.update(
                    bar,
                    advance=1,
                    description=f"{name:12s} round {row['round']}/{cfg.federation.rounds} "
                    f"client {row['client']} loss {row.get('train_loss', float('nan')):.4f}",
                )

            summaries.append(run_algorithm(prepared, name, out / name if len(names) > 1 else out, tick))
    return summaries


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key.path=value (repeatable).")] = None,
    algorithm: Annotated[str | None, typer.Option(help="Algorithm (default: the config's).")] = None,
) -> None:
    """Run one algorithm of an experiment config."""
    from pf2lora.experiment import prepare

    cfg = _config(config, (set_ or []) + ([f"algorithm={algorithm}"] if algorithm else []))
    summary = _run_with_progress(_prepare_or_fail(prepare, cfg), [cfg.algorithm], out)[0]
    mean = summary["final"]["mean"]
    console.print(
        f"{cfg.algorithm}: mean client {summary['metric']} {mean.get(summary['metric'], float('nan')):.2f} "
        f"in {summary['wall_seconds']:.0f}s; wrote {out}"
    )


@app.command()
def compare(
    config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    algorithms: Annotated[
        str | None, typer.Option(help="Comma-separated (default: the config's compare list).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key.path=value (repeatable).")] = None,
) -> None:
    """Run several algorithms on identical client partitions; write table.md and compare.png."""
    from pf2lora.experiment import comparison_table, plot_comparison, prepare
    from pf2lora.io import write_text

    overrides = list(set_ or [])
    if algorithms:
        overrides.append("compare=[" + ",".join(a.strip() for a in algorithms.split(",")) + "]")
    cfg = _config(config, overrides)
    names = list(dict.fromkeys(cfg.compare))
    summaries = _run_with_progress(_prepare_or_fail(prepare, cfg), names, out)
    table = comparison_table(cfg, summaries)
    write_text(out / "table.md", table)
    plot_comparison(out, names, summaries[0]["metric"])
    console.print(table)
    console.print(f"wrote {out / 'table.md'} and {out / 'compare.png'}")


def _prepare_or_fail(prepare: Any, cfg: Any) -> Any:
    try:
        return prepare(cfg)
    except FileNotFoundError as e:
        _fail(str(e).splitlines()[0])


def main() -> None:
    """Entry point."""
    app()


if __name__ == "__main__":
    main()
