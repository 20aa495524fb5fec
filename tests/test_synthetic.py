"""The synthetic rank-learning study, end to end, and its command line."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from pf2lora.cli import app
from pf2lora.synthetic import SyntheticConfig, make_clients, orthogonal_init, run_study


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shared_ground_truth_reproduces_the_paper_qualitatively():
    """Full 2000-step study (≈12 s): the issue's acceptance figures for seed 0."""
    _, summary = run_study(SyntheticConfig(seed=0))
    final = {(r["algorithm"], r["client"]): r for r in summary}
    for cid in ("1", "2"):
        pf = final[("pf2lora", cid)]
        assert pf["test_over_floor"] < 1.5, pf
        assert pf["distance"] < 0.25, pf
        assert abs(pf["effective_rank"] - pf["true_effective_rank"]) <= 1, pf
    het1 = final[("hetlora", "1")]
    assert het1["test_over_floor"] >= 10 and het1["adapter_rank"] <= 2


def test_independent_ground_truth_cannot_reach_the_floor():
    """W_1* − W_2* has rank 7 > r + r̃ ... no common rank-4 plus private rank-2 split fits both."""
    cfg = SyntheticConfig(seed=0, ground_truth="independent", steps=600)
    w1, w2 = (c.test.w_star for c in make_clients(cfg))
    assert int(torch.linalg.matrix_rank(w1 - w2)) == 7
    _, summary = run_study(cfg)
    pf = [r for r in summary if r["algorithm"] == "pf2lora"]
    assert all(r["test_over_floor"] > 1.5 for r in pf)


def test_initial_pf2lora_adapters_are_mutually_orthogonal():
    common, private = orthogonal_init(0, 4, 2, 2)
    ab = common["proj.lora_B"] @ common["proj.lora_A"]
    for p in private:
        cd = p["proj.lora_D"] @ p["proj.lora_C"]
        assert torch.allclose(ab.T @ cd, torch.zeros(10, 10), atol=1e-4)  # column spaces
        assert torch.allclose(ab @ cd.T, torch.zeros(10, 10), atol=1e-4)  # row spaces
    trainable = sum(t.numel() for t in common.values()) * 2 + sum(t.numel() for p in private for t in p.values())
    assert trainable == 240  # the paper's budget, as HETLoRA's 2·(2·10)+2·(10·10)


def test_cli_writes_metrics_plot_and_table(tmp_path):
    out = tmp_path / "syn"
    result = CliRunner().invoke(app, ["synthetic", "--out", str(out), "--steps", "100", "--seed", "1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["algorithm"] for r in rows} == {"pf2lora", "hetlora"}
    assert {r["client"] for r in rows} == {"1", "2"}
    for key in ("algorithm", "client", "step", "train_loss", "test_loss", "distance", "effective_rank"):
        assert all(key in r for r in rows)
    assert sorted({r["step"] for r in rows}) == list(range(0, 101, 10))
    assert (out / "synthetic.png").read_bytes()[:4] == b"\x89PNG"
    assert "pf2lora" in result.output and "test/floor" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ground-truth", "mixed"], "--ground-truth"),
        (["--ranks", "3"], "--ranks"),
        (["--steps", "105"], "multiple of local_steps"),
        (["--ranks", "1,4"], "shared_rank"),
    ],
)
def test_cli_bad_input_is_a_one_line_error(tmp_path, args, message):
    result = CliRunner().invoke(app, ["synthetic", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
