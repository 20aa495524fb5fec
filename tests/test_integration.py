"""End to end with the packaged models (MiniLM, SmolLM2-135M) on tiny slices of the real datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pf2lora.cli import app
from pf2lora.config import ConfigError, load_config
from pf2lora.experiment import comparison_table, predict_run, prepare, run_algorithm
from pf2lora.metrics import generation_metrics, squad_em_f1

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")

TINY = [
    "data.max_examples=64",
    "partition.num_clients=2",
    "federation.rounds=1",
    "federation.local_steps=2",
    "federation.batch_size=4",
    "federation.eval_every=1",
    "data.global_examples=16",
]


def test_compare_all_algorithms_on_sst2(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", str(ROOT / "configs/mini/sst2.yaml"), "--out", str(out)]
    args += ["--algorithms", "pf2lora,pf2lora_nobo,homlora,hetlora,perfedavg,centralized"]
    for item in TINY:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = (out / "table.md").read_text()
    for method in ("PF2LoRA", "PF2LoRA w/o BO", "HOMLoRA", "HETLoRA", "Per-FedAvg-LoRA", "Centralized LoRA"):
        assert f"| {method} |" in table
    header = next(line for line in table.splitlines() if line.startswith("| Method"))
    assert header.endswith("| accuracy | balanced_accuracy | mcc | global_accuracy | global_mcc |")
    summary = json.loads((out / "pf2lora" / "summary.json").read_text())
    assert set(summary["final"]["clients"]) == {"0", "1"}
    assert 0.0 <= summary["final"]["mean"]["accuracy"] <= 100.0
    assert 0.0 <= summary["final"]["mean"]["global_accuracy"] <= 100.0  # on the shared dev sample
    assert summary["private_parameters_per_client"] > 0 and summary["communicated_parameters_per_round"] > 0
    homlora = json.loads((out / "homlora" / "summary.json").read_text())
    assert homlora["private_parameters_per_client"] == 0
    rows = [json.loads(line) for line in (out / "pf2lora" / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"train", "eval"}
    partition = json.loads((out / "pf2lora" / "partition.json").read_text())
    seen = [i for c in partition["clients"].values() for i in c["train"] + c["test"]]
    assert sorted(seen) == list(range(64))
    assert all("rank_mean" in r for r in rows if r["kind"] == "eval")
    for name in ("config.resolved.yaml", "curves.png", "ranks.png"):
        assert (out / "pf2lora" / name).exists()
    assert (out / "compare.png").exists()


def test_same_config_same_numbers(tmp_path):
    cfg = load_config(ROOT / "configs/mini/sst2.yaml", TINY)
    prepared = prepare(cfg)
    a = run_algorithm(prepared, "pf2lora", tmp_path / "a")
    b = run_algorithm(prepare(cfg), "pf2lora", tmp_path / "b")
    assert a["final"] == b["final"]


def test_squad_v1_minilm(tmp_path):
    cfg = load_config(ROOT / "configs/mini/squad.yaml", [*TINY, "data.max_examples=24", "task.max_length=128"])
    summary = run_algorithm(prepare(cfg), "pf2lora", tmp_path)
    assert {"exact_match", "f1", "global_exact_match", "global_f1"} <= set(summary["final"]["mean"])
    for cid, records in _predictions(tmp_path).items():  # `pf2lora predict` gives the answers that were scored
        scored = squad_em_f1({r["id"]: r["prediction"] for r in records}, {r["id"]: r["references"] for r in records})
        assert scored["f1"] == pytest.approx(summary["final"]["clients"][cid]["f1"], abs=1e-9)


def test_e2e_smollm2(tmp_path):
    overrides = [
        *TINY,
        "data.max_examples=16",
        "federation.local_steps=1",
        "task.eval_examples_per_client=2",
        "task.max_new_tokens=6",
        "task.num_beams=2",
        "federation.eval_every=0",  # one evaluation, after the round
    ]
    cfg = load_config(ROOT / "configs/mini/e2e.yaml", overrides)
    summary = run_algorithm(prepare(cfg), "pf2lora", tmp_path)
    assert {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr", "TER"} <= set(summary["final"]["mean"])
    table = comparison_table(cfg, {0: [summary]})  # it says how many inputs were scored: beam search caps them
    assert "own test split (its first 2 inputs)" in table and "(2 examples at most, from the `dev` split)" in table
    header = next(line for line in table.splitlines() if line.startswith("| Method"))
    assert "| BLEU |" in header and header.endswith("| global_BLEU | global_METEOR | global_CIDEr |"), header
    for cid, records in _predictions(tmp_path).items():  # `pf2lora predict` gives the sentences that were scored
        bleu = generation_metrics([r["prediction"] for r in records], [r["references"] for r in records])["BLEU"]
        assert bleu == pytest.approx(summary["final"]["clients"][cid]["BLEU"], abs=1e-9)


def _predictions(run_dir: Path) -> dict[str, list[dict]]:
    """``predict_run`` of a finished run: its records per client (own test split)."""
    assert predict_run(run_dir, run_dir / "predictions.jsonl") > 0
    by: dict[str, list[dict]] = {}
    for line in (run_dir / "predictions.jsonl").read_text().splitlines():
        r = json.loads(line)
        by.setdefault(r["client"], []).append(r)
    return by


def test_missing_data_file_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(
        app, ["run", str(ROOT / "configs/mini/sst2.yaml"), "--out", str(tmp_path), "--set", f"data.data_dir={tmp_path}"]
    )
    assert result.exit_code == 2
    assert "train.tsv" in result.output and str(tmp_path) in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_config_typo_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("federation:\n  round: 3\n")
    with pytest.raises(ConfigError, match=r"federation\.round: unknown key"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"algorithms\.pf2lora\.lr_privat"):
        load_config(ROOT / "configs/mini/sst2.yaml", ["algorithms.pf2lora.lr_privat=0.1"])
