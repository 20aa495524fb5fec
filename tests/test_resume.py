"""Checkpoint and resume: a run killed with SIGKILL at a random moment and resumed ends with the same numbers.

Runs the real CLI in subprocesses on a tiny random BERT (saved as a local model folder) and a slice of SST-2.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA

TIMING = {"client_seconds", "seconds", "wall_seconds"}

pytestmark = pytest.mark.skipif(not (DATA / "glue" / "SST-2").is_dir(), reason="needs ../shared/data")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pf2lora.cli", *args]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=600)


def run_here(*args: str) -> tuple[int, str]:
    """The CLI in this process (exit code, output): for checks that need no separate process."""
    from typer.testing import CliRunner

    from pf2lora.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def summary(run_dir: Path) -> dict:
    return {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items() if k not in TIMING}


def kill_at_random(args: list[str], after: float) -> bool:
    """Start the CLI, SIGKILL it ``after`` seconds later; return whether it was still running."""
    proc = subprocess.Popen(cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=after)
        return False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


# `compare` only: `run` is the same code path (one algorithm through `_run_all`), and the gap test resumes `run`
@pytest.mark.parametrize("command", ["compare"])
def test_kill_9_then_resume_gives_the_same_numbers(tiny_config: Path, tmp_path: Path, command: str) -> None:
    ref = tmp_path / "uninterrupted"
    t0 = time.perf_counter()
    done = run_cli(command, str(tiny_config), "--out", str(ref))
    duration = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr + done.stdout
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    out = tmp_path / "killed"
    args = [command, str(tiny_config), "--out", str(out)]
    kills = 0
    for attempt in range(2):  # two kills at random moments, then resume to the end
        killed = kill_at_random(args + (["--resume"] if attempt else []), rng.uniform(0.2, 1.0) * duration)
        kills += killed
    final = run_cli(*args, "--resume")
    assert final.returncode == 0, f"seed {seed}: {final.stderr}{final.stdout}"
    names = ["pf2lora", "hetlora"] if command == "compare" else [""]
    for name in names:
        assert rows(out / name) == rows(ref / name), f"kill seed {seed}, {kills} kills"
        assert summary(out / name) == summary(ref / name), f"kill seed {seed}, {kills} kills"
    if command == "compare":
        assert (out / "table.md").read_text() == (ref / "table.md").read_text()


def test_resume_after_checkpoint_gap_and_output_rules(tiny_config: Path, tmp_path: Path) -> None:
    """With checkpoints every 4 rounds, a run stopped after round 5 redoes round 5 from round 4's state."""
    import torch

    from pf2lora import checkpoint

    sets = ["--set", "federation.checkpoint_every=4"]
    ref = tmp_path / "ref"
    assert run_here("run", str(tiny_config), "--out", str(ref), *sets)[0] == 0
    out = tmp_path / "cut"
    # A run that "crashed" after round 5: round 4's checkpoint and metrics rows through round 5.
    assert run_here("run", str(tiny_config), "--out", str(out), *sets, "--set", "federation.rounds=5")[0] == 0
    state = checkpoint.load(out)
    assert state is not None and state["round"] == 5
    four = run_here("run", str(tiny_config), "--out", str(tmp_path / "four"), *sets, "--set", "federation.rounds=4")
    assert four[0] == 0
    checkpoint.save(out, checkpoint.load(tmp_path / "four"))
    (out / "summary.json").unlink()
    (out / "config.resolved.yaml").write_text((ref / "config.resolved.yaml").read_text())
    assert torch.load(checkpoint.checkpoint_path(out), weights_only=True)["round"] == 4
    resumed = run_here("run", str(tiny_config), "--out", str(out), *sets, "--resume")
    assert resumed[0] == 0, resumed[1]
    assert rows(out) == rows(ref) and summary(out) == summary(ref)
    # Resumed with another thread count (their float sums differ), the run says it ran with both.
    checkpoint.save(out, {**checkpoint.load(tmp_path / "four"), "torch_threads": [99]})
    (out / "summary.json").unlink()
    assert run_here("run", str(tiny_config), "--out", str(out), *sets, "--resume")[0] == 0
    env = json.loads((out / "summary.json").read_text())["environment"]
    assert env["torch_threads"] == [torch.get_num_threads(), 99] and env["torch"] == torch.__version__
    assert env["cpu"] and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert json.loads((ref / "summary.json").read_text())["environment"]["torch_threads"] == [torch.get_num_threads()]

    code, output = run_here("run", str(tiny_config), "--out", str(out), *sets)
    assert code == 2 and output.count("\n") == 1 and "--resume" in output
    code, output = run_here("run", str(tiny_config), "--out", str(out), "--resume", "--set", "seed=1")
    assert code == 2 and "seed" in output and "federation.checkpoint_every" in output
    fresh = run_here("run", str(tiny_config), "--out", str(out), *sets, "--set", "federation.rounds=1", "--overwrite")
    assert fresh[0] == 0 and summary(out)["rounds"] == 1  # the earlier run replaced
    mode = (out / "summary.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("algorithm", ["pf2lora", "hetlora", "fedsa"])
def test_exported_client_adapters_load_in_plain_peft(tiny_config: Path, tmp_path: Path, algorithm: str) -> None:
    """`pf2lora export` of a finished run: PEFT reproduces each client's evaluated model to 1e-5."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from pf2lora import checkpoint
    from pf2lora.config import load_config
    from pf2lora.experiment import build_simulation, prepare

    run_dir, out = tmp_path / "run", tmp_path / "adapters"
    sets = ["--set", "federation.rounds=2", "--set", f"algorithm={algorithm}"]
    assert run_here("run", str(tiny_config), "--out", str(run_dir), *sets)[0] == 0
    done = run_here("export", str(run_dir), "--out", str(out))
    assert done[0] == 0, done[1]
    assert sorted(p.name for p in out.iterdir()) == ["client_0", "client_1"]

    cfg = load_config(run_dir / "config.resolved.yaml")
    prepared = prepare(cfg)
    sim = build_simulation(prepared, algorithm)
    sim.load_state_dict(checkpoint.load(run_dir))
    for client in prepared.clients:
        params = sim.evaluated_params(client)
        batch = prepared.task.collate(client.test[:8])
        with torch.no_grad():
            ours = sim.model.call(params, **batch).logits
            base = AutoModelForSequenceClassification.from_pretrained(cfg.model.name, num_labels=2)
            peft_model = PeftModel.from_pretrained(base, out / f"client_{client.cid}").eval()
            theirs = peft_model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)

    if algorithm != "pf2lora":
        return  # the --client rules are the same for every algorithm
    only = run_here("export", str(run_dir), "--out", str(tmp_path / "one"), "--client", "1")
    assert only[0] == 0 and [p.name for p in (tmp_path / "one").iterdir()] == ["client_1"]
    code, output = run_here("export", str(run_dir), "--out", str(tmp_path / "bad"), "--client", "7")
    assert code == 2 and output.startswith("error:") and "--client 7" in output
