"""The Flower runtimes give the in-process numbers, send only what algorithms declare, and survive crashes.

- Every algorithm through the real ServerApp logic and ClientApp handlers over a loopback grid (no network,
  every client→server message recorded and inspected), against the in-process runtime.
- Real processes on localhost (a SuperLink and a SuperNode per client): a compare whose SuperLink is killed
  with SIGKILL mid-run, resumed with ``--resume``; a SuperNode killed mid-round and restarted.
- Flower's Simulation Engine (Ray).
Every test that starts processes stops them all, and checks that none is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA

flwr = pytest.importorskip("flwr", reason="the flower extra is not installed")

from flower_loopback import LoopbackGrid  # noqa: E402

from pf2lora.algorithms import ALGORITHMS, make_algorithm  # noqa: E402
from pf2lora.config import dump_config, load_config  # noqa: E402
from pf2lora.experiment import prepare, run_algorithm  # noqa: E402
from pf2lora.federation import PrivacyError  # noqa: E402
from pf2lora.runtime.flower import app as flower_app  # noqa: E402
from pf2lora.runtime.flower.messages import from_record  # noqa: E402

pytestmark = pytest.mark.skipif(not (DATA / "glue" / "SST-2").is_dir(), reason="needs ../shared/data")

TIMING = {"client_seconds", "seconds", "wall_seconds"}
FEDERATED = [name for name, cls in ALGORITHMS.items() if not cls.pools_client_data]
#: What a node may say about itself besides its upload and metrics (numbers, never data or tensors).
NODE_KEYS = {
    *("partition-id", "private-parameters", "trainable-parameters", "num-train", "num-labels", "num-examples"),
    "seconds",
}


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def summary(run_dir: Path) -> dict:
    """The run's results: its timings and environment (the server's thread count, not the nodes') left out."""
    saved = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in saved.items() if k not in TIMING | {"environment"}}


@pytest.fixture(scope="module")
def fl_config(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model on SST-2 with 3 clients, 2 rounds of 2 local steps, evaluated every round."""
    tree = yaml.safe_load(tiny_config.read_text())
    tree.update(name="flower-test", compare=["hetlora", "pf2lora"])
    tree["partition"] = {"num_clients": 3}
    tree["federation"] = {"rounds": 2, "local_steps": 2, "batch_size": 8, "eval_every": 1}
    tree.setdefault("algorithms", {})["fdlora"] = {"fusion_budget": 3, "fusion_batches": 1}
    path = tmp_path_factory.mktemp("flower") / "fl.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def inprocess(fl_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """In-process runs of every federated algorithm (the reference), one folder each."""
    root = tmp_path_factory.mktemp("inprocess")
    prepared = prepare(load_config(fl_config))
    for name in FEDERATED:
        run_algorithm(prepared, name, root / name)
    return root


@pytest.fixture(scope="module")
def inprocess_cli(fl_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same runs by ``pf2lora compare`` in a fresh process: the reference of runs in other processes.

    After the whole suite, runs inside the pytest process gave an ``eval_loss`` 6e-8 away from those of fresh
    processes (not understood; see the Flower session note), so each runtime is compared with a reference
    computed in the same kind of process.
    """
    root = tmp_path_factory.mktemp("inprocess-cli") / "runs"
    done = subprocess.run(
        cli("compare", str(fl_config), "--out", str(root), "--algorithms", "pf2lora,hetlora"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def loopback(fl_config: Path, out: Path, algorithm: str, *sets: str) -> LoopbackGrid:
    """Run ``algorithm`` through the ServerApp and three nodes' ClientApp over a loopback grid into ``out``."""
    cfg = load_config(fl_config, [f"algorithm={algorithm}", *sets])
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    nodes = [{"partition-id": k, "num-partitions": 3, "state-dir": str(out / ".flower" / "nodes")} for k in range(3)]
    grid = LoopbackGrid(flower_app.client_app, nodes)
    flower_app._serve(grid, out / "config.yaml", out, "")
    return grid


@pytest.mark.parametrize("algorithm", FEDERATED)
def test_flower_app_gives_inprocess_numbers_and_sends_only_what_is_declared(
    fl_config: Path, inprocess: Path, tmp_path: Path, algorithm: str
) -> None:
    grid = loopback(fl_config, tmp_path / algorithm, algorithm)
    assert rows(tmp_path / algorithm) == rows(inprocess / algorithm)
    assert summary(tmp_path / algorithm) == summary(inprocess / algorithm)

    # every client→server message: only the declared upload, declared metrics, and numbers about the node
    alg = make_algorithm(algorithm, load_config(fl_config).hyperparameters(algorithm))
    clients = {k[1]: c for k, c in flower_app._CLIENTS.items()}
    communicated = set(alg.communicated(clients[0].sim.model))
    private = set(alg.private(clients[0].sim.model))
    task_metrics = set(json.loads((tmp_path / algorithm / "summary.json").read_text())["final"]["mean"])
    kinds = {"query": {"node"}, "train": {"upload", "metrics", "node"}, "evaluate": {"metrics", "node"}}
    seen = set()
    for reply in grid.replies:
        kind = reply.metadata.message_type
        seen.add(kind)
        assert not reply.has_error()
        content = reply.content
        assert set(content.keys()) == kinds[kind]
        node = content["node"]
        assert set(node) <= NODE_KEYS and all(isinstance(v, int | float) for v in node.values())
        if kind == "train":
            upload = content["upload"]
            assert set(upload) == communicated and not set(upload) & private
            assert set(content["metrics"]) <= set(alg.metric_names)
            mine = clients[int(node["partition-id"])].sim.states[str(node["partition-id"])].private
            if algorithm == "fdlora":  # by design its stage-1 personal LoRA starts the global one (round 1)
                continue
            for array in upload.values():
                values = torch.from_numpy(array.numpy().copy())
                assert not any(t.shape == values.shape and torch.equal(t.cpu(), values) for t in mine.values())
        if kind == "evaluate":
            assert set(content["metrics"]) <= task_metrics
    assert seen == set(kinds)
    # each node kept its client's private state on its disk, one file per round it trained
    for k in range(3):
        assert sorted(
            p.name for p in (tmp_path / algorithm / ".flower" / "nodes").glob(f"*/client_{k}/round_*.pt")
        ) == [
            "round_1.pt",
            "round_2.pt",
        ]


@pytest.mark.parametrize("algorithm", ["pf2lora", "hetlora"])
def test_a_flower_run_exports_the_inprocess_peft_adapters(
    fl_config: Path, inprocess: Path, tmp_path: Path, algorithm: str
) -> None:
    from pf2lora.experiment import export_run

    loopback(fl_config, tmp_path / "run", algorithm)
    flower = export_run(tmp_path / "run", tmp_path / "flower")
    local = export_run(inprocess / algorithm, tmp_path / "local")
    for a, b in zip(flower, local, strict=True):
        assert (a / "adapter_model.safetensors").read_bytes() == (b / "adapter_model.safetensors").read_bytes()


def test_a_node_refuses_to_send_a_private_tensor(
    fl_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Leaky(ALGORITHMS["pf2lora"]):  # type: ignore[misc, valid-type]
        name = "leaky"

        def local_update(self, model, received, state, data, steps):  # type: ignore[no-untyped-def]
            upload, metrics = super().local_update(model, received, state, data, steps)
            return {**upload, **state.private}, metrics

    monkeypatch.setitem(ALGORITHMS, "leaky", Leaky)
    with pytest.raises(PrivacyError, match="private tensor"):
        loopback(fl_config, tmp_path / "leaky", "leaky")
    assert "PrivacyError" in (tmp_path / "leaky" / flower_app.SERVER_ERROR).read_text()


def test_a_round_goes_on_without_a_silent_node_and_weights_renormalise(fl_config: Path, tmp_path: Path) -> None:
    def drop(grid: LoopbackGrid, rnd: int, pid: int):  # type: ignore[no-untyped-def]
        def on_reply(reply):  # type: ignore[no-untyped-def]
            node = reply.content["node"]
            lost = reply.metadata.message_type == "train" and reply.metadata.group_id == f"train-{rnd}"
            return None if lost and node["partition-id"] == pid else reply

        grid.on_reply = on_reply

    out = tmp_path / "faulty"
    cfg = load_config(fl_config, ["algorithm=homlora", "flower.round_timeout=0.5"])
    out.mkdir()
    (out / "config.yaml").write_text(dump_config(cfg))
    nodes = [{"partition-id": k, "num-partitions": 3, "state-dir": str(out / "nodes")} for k in range(3)]
    grid = LoopbackGrid(flower_app.client_app, nodes)
    drop(grid, 2, 1)
    flower_app._serve(grid, out / "config.yaml", out, "")
    train = [r for r in rows(out) if r["kind"] == "train"]
    assert [r["client"] for r in train if r["round"] == 2] == ["0", "2"]
    # HOMLoRA's global after round 2 is the mean of the two uploads that arrived, weights 1/2 each
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state["history"]["rounds"][1]["clients"] == 2

    strict = tmp_path / "strict"
    cfg = load_config(fl_config, ["algorithm=homlora", "flower.round_timeout=0.5", "flower.min_clients=3"])
    strict.mkdir()
    (strict / "config.yaml").write_text(dump_config(cfg))
    nodes = [{"partition-id": k, "num-partitions": 3, "state-dir": str(strict / "nodes")} for k in range(3)]
    grid = LoopbackGrid(flower_app.client_app, nodes)
    drop(grid, 2, 1)
    from pf2lora.errors import FederationError

    with pytest.raises(FederationError, match="round 2: 2 of 3 sampled clients replied"):
        flower_app._serve(grid, strict / "config.yaml", strict, "")
    assert torch.load(strict / "checkpoint" / "state.pt", weights_only=True)["round"] == 1  # kept for --resume


def test_central_dp_clips_each_update_on_its_node_and_noises_the_mean(fl_config: Path, tmp_path: Path) -> None:
    norm, z = 0.005, 0.5
    dp = f"flower.dp={{noise_multiplier: {z}, clipping_norm: {norm}}}"
    grid = loopback(fl_config, tmp_path / "dp", "homlora", dp)
    clipped = 0
    for reply in grid.replies:
        if reply.metadata.message_type != "train":
            continue
        sent = from_record(grid.sent[reply.metadata.reply_to_message_id].content["global"])
        upload = from_record(reply.content["upload"])
        update = torch.sqrt(sum(((upload[k].double() - sent[k].double()) ** 2).sum() for k in sent))
        assert update <= norm * (1 + 1e-5)
        clipped += bool(update > norm * (1 - 1e-5))
    assert clipped  # the norm is small enough that updates were clipped
    # the server's global is the mean of the clipped uploads plus Gaussian noise of std z·C/n
    state = torch.load(tmp_path / "dp" / "checkpoint" / "state.pt", weights_only=True)
    last = [from_record(r.content["upload"]) for r in grid.replies if r.metadata.group_id == "train-2"]
    mean = {k: sum(u[k] for u in last) / len(last) for k in last[0]}
    noise = torch.cat([(state["global"][k] - mean[k]).flatten() for k in mean])
    assert abs(float(noise.std()) / (z * norm / 3) - 1) < 0.15
    eps = [r["dp_epsilon"] for r in state["history"]["rounds"]]
    assert 0 < eps[0] < eps[1]
    assert json.loads((tmp_path / "dp" / "summary.json").read_text())["privacy"]["dp_epsilon"] == eps[1]
    again = tmp_path / "again"
    loopback(fl_config, again, "homlora", dp)
    assert rows(again) == rows(tmp_path / "dp")  # the noise is a function of (seed, round)


@pytest.mark.parametrize("aggregation", ["uniform", "num_examples"])
def test_secagg_plus_gives_the_plain_mean_within_its_quantization_error(
    fl_config: Path, tmp_path: Path, aggregation: str
) -> None:
    sets = ["federation.rounds=1", f"federation.aggregation={aggregation}"]
    secagg = "flower.secagg={clipping_range: 1.0, quantization_range: 65536}"
    grid = loopback(fl_config, tmp_path / "secure", "homlora", secagg, *sets)
    loopback(fl_config, tmp_path / "plain", "homlora", *sets)
    # no reply carries a tensor: the uploads left their nodes masked (SecAgg+'s four stages, 3 nodes each)
    train = [r for r in grid.replies if r.metadata.message_type == "train"]
    assert len(train) == 4 * 3 and not any(len(a) for r in train for a in r.content.array_records.values())
    secure = torch.load(tmp_path / "secure" / "checkpoint" / "state.pt", weights_only=True)["global"]
    plain = torch.load(tmp_path / "plain" / "checkpoint" / "state.pt", weights_only=True)["global"]
    # the error of the mean: under one quantization step (2C/Q) per client, over the weights' sum (≥ 1 client)
    step = 2 * 1.0 / 65536
    diff = max(float((secure[k].double() - plain[k].double()).abs().max()) for k in plain)
    assert 0 < diff < (step if aggregation == "uniform" else 3 * step)
    assert next(r for r in rows(tmp_path / "secure") if r["kind"] == "train")["upload_bytes"] == 8 * (
        sum(t.numel() for t in plain.values()) + 1
    )
    if aggregation == "uniform":  # the stochastic rounding is seeded: a run stays a function of its config
        loopback(fl_config, tmp_path / "again", "homlora", secagg, *sets)
        again = torch.load(tmp_path / "again" / "checkpoint" / "state.pt", weights_only=True)["global"]
        assert all(torch.equal(again[k], secure[k]) for k in secure)


def test_secagg_plus_refuses_a_value_it_would_clip(fl_config: Path, tmp_path: Path) -> None:
    from pf2lora.errors import InputError

    secagg = "flower.secagg={clipping_range: 1.0e-6}"
    with pytest.raises(InputError, match=r"flower\.secagg\.clipping_range: .* outside"):
        loopback(fl_config, tmp_path / "clip", "homlora", secagg, "federation.rounds=1")


@pytest.mark.parametrize(
    ("algorithm", "option", "sets", "message"),
    [
        ("hetlora", "dp", [], "flower.dp: hetlora aggregates by its own rule"),
        ("homlora", "dp", ["federation.aggregation=num_examples"], "needs federation.aggregation: uniform"),
        ("hetlora", "secagg", [], "flower.secagg: hetlora aggregates by its own rule"),
    ],
)
def test_privacy_options_refuse_what_they_cannot_compute(
    fl_config: Path, algorithm: str, option: str, sets: list[str], message: str
) -> None:
    from pf2lora.errors import InputError
    from pf2lora.runtime.flower.server import FlowerFederation

    value = "{noise_multiplier: 1.0, clipping_norm: 1.0}" if option == "dp" else "{}"
    cfg = load_config(fl_config, [f"algorithm={algorithm}", f"flower.{option}={value}", *sets])
    with pytest.raises(InputError, match=message):
        FlowerFederation(LoopbackGrid(flower_app.client_app, []), cfg)


# ---- real processes ------------------------------------------------------------------------------
def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pf2lora.cli", *args]


def flower_processes() -> list[str]:
    """Flower and pf2lora-node processes on this machine (to prove a test left none behind)."""
    names = ("flower-superlink", "flower-superexec", "flwr-", "pf2lora.runtime.flower", "raylet", "gcs_server")
    found = []
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = proc.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(n in command for n in names):
            found.append(command)
    return found


@pytest.fixture
def no_leftovers():  # type: ignore[no-untyped-def]
    before = set(flower_processes())
    yield
    deadline = time.monotonic() + 15
    while (left := set(flower_processes()) - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes left behind: {sorted(left)}"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_local_federation_superlink_killed_then_resumed_gives_inprocess_numbers(
    fl_config: Path, inprocess_cli: Path, tmp_path: Path, no_leftovers: None
) -> None:
    out = tmp_path / "flower"
    args = ["run", str(fl_config), "--out", str(out), "--runtime", "flower", "--supernodes", "3"]
    proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # kill the SuperLink once round 1 is checkpointed (round 2 is then under way)
        deadline = time.monotonic() + 400
        while not (out / "checkpoint" / "state.pt").is_file():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pids = json.loads((out / ".flower" / "pids.json").read_text())
        os.kill(pids["superlink"], signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and "SuperLink exited" in output, output
    assert not (out / "summary.json").is_file()

    resumed = subprocess.run(cli(*args, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    logs = "".join(p.read_text() for p in (out / ".flower" / "logs").glob("worker-*.log"))
    assert "continues from its private state after round 1" in logs
    assert rows(out) == rows(inprocess_cli / "pf2lora")
    assert summary(out) == summary(inprocess_cli / "pf2lora")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_supernode_killed_mid_round_rejoins_with_its_private_state(
    fl_config: Path, tmp_path: Path, no_leftovers: None
) -> None:
    from pf2lora.runtime.flower.launch import LocalFederation

    out = tmp_path / "kill9"
    sets = ["algorithm=pf2lora", "federation.rounds=3", "federation.local_steps=10", "federation.eval_every=0"]
    sets.append("flower.round_timeout=15")  # under CI load a live client's round took over 6 s
    cfg = load_config(fl_config, sets)
    out.mkdir()
    (out / "config.yaml").write_text(dump_config(cfg))
    with LocalFederation(out / ".flower", 3, 3, out / ".flower" / "nodes") as fed:
        run_id = fed.submit({"config": str(out / "config.yaml"), "out": str(out)})
        deadline = time.monotonic() + 300
        while not any(r["round"] == 1 for r in (rows(out) if (out / "metrics.jsonl").is_file() else [])):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        fed.kill_supernode(2)  # round 2's training is under way
        time.sleep(2)
        fed.start_supernode(2)
        status = fed.wait(run_id, lambda: (out / "summary.json").is_file() or (out / "server-error.txt").is_file())
    assert not (out / "server-error.txt").is_file(), (out / "server-error.txt").read_text()
    assert status.startswith("finished")
    train = [r for r in rows(out) if r["kind"] == "train"]
    assert [r["client"] for r in train if r["round"] == 2] == ["0", "1"]
    assert [r["client"] for r in train if r["round"] == 3] == ["0", "1", "2"]
    log = (out / ".flower" / "logs" / "worker-2.log").read_text()
    assert "client 2 continues from its private state after round 1" in log
    assert json.loads((out / "summary.json").read_text())["rounds"] == 3


def test_flower_simulation_engine_gives_inprocess_numbers(
    fl_config: Path, inprocess_cli: Path, tmp_path: Path, no_leftovers: None
) -> None:
    out = tmp_path / "sim"
    done = subprocess.run(
        cli("run", str(fl_config), "--out", str(out), "--runtime", "flower-sim", "--set", "algorithm=hetlora"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows(out) == rows(inprocess_cli / "hetlora")
    assert summary(out) == summary(inprocess_cli / "hetlora")
    assert len(list((out / ".flower" / "nodes").glob("*/client_*/round_2.pt"))) == 3  # state kept with the run


def test_runtime_input_errors_are_one_line(fl_config: Path, tmp_path: Path) -> None:
    def run(out: str, *args: str) -> subprocess.CompletedProcess:
        command = cli("run", str(fl_config), "--out", str(tmp_path / out), *args)
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    from typer.testing import CliRunner

    from pf2lora.cli import app

    def invoke(out: str, *args: str):  # type: ignore[no-untyped-def]  # errors found before any process starts
        return CliRunner().invoke(app, ["run", str(fl_config), "--out", str(tmp_path / out), *args])

    bad = invoke("a", "--runtime", "flower", "--supernodes", "2")
    assert bad.exit_code == 2 and "--supernodes: each SuperNode holds one client" in bad.output
    pooled = run("b", "--runtime", "flower", "--algorithm", "centralized")
    assert pooled.returncode == 2 and "run it with --runtime inprocess" in pooled.stdout
    wrong = invoke("c", "--runtime", "ray")
    assert wrong.exit_code == 2 and "--runtime must be inprocess, flower or flower-sim" in wrong.output
