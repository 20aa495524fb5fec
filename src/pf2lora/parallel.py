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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pf2lora.config import ExperimentConfig, dump_config
from pf2lora.errors import InputError


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
    fewer runs are left (a run's thread count follows ``--jobs``, not what remains). The first error stops every
    worker (checkpoints stay) and is raised here."""
    shares = cpu_shares(cpus, workers)
    ctx = mp.get_context("spawn")  # a fresh interpreter: no torch thread pool or CUDA context inherited
    queue = ctx.Queue()
    for share in shares:
        queue.put(share)
    results: dict[int, dict[str, Any]] = {}
    pool = ctx.Pool(processes=min(workers, len(jobs)), initializer=_pin, initargs=(queue,))
    try:
        for index, summary in pool.imap_unordered(_run, list(enumerate(jobs))):
            results[index] = summary
            on_done(jobs[index], summary)
        pool.close()
    finally:
        pool.terminate()  # on an error or Ctrl-C: stop the other runs now, at their last checkpoint
        pool.join()
    return [results[i] for i in range(len(jobs))]


def _pin(queue: Any) -> None:
    """Worker start: take one CPU share for the process's life, and as many torch threads."""
    share = queue.get()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, share)
    import torch

    torch.set_num_threads(len(share))
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


#: The last prepared data of this worker (runs of one seed share it), keyed by the config it came from.
_PREPARED: dict[str, Any] = {}


def _run(item: tuple[int, Job]) -> tuple[int, dict[str, Any]]:
    from pf2lora.experiment import prepare, run_algorithm

    index, job = item
    key = dump_config(job.cfg)
    if key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[key] = prepare(job.cfg)
    return index, run_algorithm(_PREPARED[key], job.algorithm, job.out)
