"""Start pf2lora's Flower app: a local deployment as OS processes (``--runtime flower``) or Flower's
Simulation Engine (``--runtime flower-sim``).

:class:`LocalFederation` starts one SuperLink and M SuperNodes on localhost (real HTTP transport between
separate processes, as across machines), each SuperNode with a pf2lora ClientApp worker
(:mod:`pf2lora.runtime.flower.worker`) so that a node loads its model once per run. It submits runs with
``flwr run``, waits for them, and stops every process it started, by process group, on success, failure,
Ctrl-C and SIGTERM. Everything Flower writes (its home, app bundles, logs) stays under the run's
``.flower/`` folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pf2lora import __version__
from pf2lora.errors import InputError
from pf2lora.io import write_json

#: Seconds between ``flwr ls`` calls while waiting for a run.
STATUS_EVERY = 10.0
#: Name of the connection to the local SuperLink in the launcher's ``FLWR_HOME/config.toml``.
CONNECTION = "pf2lora-local"

_APP_PYPROJECT = """\
# A Flower app bundle for pf2lora: the components live in the installed pf2lora package, so every machine
# (SuperLink and SuperNodes) needs `pip install "pf2lora[flower]"`; this file is all the bundle holds.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "pf2lora-app"
version = "{version}"
description = "Personalized federated fine-tuning with two-level LoRA (PF2LoRA) and its baselines"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "pf2lora"

[tool.flwr.app.components]
serverapp = "pf2lora.runtime.flower.app:server_app"
clientapp = "pf2lora.runtime.flower.app:client_app"

[tool.flwr.app.config]
# the experiment YAML and the output folder, both on the SuperLink's machine (override with --run-config)
config = "experiment.yaml"
out = "runs/flower"
# where nodes without a state-dir in their node config keep clients' private state ("": their cache)
node-state-dir = ""
"""


def write_app(directory: Path) -> Path:
    """Write the Flower app bundle directory (``flwr run DIRECTORY ...``); return it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(_APP_PYPROJECT.format(version=__version__), encoding="utf-8")
    return directory


def free_port() -> int:
    """A TCP port on localhost that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    """An executable of this environment (Flower starts its helpers by name, so PATH must hold them too)."""
    return str(Path(sys.executable).parent / name)


class LocalFederation:
    """One SuperLink and ``num_supernodes`` SuperNodes on localhost, node k holding client (partition) k."""

    def __init__(self, workdir: Path, num_supernodes: int, num_partitions: int, state_dir: Path) -> None:
        self.workdir, self.num_supernodes, self.num_partitions = workdir, num_supernodes, num_partitions
        self.state_dir = state_dir
        self.logs = workdir / "logs"
        self.home = workdir / "home"
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list[IO[bytes]] = []
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
        }

    # ---- processes ---------------------------------------------------------------------------------
    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        self._logs.append(log)
        proc = subprocess.Popen(
            command, env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        write_json(self.workdir / "pids.json", {k: p.pid for k, p in self.procs.items()})
        return proc

    def start(self) -> None:
        """Start the SuperLink, then every SuperNode; return once all of them are up."""
        become_subreaper()
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n',
            encoding="utf-8",
        )
        self._spawn(
            "superlink",
            [
                _bin("flower-superlink"),
                "--insecure",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
        )
        self._wait_http(f"http://127.0.0.1:{self.port}/health", 120.0, "superlink")
        for k in range(self.num_supernodes):
            self.start_supernode(k)

    def start_supernode(self, k: int) -> None:
        """Start SuperNode ``k`` (holding client k) and its ClientApp worker (again, after a crash)."""
        port = free_port()
        node_config = f"partition-id={k} num-partitions={self.num_partitions} state-dir='{self.state_dir}'"
        node = self._spawn(
            f"supernode-{k}",
            [
                sys.executable,
                "-m",
                "pf2lora.runtime.flower.supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(port),
                "--isolation",
                "process",
                "--node-config",
                node_config,
            ],
        )
        self._spawn(
            f"worker-{k}",
            [
                sys.executable,
                "-m",
                "pf2lora.runtime.flower.worker",
                "--runtime-api-address",
                f"127.0.0.1:{port}",
                "--parent-pid",
                str(node.pid),
            ],
        )

    def kill_supernode(self, k: int) -> None:
        """SIGKILL SuperNode ``k`` and its worker, as a crash would (for fault tests)."""
        for name in (f"supernode-{k}", f"worker-{k}"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self) -> None:
        """Stop every process started here (SIGTERM to each process group, SIGKILL after 5 s)."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # also what the group leader left behind
            proc.wait()
        self.procs.clear()
        reap_orphans()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_http(self, url: str, timeout: float, name: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited at start; see {self.logs / (name + '.log')}")
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(url, timeout=1).status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not start within {timeout:.0f}s; see {self.logs / (name + '.log')}")

    # ---- runs --------------------------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against the local SuperLink."""
        return subprocess.run(
            [_bin("flwr"), *args], env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=timeout
        )

    def submit(self, run_config: dict[str, str]) -> int:
        """Start a run of pf2lora's app with ``run_config`` overrides; return its run id."""
        app = write_app(self.workdir / "app")
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        done = self.flwr("run", str(app), CONNECTION, "--run-config", overrides, "--format", "json")
        if done.returncode != 0:
            raise RuntimeError(f"flwr run failed: {' '.join((done.stdout + done.stderr).split())[:500]}")
        return int(json.loads(done.stdout)["run-id"])

    def status(self, run_id: int) -> str:
        """The run's status as ``flwr ls`` gives it (e.g. ``running``, ``finished:completed``)."""
        done = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        with contextlib.suppress(ValueError, KeyError, IndexError):
            run = json.loads(done.stdout)["runs"][0]
            details = run.get("status-details", "N/A")
            return f"{run['status']}:{details}" if details not in ("N/A", "") else str(run["status"])
        return "unknown"

    def wait(
        self, run_id: int, finished: Callable[[], bool], tick: Callable[[], None] | None = None, poll: float = 0.2
    ) -> str:
        """Wait until ``finished()`` (the run's own sign, e.g. its summary file) or Flower reports the run ended;
        return Flower's status then. ``flwr ls`` costs a CLI start-up (about 1 s of CPU), so it is asked only
        every :data:`STATUS_EVERY` seconds; ``tick`` is called every ``poll`` seconds."""
        asked = time.monotonic()
        while not finished():
            if self.procs["superlink"].poll() is not None:
                raise RuntimeError(f"the SuperLink exited; see {self.logs / 'superlink.log'}")
            if time.monotonic() - asked > STATUS_EVERY:
                asked = time.monotonic()
                status = self.status(run_id)
                if status.startswith("finished"):
                    return status
            if tick is not None:
                tick()
            time.sleep(poll)
        return "finished"


def become_subreaper() -> None:
    """Adopt this process's orphaned descendants (Linux): Flower's SuperLink starts its executor in a session of
    its own, whose processes outlive their parents by a moment; adopted, :func:`reap_orphans` can end them."""
    if sys.platform != "linux":
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _children() -> list[int]:
    """PIDs whose parent is this process (Linux /proc; elsewhere none are known)."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == me:
                found.append(int(stat.parent.name))
    return found


def reap_orphans(timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every remaining child process (adopted orphans included) and reap them all."""
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while True:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        left = _children()
        if not left:
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.1)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises KeyboardInterrupt, so a terminated launcher still stops its processes."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def simulate(config: Path, out: Path, num_supernodes: int, cpus: int) -> None:
    """Run the experiment on Flower's Simulation Engine (Ray), ``num_supernodes`` virtual nodes, on the CPU."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.simulation import run_simulation

    from pf2lora.runtime.flower.app import client_app, make_server_app

    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False, "log_to_driver": False},
    }
    app = make_server_app(config, out, out / ".flower" / "nodes")
    run_simulation(server_app=app, client_app=client_app, num_supernodes=num_supernodes, backend_config=backend)


def check_supernodes(num_supernodes: int, num_clients: int) -> None:
    """Each SuperNode holds one client: their numbers must agree."""
    if num_supernodes != num_clients:
        raise InputError(
            f"--supernodes: each SuperNode holds one client, and the config has partition.num_clients = "
            f"{num_clients}; use --supernodes {num_clients}"
        )
