"""``pf2lora run/compare --runtime flower|flower-sim``: each algorithm as a Flower run, the same files as in-process.

Every algorithm gets its folder's ``config.resolved.yaml`` (the experiment with ``algorithm`` set to it),
``partition.json``, and a Flower run whose ServerApp writes ``metrics.jsonl``, checkpoints, ``summary.json``
and plots there. With ``flower``, one local federation (a SuperLink and a SuperNode per client) serves all
of a command's algorithms, one run after another, and is stopped at the end whatever happens. Clients'
private state lives in ``.flower/nodes`` of the output folder, so ``--resume`` finds it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pf2lora.algorithms import ALGORITHMS
from pf2lora.config import dump_config
from pf2lora.errors import DivergenceError, FederationError, InputError
from pf2lora.federation import PrivacyError
from pf2lora.io import write_json, write_text
from pf2lora.runtime.flower.app import SERVER_ERROR
from pf2lora.runtime.flower.launch import LocalFederation, check_supernodes, sigterm_as_interrupt, simulate

#: Server error kinds re-raised here as the errors the CLI reports (InputError's subclasses by name).
_ERRORS: dict[str, type[Exception]] = {
    "InputError": InputError,
    "ConfigError": InputError,
    "DataError": InputError,
    "OutputError": InputError,
    "DivergenceError": DivergenceError,
    "PrivacyError": PrivacyError,
    "FederationError": FederationError,
}


def _raise_server_error(run_dir: Path, status: str) -> None:
    """Raise what the ServerApp of ``run_dir`` failed with (its one-line reason), if it failed."""
    path = run_dir / SERVER_ERROR
    if path.is_file():
        kind, _, text = path.read_text(encoding="utf-8").strip().partition(": ")
        if kind == "KeyboardInterrupt":
            raise KeyboardInterrupt
        raise _ERRORS.get(kind, RuntimeError)(text if kind in _ERRORS else f"{kind}: {text}")
    if not (run_dir / "summary.json").is_file():
        raise RuntimeError(f"the Flower run ended ({status}) without a summary; see {run_dir / '.flower' / 'logs'}")


def _finished(run_dir: Path) -> bool:
    """Whether the ServerApp of ``run_dir`` has ended (its summary, or the reason it failed, is written)."""
    return (run_dir / "summary.json").is_file() or (run_dir / SERVER_ERROR).is_file()


def _progress(run_dir: Path, name: str, say: Callable[[str], None]) -> Callable[[], None]:
    """A ``tick`` that prints one line per round as the ServerApp appends it to ``metrics.jsonl``."""
    shown = [0]

    def tick() -> None:
        path = run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for rnd in sorted({r["round"] for r in rows if r["kind"] == "train" and r["round"] > shown[0]}):
            losses = [r["train_loss"] for r in rows if r["round"] == rnd and "train_loss" in r]
            mean = f", train_loss {sum(losses) / len(losses):.4f}" if losses else ""
            dp = next((r for r in rows if r["round"] == rnd and "dp_epsilon" in r), None)
            spent = f", (ε, δ) = ({dp['dp_epsilon']:.3f}, {dp['dp_delta']:g})" if dp else ""
            say(f"{name} round {rnd}{mean}{spent}")
            shown[0] = rnd

    return tick


@contextlib.contextmanager
def _federation(runtime: str, out: Path, supernodes: int, clients: int) -> Iterator[LocalFederation | None]:
    if runtime != "flower":
        yield None
        return
    with (
        sigterm_as_interrupt(),
        LocalFederation(out / ".flower", supernodes, clients, out / ".flower" / "nodes") as fed,
    ):
        yield fed


def run_flower(
    prepared: Any,
    names: Sequence[str],
    out: Path,
    resume: bool,
    runtime: str,
    supernodes: int | None,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Run each algorithm in ``names`` on Flower into ``out`` (or ``out/<name>`` for several); their summaries."""
    from pf2lora.cli import available_cpus
    from pf2lora.experiment import algorithm_dir, finished_run

    cfg = prepared.cfg
    clients = cfg.partition.num_clients
    check_supernodes(supernodes if supernodes is not None else clients, clients)
    for name in names:
        if ALGORITHMS[name].pools_client_data:
            raise InputError(
                f"algorithm: {name} pools every client's data in one place; run it with --runtime inprocess"
            )
    out = out.resolve()
    summaries: list[dict[str, Any]] = []
    pending = []
    for name in names:
        run_dir = algorithm_dir(out, names, name)
        if (done := finished_run(run_dir, resume, name, say)) is not None:
            summaries.append(done)
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.resolved.yaml", dump_config(cfg.model_copy(update={"algorithm": name})))
        write_json(run_dir / "partition.json", prepared.partition)
        pending.append((name, run_dir))
    if not pending:
        return summaries
    with _federation(runtime, out, clients, clients) as fed:
        for name, run_dir in pending:
            (run_dir / SERVER_ERROR).unlink(missing_ok=True)
            config = run_dir / "config.resolved.yaml"
            if fed is not None:
                run_id = fed.submit({"config": str(config), "out": str(run_dir)})
                tick = _progress(run_dir, name, say)
                status = fed.wait(run_id, lambda d=run_dir: _finished(d), tick)
                tick()
            else:
                status = "finished"
                simulate(config, run_dir, clients, available_cpus())
            _raise_server_error(run_dir, status)
            summaries.append(json.loads((run_dir / "summary.json").read_text(encoding="utf-8")))
    return summaries
