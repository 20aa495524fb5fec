"""`pf2lora predict`: each client's outputs on its test examples are exactly what the run's evaluation scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA
from typer.testing import CliRunner

from pf2lora.cli import app

pytestmark = pytest.mark.skipif(not (DATA / "glue" / "SST-2").is_dir(), reason="needs ../shared/data")


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def sets(*items: str) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def final_eval(run_dir: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    last = max(r["round"] for r in evals)
    return {r["client"]: r for r in evals if r["round"] == last}


@pytest.mark.parametrize(
    "algorithm, overrides",
    [("pf2lora", []), ("feddpa", ["algorithms.feddpa.dynamic_weighting=true", "algorithms.feddpa.instances=3"])],
    ids=["pf2lora", "feddpa-dynamic"],
)
def test_predictions_reproduce_the_evaluated_accuracy(
    tiny_config: Path, tmp_path: Path, algorithm: str, overrides: list[str]
) -> None:
    run_dir = tmp_path / "run"
    extra = sets("federation.rounds=2", f"algorithm={algorithm}", *overrides)
    code, output = invoke("run", str(tiny_config), "--out", str(run_dir), *extra)
    assert code == 0, output
    scored = final_eval(run_dir)
    for split, key in (("own", "accuracy"), ("global", "global_accuracy")):
        out = tmp_path / f"{split}.jsonl"
        code, output = invoke("predict", str(run_dir), "--out", str(out), "--split", split)
        assert code == 0, output
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert {r["client"] for r in records} == set(scored)
        for cid, row in scored.items():
            mine = [r for r in records if r["client"] == cid]
            assert all(r["split"] == split and r["input"] for r in mine)
            assert {r["label"] for r in mine} <= {"negative", "positive"}
            hits = sum(r["prediction"] == r["label"] for r in mine)
            assert 100.0 * hits / len(mine) == pytest.approx(row[key], abs=1e-9)
            # the per-example losses average to the evaluated loss: the same personalized (and mixed) model
            loss = sum(r["loss"] for r in mine) / len(mine)
            assert loss == pytest.approx(row[key.replace("accuracy", "eval_loss")], rel=1e-6)


def test_predict_input_errors(tiny_config: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert invoke("run", str(tiny_config), "--out", str(run_dir), "--set", "federation.rounds=1")[0] == 0
    for args, needle in (
        (["--client", "7"], "--client 7"),
        (["--split", "test"], "--split test"),
        (["--out", str(tmp_path)], "is a folder"),
    ):
        out = ["--out", str(tmp_path / "p.jsonl")] if "--out" not in args else []
        code, output = invoke("predict", str(run_dir), *out, *args)
        assert code == 2 and output.startswith("error:") and needle in output, output
    bare = tmp_path / "bare"
    assert (
        invoke("run", str(tiny_config), "--out", str(bare), *sets("federation.rounds=1", "data.global_split=null"))[0]
        == 0
    )
    code, output = invoke("predict", str(bare), "--out", str(tmp_path / "p.jsonl"), "--split", "global")
    assert code == 2 and output.startswith("error:") and "no shared held-out set" in output, output
    code, output = invoke("predict", str(tmp_path), "--out", str(tmp_path / "p.jsonl"))
    assert code != 0 and "not a pf2lora run directory" in output
    assert not (tmp_path / "p.jsonl").exists()
