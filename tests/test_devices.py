"""Device selection and client-state offloading (CPU here; CUDA/MPS paths are selected, not run, in CI)."""

from __future__ import annotations

import pytest
import torch
from conftest import bert_clients, tiny_bert

from pf2lora.algorithms import make_algorithm
from pf2lora.algorithms.base import ClientState
from pf2lora.devices import resolve_device, to_device
from pf2lora.errors import ConfigError
from pf2lora.federation import FederationConfig
from pf2lora.runtime.simulation import Simulation


def test_auto_picks_what_is_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "mps"])
def test_a_missing_device_is_a_one_line_error(monkeypatch, spec):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^federation\.device: .*(no CUDA|MPS is not available)"):
        resolve_device(spec)


def test_a_device_index_beyond_the_machine_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="has 2 CUDA device"):
        resolve_device("cuda:5")


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "CPU", "cuda:x", ""])
def test_device_names_are_validated(spec):
    with pytest.raises(ConfigError):
        resolve_device(spec)
    with pytest.raises(ValueError):
        FederationConfig(device=spec)


def test_to_device_moves_nested_state():
    state = ClientState({"a": torch.ones(2)}, {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{}]})
    moved = state.to("meta")
    assert moved.private["a"].device.type == "meta"
    assert moved.optimizer["state"][0]["exp_avg"].device.type == "meta"
    assert to_device((torch.ones(1), [torch.ones(1)], "x"), "meta")[1][0].device.type == "meta"


@pytest.mark.parametrize("alg", ["pf2lora", "hetlora", "fedsa"])
def test_offloading_client_state_changes_no_number(alg):
    config = {"r_max": 4} if alg == "hetlora" else None
    runs = []
    for offload in (False, True):
        model = tiny_bert(r=4, r_private=2 if alg == "pf2lora" else 0)
        fed = FederationConfig(rounds=2, local_steps=2, batch_size=4, offload_client_state=offload)
        sim = Simulation(model, make_algorithm(alg, config), bert_clients(2, seed=50), fed)
        sim.run()
        runs.append(sim)
        assert all(t.device.type == "cpu" for s in sim.states.values() for t in s.private.values())
    a, b = runs
    assert all(torch.equal(a.global_state[k], b.global_state[k]) for k in a.global_state)
    for cid in a.states:
        assert all(torch.equal(a.states[cid].private[k], b.states[cid].private[k]) for k in a.states[cid].private)
