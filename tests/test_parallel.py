"""`--jobs`: runs side by side in pinned worker processes give the numbers each gives alone on its CPU share."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA
from typer.testing import CliRunner

from pf2lora.cli import app, usable_cpus
from pf2lora.errors import InputError
from pf2lora.parallel import cpu_shares

TIMING = {"client_seconds", "seconds", "wall_seconds"}
needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(usable_cpus()) < 2 or not (DATA / "glue" / "SST-2").is_dir(),
    reason="needs two CPUs, CPU affinity and ../shared/data",
)


def on_cpus(cpus: list[int], *args: object) -> subprocess.CompletedProcess:
    """The CLI in a process limited to ``cpus`` (as ``taskset`` would)."""
    return subprocess.run(
        [sys.executable, "-m", "pf2lora.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )


def one_cpu_then_two_jobs(tmp_path: Path, *args: object) -> tuple[list[int], str]:
    """The command on one CPU into ``tmp_path/seq``, then with ``--jobs 2`` on two into ``tmp_path/par``: the
    two CPUs and the second's output."""
    cpus = usable_cpus()[:2]
    for where, on, extra in (("seq", cpus[:1], []), ("par", cpus, ["--jobs", "2"])):
        done = on_cpus(on, *args, "--out", tmp_path / where, *extra)
        assert done.returncode == 0, done.stderr + done.stdout
    return cpus, done.stdout


def worker_pids(parent: int) -> list[int]:
    """The ``--jobs`` workers of process ``parent``: its spawned interpreters, not multiprocessing's tracker."""
    pids = []
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            with contextlib.suppress(OSError):
                if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                    pids.append(int(child))
    return pids


def mid_run(out: Path) -> bool:
    """Whether some run under ``out`` has checkpointed a round and not yet finished."""
    return any(not (c.parent / "summary.json").exists() for c in out.glob("seed_*/*/checkpoint"))


def results(run_dir: Path) -> tuple[list[dict], dict]:
    """A run's metrics rows and summary without its timings."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]
    summary = {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items() if k not in TIMING}
    return rows, summary


def test_cpu_shares_are_disjoint_and_near_equal() -> None:
    assert cpu_shares([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert cpu_shares([4, 6, 9], 3) == [[4], [6], [9]]
    assert cpu_shares([0, 1], 1) == [[0, 1]]
    with pytest.raises(InputError, match="--jobs 3: must be between 1 and the 2 CPUs"):
        cpu_shares([0, 1], 3)
    with pytest.raises(InputError, match="--jobs 0"):
        cpu_shares([0], 0)


@needs_two_cpus
def test_an_input_error_in_a_worker_is_one_line_and_leaves_nothing(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad"  # a LoRA target the model lacks is found when a worker builds the model
    bad = ["--set", "lora.target_modules=[nosuch]", "--seeds", "0,1", "--jobs", "2"]
    done = on_cpus(usable_cpus()[:2], "compare", tiny_config, "--out", out, *bad)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("error: ") and "nosuch" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not out.exists() or not any(out.iterdir())  # a corrected rerun into --out needs no --overwrite


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--jobs", "999"], "--jobs 999: must be between 1 and the"), (["--jobs", "2", "--runtime", "flower"], "--jobs")],
)
def test_jobs_errors_are_one_line_before_anything_runs(tiny_config: Path, tmp_path: Path, extra, message) -> None:
    out = tmp_path / "bad"
    result = CliRunner().invoke(app, ["compare", str(tiny_config), "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


@needs_two_cpus
def test_jobs_give_the_numbers_of_each_run_alone_on_one_cpu(tiny_config: Path, tmp_path: Path) -> None:
    args = ["compare", tiny_config, "--seeds", "0,1"]  # the config's 6 rounds: time to kill a worker mid-run
    cpus, output = one_cpu_then_two_jobs(tmp_path, *args)
    assert f"4 runs, 2 at a time, each on one CPU share of {cpus[0]} | {cpus[1]}" in output
    assert output.count("] seed ") == 4  # one line per finished run
    for seed in (0, 1):
        for name in ("pf2lora", "hetlora"):
            rows, summary = results(tmp_path / "par" / f"seed_{seed}" / name)
            assert (rows, summary) == results(tmp_path / "seq" / f"seed_{seed}" / name), (seed, name)
            assert summary["environment"]["torch_threads"] == [1]  # each worker: its one CPU
    assert (tmp_path / "par" / "table.md").read_text() == (tmp_path / "seq" / "table.md").read_text()
    for seed in (0, 1):
        assert (tmp_path / "par" / f"seed_{seed}" / "compare.png").stat().st_size > 0

    # A worker killed mid-run (as the out-of-memory killer would): one line, the other worker stopped; --resume
    # finishes with the same numbers.
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "pf2lora.cli", *map(str, args), "--out", str(killed), "--jobs", "2"]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    try:
        deadline = time.monotonic() + 300
        # Kill when a run is past its first round and unfinished: two of the four runs are still to come, so the
        # kill always lands before the end (a run takes about a second here).
        while not mid_run(killed) or len(workers := worker_pids(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no worker started a run"
            time.sleep(0.01)
        os.kill(workers[0], signal.SIGKILL)
        output = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 1 and "worker process was killed (signal 9, out of memory?)" in output, output
    # The plan, one line per run that finished before the kill, the error: nothing else, never a traceback.
    plan, *finished, error = output.strip().splitlines()
    assert plan.startswith("4 runs, 2 at a time") and plan.endswith("its metrics.jsonl"), output
    assert len(finished) < 4 and all(line.startswith("[") and "] seed " in line for line in finished), output
    assert error.startswith("error: ") and "Traceback" not in output
    assert not Path(f"/proc/{workers[1]}").exists()  # the other worker was stopped and reaped
    again = on_cpus(cpus, *args, "--out", killed, "--jobs", "2", "--resume")
    assert again.returncode == 0, again.stderr + again.stdout
    for seed in (0, 1):
        for name in ("pf2lora", "hetlora"):
            assert results(killed / f"seed_{seed}" / name) == results(tmp_path / "seq" / f"seed_{seed}" / name)

    # sweep --jobs: a one-point grid at the config's own α over both seeds runs PF2LoRA's runs above again
    grid = ["--grid", "algorithms.pf2lora.lr_private=0.1", "--seeds", "0,1"]
    sweep = on_cpus(cpus, "sweep", tiny_config, *grid, "--out", tmp_path / "sweep", "--jobs", "2")
    assert sweep.returncode == 0, sweep.stderr + sweep.stdout
    assert "2 runs, 2 at a time" in sweep.stdout
    for seed in (0, 1):
        point = tmp_path / "sweep" / "algorithms.pf2lora.lr_private=0.1" / f"seed_{seed}"
        assert results(point) == results(tmp_path / "seq" / f"seed_{seed}" / "pf2lora"), seed
