"""Independent runs (one algorithm at one seed, one sweep point) side by side in worker processes, each pinned to
its own share of the CPUs: ``compare``/``sweep --jobs N``.

A run is a function of its config, seed and torch thread count (README, "Threads and float rounding"). Each
worker takes a fixed, disjoint CPU share for its life and runs with as many threads as the share has, so a run
gives exactly the numbers it gives alone in a process limited to that many CPUs (``--jobs 2`` on two CPUs: a
one-thread run's). Runs write the same folders as one after another would, with checkpoints, so ``--resume``
continues whatever an interruption left.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import signal
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pf2lora.config import ExperimentConfig, dump_config
from pf2lora.errors import InputError, WorkerDied


@dataclass(frozen=True)
class Job:
    """One run: its resolved config, the algorithm, the folder it writes and how progress names it."""

    cfg: ExperimentConfig
    algorithm: str
    out: Path
    label: str


def cpu_shares(cpus: Sequence[int], jobs: int) -> list[list[int]]:
    """``cpus`` split into ``jobs`` disjoint contiguous shares whose sizes differ by at most one."""
    if not 1 <= jobs <= len(cpus):
        raise InputError(f"--jobs {jobs}: must be between 1 and the {len(cpus)} CPUs this process may use")
    size, extra = divmod(len(cpus), jobs)
    shares, start = [], 0
    for j in range(jobs):
        end = start + size + (j < extra)
        shares.append(list(cpus[start:end]))
        start = end
    return shares


def run_jobs(
    jobs: Sequence[Job], workers: int, cpus: Sequence[int], on_done: Callable[[Job, dict[str, Any]], None]
) -> list[dict[str, Any]]:
    """Run ``jobs`` on ``workers`` processes pinned to shares of ``cpus``; call ``on_done`` as each finishes;
    return their summaries in the order of ``jobs``. The shares are those of ``workers`` processes even when
    fewer runs are left (a run's thread count follows ``--jobs``, not what remains). The first error, or a
    worker that dies (killed, out of memory), stops every worker (checkpoints stay) and is raised here."""
    shares = cpu_shares(cpus, workers)
    ctx = mp.get_context("spawn")  # a fresh interpreter: no torch thread pool or CUDA context inherited
    tasks, events = ctx.Queue(), ctx.Queue()
    count = min(workers, len(jobs))
    for index in [*range(len(jobs)), *[None] * count]:  # then one stop sign per worker
        tasks.put(index)
    procs = [ctx.Process(target=_worker, args=(w, shares[w], list(jobs), tasks, events)) for w in range(count)]
    for proc in procs:
        proc.start()
    running: dict[int, int] = {}  # worker -> the job it is on
    results: dict[int, dict[str, Any]] = {}
    try:
        while len(results) < len(jobs):
            try:
                kind, w, index, payload = events.get(timeout=1.0)
            except queue.Empty:  # every report read: a worker gone without one has lost its run
                for w, proc in enumerate(procs):
                    if not proc.is_alive() and (w in running or proc.exitcode != 0):
                        what = jobs[running[w]].label if w in running else "a worker"
                        raise WorkerDied(f"{what}: its worker process {_how_it_ended(proc.exitcode)}") from None
                continue
            if kind == "start":
                running[w] = index
            elif kind == "error":
                raise payload
            else:
                running.pop(w)
                results[index] = payload
                on_done(jobs[index], payload)
    finally:
        for proc in procs:  # on an error or Ctrl-C: stop the other runs now, at their last checkpoint
            if proc.is_alive():
                proc.terminate()
            proc.join()
    return [results[i] for i in range(len(jobs))]


def _how_it_ended(code: int | None) -> str:
    """A dead worker's exit code in words (a negative code is the signal that ended it)."""
    code = code or 0
    if code >= 0:
        return f"exited with code {code}"
    return f"was killed (signal {-code}" + (", out of memory?)" if code == -signal.SIGKILL else ")")


def _worker(w: int, share: list[int], jobs: list[Job], tasks: Any, events: Any) -> None:
    """One worker process: pin to ``share``, then run job after job from ``tasks``, reporting on ``events``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the workers
    _pin(share)
    while (index := tasks.get()) is not None:
        events.put(("start", w, index, None))
        try:
            summary = _run(jobs[index])
        except Exception as e:
            e.add_note(traceback.format_exc())  # shown with --debug
            try:
                pickle.dumps(e)
            except Exception:
                e = RuntimeError(f"{type(e).__name__}: {e}")
            events.put(("error", w, index, e))
            return
        events.put(("done", w, index, summary))


def _pin(share: list[int]) -> None:
    """Worker start: keep to one CPU share for the process's life, with as many torch threads."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, share)
    import torch  # after the affinity: OpenMP sizes its pool for this share

    from pf2lora.models import quiet_transformers

    torch.set_num_threads(len(share))
    quiet_transformers()


#: The last prepared data of this worker (runs of one seed share it), keyed by the config it came from.
_PREPARED: dict[str, Any] = {}


def _run(job: Job) -> dict[str, Any]:
    from pf2lora.experiment import prepare, run_algorithm

    key = dump_config(job.cfg)
    if key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[key] = prepare(job.cfg)
    return run_algorithm(_PREPARED[key], job.algorithm, job.out)
