"""`pf2lora sweep`: every grid point runs with its values, one table and plot per metric, resumable."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pf2lora.cli import app
from pf2lora.sweep import parse_grid

FAST = ["--set", "federation.rounds=1", "--set", "federation.eval_every=0", "--set", "data.global_examples=16"]
GRID = ["--grid", "lora.r_private=1,2", "--grid", "algorithms.pf2lora.lr_private=0.05,0.5"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_sweep_runs_each_point_writes_table_and_plots_and_resumes(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = invoke("sweep", tiny_config, "--out", out, *GRID, *FAST)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "sweep.json").read_text())
    assert record["keys"] == ["lora.r_private", "algorithms.pf2lora.lr_private"]
    points = {tuple(p["values"]): p for p in record["points"]}
    assert set(points) == {("1", "0.05"), ("1", "0.5"), ("2", "0.05"), ("2", "0.5")}
    finals = set()
    for (rank, lr), point in points.items():
        cfg = yaml.safe_load((out / point["dir"] / "config.resolved.yaml").read_text())
        assert cfg["lora"]["r_private"] == int(rank) and cfg["algorithms"]["pf2lora"]["lr_private"] == float(lr)
        (summary,) = point["summaries"]
        assert summary["private_parameters_per_client"] > 0
        finals.add(json.dumps(summary["final"], sort_keys=True))
    assert len(finals) == 4  # each point really ran with its own values
    table = (out / "sweep.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| lora.r_private"))
    assert "accuracy" in header and "global_accuracy" in header and "rank_mean" in header
    assert sum(line.startswith(("| 1 |", "| 2 |")) for line in table.splitlines()) == 4
    for metric in ("accuracy", "global_accuracy", "rank_mean"):
        assert (out / f"sweep_{metric}.png").stat().st_size > 0

    again = invoke("sweep", tiny_config, "--out", out, *GRID, *FAST)
    assert again.exit_code == 2 and "--resume" in again.output and len(again.output.strip().splitlines()) == 1

    redo = out / points[("2", "0.5")]["dir"]
    (redo / "summary.json").unlink()  # as if the sweep had died during its last point
    resumed = invoke("sweep", tiny_config, "--out", out, *GRID, *FAST, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.count("finished earlier, skipped") == 3
    assert (out / "sweep.md").read_text() == table


def test_sweep_with_seeds_reports_mean_and_std(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "seeds"
    result = invoke("sweep", tiny_config, "--out", out, "--grid", "lora.r_private=1", "--seeds", "0,1", *FAST)
    assert result.exit_code == 0, result.output
    runs = [json.loads((out / "lora.r_private=1" / f"seed_{s}" / "summary.json").read_text()) for s in (0, 1)]
    (row,) = [line for line in (out / "sweep.md").read_text().splitlines() if line.startswith("| 1 |")]
    values = [r["final"]["mean"]["accuracy"] for r in runs]
    assert f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" in row


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["--grid", "lora.r_private"], "expected key.path=value1,value2"),
        (["--grid", "lora.r_private=1,,2"], "no empty values"),
        (["--grid", "lora.r=4", "--grid", "lora.r=8"], "already swept"),
        (["--grid", "lora.r_privat=1,2"], "lora.r_privat"),
        (["--grid", "lora.r_private=1,many"], "lora.r_private"),
    ],
)
def test_sweep_input_errors_are_one_line_before_anything_runs(tiny_config, tmp_path, grid, message) -> None:
    out = tmp_path / "bad"
    result = invoke("sweep", tiny_config, "--out", out, *grid)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_grid_points_and_folders() -> None:
    grid = parse_grid(["a.b=1,2", "c=x/y,z"])
    assert grid.points() == [("1", "x/y"), ("1", "z"), ("2", "x/y"), ("2", "z")]
    assert grid.overrides(("1", "z")) == ["a.b=1", "c=z"]
    assert grid.folder(("1", "x/y")) == "a.b=1,c=x_y"
