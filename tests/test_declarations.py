"""Algorithms declare what they communicate, the runtime enforces it, and a new algorithm is one file + one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import DATA, bert_clients, tiny_bert
from typer.testing import CliRunner

from pf2lora.algorithms import ALGORITHMS, make_algorithm
from pf2lora.algorithms.base import ClientState, spec_of
from pf2lora.algorithms.fedsa import FedSA
from pf2lora.algorithms.homlora import HOMLoRA, HOMLoRAConfig
from pf2lora.cli import app
from pf2lora.errors import DivergenceError
from pf2lora.federation import FederationConfig, PrivacyError
from pf2lora.runtime.simulation import Simulation


def simulation(algorithm, r_private: int = 0, **fed) -> Simulation:
    config = FederationConfig(**{"rounds": 1, "local_steps": 1, "batch_size": 4, **fed})
    return Simulation(tiny_bert(r=4, r_private=r_private), algorithm, bert_clients(2, seed=100), config)


def test_fedsa_declares_a_shared_and_b_and_head_private():
    sim = simulation(FedSA())
    assert sim.communicated and all(n.endswith("lora_A") for n in sim.communicated)
    assert any(n.endswith("lora_B") for n in sim.private) and "classifier.weight" in sim.private
    sim.run()
    # the B's and heads moved apart on the two clients; the A's are one global value
    b0, b1 = (sim.states[c].private for c in ("0", "1"))
    assert any(not torch.equal(b0[k], b1[k]) for k in b0)
    assert set(sim.global_state) == set(sim.communicated)


class LeakyFedSA(FedSA):
    """Uploads its private B as well: the runtime must refuse it."""

    def local_update(self, model, received, state, data, steps):
        upload, metrics = super().local_update(model, received, state, data, steps)
        b = next(k for k in state.private if k.endswith("lora_B"))
        return {**upload, b: state.private[b]}, metrics


def test_a_fedsa_upload_of_b_is_refused():
    with pytest.raises(PrivacyError, match=r"fedsa: client 0, round 1: .*client-private tensor '.*lora_B'"):
        simulation(LeakyFedSA()).run()


def _tamper(change):
    class Tampered(HOMLoRA):
        def local_update(self, model, received, state, data, steps):
            upload, metrics = super().local_update(model, received, state, data, steps)
            return change(upload, metrics)

    return Tampered()


def _first_a(upload):
    return next(k for k in upload if k.endswith("lora_A"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda u, m: ({**u, _first_a(u): u[_first_a(u)][:2]}, m), "shape"),
        (lambda u, m: ({**u, _first_a(u): u[_first_a(u)].double()}, m), "dtype"),
        (lambda u, m: ({k: v for k, v in u.items() if k != _first_a(u)}, m), "lacks the declared tensor"),
        (lambda u, m: ({**u, "bert.pooler.dense.weight": torch.zeros(32, 32)}, m), "undeclared tensor"),
        (lambda u, m: (u, {**m, "secret": 1.0}), "undeclared metric 'secret'"),
        (lambda u, m: (u, {**m, "train_loss": "low"}), "not a number"),
        (lambda u, m: (u, {**m, "train_loss": torch.tensor(0.5)}), "not a number"),
    ],
    ids=["shape", "dtype", "missing", "extra", "metric-name", "metric-type", "metric-tensor"],
)
def test_uploads_must_match_the_declaration(change, message):
    with pytest.raises(PrivacyError, match=message) as info:
        simulation(_tamper(change)).run()
    assert "homlora: client 0, round 1" in str(info.value)


def test_non_finite_training_is_a_divergence_naming_algorithm_round_and_client():
    nan_loss = _tamper(lambda u, m: (u, {**m, "train_loss": float("nan")}))
    with pytest.raises(DivergenceError, match=r"homlora: client 0, round 1: training diverged .*learning rate"):
        simulation(nan_loss).run()
    inf_tensor = _tamper(lambda u, m: ({**u, _first_a(u): u[_first_a(u)] * float("inf")}, m))
    with pytest.raises(DivergenceError, match="non-finite values"):
        simulation(inf_tensor).run()


def test_hetlora_declares_its_truncated_rank():
    sim = simulation(make_algorithm("hetlora", {"r_min": 1, "r_max": 4, "ranks": [2, 4]}))
    broadcast = spec_of(sim.global_state)
    spec = sim.algorithm.upload_spec(broadcast, ClientState(extra={"rank": 2}))
    a = next(k for k in spec if k.endswith("lora_A"))
    b = a[: -len("lora_A")] + "lora_B"
    assert spec[a].shape == (2, broadcast[a].shape[1]) and spec[b].shape == (broadcast[b].shape[0], 2)
    sim.run()  # client 0 uploads rank-2 factors, client 1 rank-4 ones: both as declared


def test_checkpoint_state_round_trips_through_torch_load(tmp_path: Path):
    sim = simulation(make_algorithm("pf2lora", {"lr_private": 0.1}), r_private=2, rounds=2)
    sim.run_round()
    torch.save(sim.state_dict(), tmp_path / "s.pt")
    twin = simulation(make_algorithm("pf2lora", {"lr_private": 0.1}), r_private=2, rounds=2)
    twin.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    sim.run()
    twin.run()
    for k in sim.global_state:
        assert torch.equal(sim.global_state[k], twin.global_state[k])
    strip = [{k: v for k, v in r.items() if "seconds" not in k} for r in sim.history.train]
    assert strip == [{k: v for k, v in r.items() if "seconds" not in k} for r in twin.history.train]


class SharedHeadOnly(HOMLoRA):
    """A toy algorithm defined outside the package: communicates A and B, keeps the head on the client."""

    name = "toy_private_head"
    display_name = "Toy (private head)"
    Config = HOMLoRAConfig

    def communicated(self, model):
        return [n for n in model.common_names if n not in model.head_names]

    def private(self, model):
        return list(model.head_names)

    def local_update(self, model, received, state, data, steps):
        upload, metrics = super().local_update(model, {**received, **state.private}, state, data, steps)
        state.private = {k: upload.pop(k) for k in list(upload) if k in model.head_names}
        return upload, metrics


@pytest.mark.skipif(not (DATA / "glue" / "SST-2").is_dir(), reason="needs ../shared/data")
def test_a_new_algorithm_is_one_class_plus_one_registry_line(tiny_config: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(ALGORITHMS, SharedHeadOnly.name, SharedHeadOnly)  # the one registry line
    short = ["--set", "federation.rounds=2"]
    name = SharedHeadOnly.name
    run = ["run", str(tiny_config), "--out", str(tmp_path / "r"), *short, "--algorithm", name]
    result = CliRunner().invoke(app, run)
    assert result.exit_code == 0, result.output
    compare = ["compare", str(tiny_config), "--out", str(tmp_path / "c"), *short, "--algorithms", f"fedsa,{name}"]
    result = CliRunner().invoke(app, compare)
    assert result.exit_code == 0, result.output
    table = (tmp_path / "c" / "table.md").read_text()
    assert "| FedSA-LoRA |" in table and "| Toy (private head) |" in table


@pytest.mark.skipif(not (DATA / "glue" / "SST-2").is_dir(), reason="needs ../shared/data")
def test_compare_over_seeds_reports_mean_and_std(tiny_config: Path, tmp_path: Path):
    import json
    import statistics

    out = tmp_path / "seeds"
    args = ["compare", str(tiny_config), "--out", str(out), "--set", "federation.rounds=1", "--algorithms", "local,ffa"]
    result = CliRunner().invoke(app, [*args, "--seeds", "3,5"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [3, 5] and set(summary["summaries"]) == {"3", "5"}
    for seed in (3, 5):  # each seed is a whole comparison of its own (partitions from that seed)
        assert (out / f"seed_{seed}" / "ffa" / "summary.json").is_file()
    metric = summary["summaries"]["3"][0]["metric"]
    values = [summary["summaries"][s][1]["final"]["mean"][metric] for s in ("3", "5")]
    row = next(line for line in (out / "table.md").read_text().splitlines() if line.startswith("| FFA-LoRA |"))
    assert f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" in row
    assert "mean ± std over seeds 3, 5" in (out / "table.md").read_text()
    from matplotlib.image import imread

    # one panel for the clients' own test splits, one for the shared held-out set (6 in x 100 dpi each)
    assert imread(out / "compare.png").shape[1] == 1200
    bad = CliRunner().invoke(app, [*args, "--seeds", "1,x"])
    assert bad.exit_code == 2 and "--seeds: '1,x' is not a comma-separated list of integers" in bad.output
    one = ["compare", str(tiny_config), "--out", str(tmp_path / "alone"), "--set", "federation.rounds=1"]
    alone = CliRunner().invoke(app, [*one, "--algorithms", "ffa", "--seeds", "3"])
    assert alone.exit_code == 0, alone.output  # one algorithm: its run is the seed folder itself
    assert (tmp_path / "alone" / "seed_3" / "summary.json").is_file()
    assert (tmp_path / "alone" / "compare.png").is_file() and "| FFA-LoRA |" in (
        tmp_path / "alone" / "table.md"
    ).read_text()


@pytest.mark.parametrize("rounds", [[3], [0, 3]])
def test_compare_plot_is_points_for_one_evaluation_and_curves_for_several(tmp_path: Path, monkeypatch, rounds):
    import json

    import matplotlib.pyplot as plt

    import pf2lora.experiment as experiment

    names = ["pf2lora", "homlora"]
    for seed in (0, 1):
        for i, name in enumerate(names):
            rows = [
                {"kind": "eval", "round": r, "client": c, "BLEU": 50.0 + i + seed + r, "global_BLEU": 40.0 + r}
                for r in rounds
                for c in ("0", "1")
            ]
            (tmp_path / f"seed_{seed}" / name).mkdir(parents=True)
            (tmp_path / f"seed_{seed}" / name / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)))
    figures = []
    monkeypatch.setattr(experiment, "atomic_write", lambda path, write: figures.append(plt.gcf()))  # the figure
    experiment.plot_comparison(tmp_path, names, "BLEU", [tmp_path / "seed_0", tmp_path / "seed_1"])
    own, shared = figures[0].axes
    if len(rounds) == 1:  # one point per method with its ± std bar, the methods on the x axis
        assert [t.get_text() for t in own.get_xticklabels()] == ["PF2LoRA", "HOMLoRA"]
        assert own.get_xlabel() == "after round 3"
        assert [line.get_ydata()[0] for line in own.get_lines() if line.get_marker() == "o"] == [53.5, 54.5]
    else:  # one curve per method over the evaluated rounds, the mean over seeds
        assert [line.get_label() for line in own.get_lines()] == ["PF2LoRA", "HOMLoRA"]
        assert list(own.get_lines()[1].get_ydata()) == [51.5, 54.5] and own.get_xlabel() == "round"
    assert shared.get_title().startswith("global_BLEU")
