"""The CPU-sized configs (configs/mini/*.yaml) the README's results come from: each validates, and every algorithm it
compares runs one step with the config's own packaged model, task head and LoRA targets on a tiny data slice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pf2lora.algorithms import ALGORITHMS
from pf2lora.config import load_config
from pf2lora.experiment import prepare, run_algorithm

ROOT = Path(__file__).resolve().parents[1]
MINI = sorted((ROOT / "configs" / "mini").glob("*.yaml"))
DATA = ROOT.parent / "shared" / "data"

#: One round of one step on a few examples; everything else (model, head, targets, task) stays the config's.
TINY = [
    "data.max_examples=48",
    "data.global_examples=8",
    "partition.num_clients=2",
    "federation.rounds=1",
    "federation.local_steps=1",
    "federation.batch_size=4",
    "federation.eval_every=0",
    "task.eval_examples_per_client=2",
    "task.max_new_tokens=4",
    "task.num_beams=1",
]


def test_the_mini_configs_are_the_readmes():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(MINI) >= 8
    missing = [p.name for p in MINI if f"configs/mini/{p.name}" not in readme]
    assert not missing, f"README.md does not show how to run {missing}"


@pytest.mark.parametrize("path", MINI, ids=lambda p: p.stem)
def test_mini_config_validates(path):
    cfg = load_config(path)
    assert Path(cfg.data.data_dir) == DATA.resolve()
    assert cfg.algorithm in ALGORITHMS and len(set(cfg.compare)) == len(cfg.compare)
    for name in cfg.compare:
        ALGORITHMS[name].Config(**cfg.hyperparameters(name))


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("path", [p for p in MINI if load_config(p).model.name == "minilm"], ids=lambda p: p.stem)
def test_mini_config_runs_every_compared_algorithm(path, tmp_path):
    cfg = load_config(path, TINY)
    prepared = prepare(cfg)
    for name in cfg.compare:
        summary = run_algorithm(prepared, name, tmp_path / name)
        assert summary["metric"] in summary["final"]["mean"], name
        assert f"global_{summary['metric']}" in summary["final"]["mean"], name
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses = [r["train_loss"] for r in rows if r["kind"] == "train"]
        assert losses and all(math.isfinite(v) for v in losses), (name, losses)
