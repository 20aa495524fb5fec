"""Sensitivity sweeps: one algorithm over a grid of config values (× seeds), one table and a plot per metric.

``pf2lora sweep CONFIG --grid lora.r_private=1,2,4 --grid algorithms.pf2lora.lr_private=0.1,0.5 --out DIR``
runs every point of the grid into ``DIR/<key=value,...>/`` (``.../seed_<s>/`` with ``--seeds``), each an
ordinary run directory, so an interrupted sweep resumes point by point. ``sweep.md`` holds the mean (± std
over seeds) of each metric per point; ``sweep_<metric>.png`` is a line plot over one key or a heatmap over two.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pf2lora.io import atomic_write


@dataclass(frozen=True)
class Grid:
    """Config keys and the values each takes (as ``--set`` text), in the order given."""

    keys: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]

    def points(self) -> list[tuple[str, ...]]:
        """Every combination of values, the last key varying fastest."""
        return list(itertools.product(*self.values))

    def overrides(self, point: Sequence[str]) -> list[str]:
        """The ``--set`` overrides of one point."""
        return [f"{k}={v}" for k, v in zip(self.keys, point, strict=True)]

    def folder(self, point: Sequence[str]) -> str:
        """The point's sub-directory name: ``key=value,...`` with path separators and spaces made safe."""
        return re.sub(r"[/\\\s:]", "_", ",".join(self.overrides(point)))


def parse_grid(items: Sequence[str]) -> Grid:
    """``["key=v1,v2", ...]`` as a :class:`Grid`; a ValueError naming the bad ``--grid`` item otherwise."""
    keys: list[str] = []
    values: list[tuple[str, ...]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        vals = tuple(v.strip() for v in text.split(","))
        if not sep or not key or not all(vals):
            raise ValueError(f"--grid {item!r}: expected key.path=value1,value2,... (no empty values)")
        if key in keys:
            raise ValueError(f"--grid {item!r}: {key} is already swept by an earlier --grid")
        if len(set(vals)) != len(vals):
            raise ValueError(f"--grid {item!r}: a value is listed twice")
        keys.append(key)
        values.append(vals)
    if not keys:
        raise ValueError("--grid: give at least one key.path=value1,value2,...")
    return Grid(tuple(keys), tuple(values))


def _cell(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def sweep_metrics(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics a sweep reports: the primary one, its ``global_`` twin and the mean effective rank (if any)."""
    metric = summaries[0]["metric"]
    return [m for m in (metric, f"global_{metric}", "rank_mean") if all(m in s["final"]["mean"] for s in summaries)]


def sweep_table(
    grid: Grid, results: Mapping[tuple[str, ...], Sequence[Mapping[str, Any]]], title: str, seeds: Sequence[int]
) -> str:
    """Markdown: one row per point, its keys' values and each metric's mean over clients (± std over seeds)."""
    metrics = sweep_metrics([s for runs in results.values() for s in runs])
    over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± std over seeds {', '.join(map(str, seeds))}"
    lines = [
        f"**{title}** — mean over clients, {over}",
        "",
        "| " + " | ".join([*grid.keys, *metrics, "wall s"]) + " |",
        "|" + "---|" * len(grid.keys) + "---:|" * (len(metrics) + 1),
    ]
    for point in grid.points():
        runs = results[point]
        cells = [_cell([s["final"]["mean"][m] for s in runs]) for m in metrics]
        wall = statistics.fmean(s["wall_seconds"] for s in runs)
        lines.append("| " + " | ".join([*point, *cells, f"{wall:.0f}"]) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(
    grid: Grid, results: Mapping[tuple[str, ...], Sequence[Mapping[str, Any]]], metric: str, path: Path
) -> None:
    """One key: the metric over its values (error bars: std over seeds). Two keys: a heatmap of the mean.
    More: lines over the first key, one per combination of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean(point: tuple[str, ...]) -> float:
        return statistics.fmean(s["final"]["mean"][metric] for s in results[point])

    def std(point: tuple[str, ...]) -> float:
        runs = results[point]
        return statistics.stdev(s["final"]["mean"][metric] for s in runs) if len(runs) > 1 else 0.0

    first, rest = grid.values[0], grid.values[1:]
    if len(grid.keys) == 2:
        fig, ax = plt.subplots(figsize=(1.2 * len(rest[0]) + 2.5, 0.8 * len(first) + 1.8))
        table = [[mean((a, b)) for b in rest[0]] for a in first]
        image = ax.imshow(table, cmap="viridis", aspect="auto")
        for i, row in enumerate(table):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(len(rest[0])), rest[0])
        ax.set_yticks(range(len(first)), first)
        ax.set(xlabel=grid.keys[1], ylabel=grid.keys[0])
        fig.colorbar(image, ax=ax, label=metric)
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        x = range(len(first))
        for others in itertools.product(*rest):
            points = [(a, *others) for a in first]
            label = ", ".join(f"{k}={v}" for k, v in zip(grid.keys[1:], others, strict=True)) or None
            ax.errorbar(x, [mean(p) for p in points], yerr=[std(p) for p in points], marker="o", capsize=3, label=label)
        ax.set_xticks(list(x), first)
        ax.set(xlabel=grid.keys[0], ylabel=metric)
        ax.grid(alpha=0.3)
        if len(grid.keys) > 1:
            ax.legend(fontsize=7)
    ax.set_title(f"mean client {metric}", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
