"""The in-process runtime: privacy of client state, determinism, sampling, aggregation weights, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bert_clients, tiny_bert

from pf2lora.algorithms import base, make_algorithm
from pf2lora.algorithms.base import Algorithm
from pf2lora.federation import ClientData, FederationConfig, Payload, PrivacyError, lr_factor
from pf2lora.runtime.simulation import Simulation


def accuracy(model, params, client):
    out = model.call(params, input_ids=client.test["input_ids"], attention_mask=client.test["attention_mask"])
    return {"accuracy": float((out.logits.argmax(-1) == client.test["labels"]).float().mean())}


def simulate(alg: str = "pf2lora", seed: int = 0, rounds: int = 2, **fed):
    model = tiny_bert()
    cfg = FederationConfig(rounds=rounds, local_steps=2, batch_size=4, seed=seed, **fed)
    sim = Simulation(model, make_algorithm(alg), bert_clients(3), cfg, evaluator=accuracy)
    return sim, sim.run()


class Spy:
    """Wraps an algorithm's aggregate to record every payload's tensors."""

    def __init__(self, sim: Simulation) -> None:
        self.seen: list[dict] = []
        inner = sim.algorithm.aggregate

        def aggregate(global_state, uploads, weights):
            self.seen.extend(uploads)
            return inner(global_state, uploads, weights)

        sim.algorithm.aggregate = aggregate  # type: ignore[method-assign]


@pytest.mark.parametrize("alg", ["pf2lora", "pf2lora_nobo", "hetlora", "perfedavg", "homlora"])
def test_client_private_tensors_never_leave_a_client(alg):
    model = tiny_bert(r=4, r_private=2 if alg.startswith("pf2lora") else 0)
    config = {"r_max": 4, "r_min": 1} if alg == "hetlora" else None
    sim = Simulation(
        model, make_algorithm(alg, config), bert_clients(3), FederationConfig(rounds=2, local_steps=2, batch_size=4)
    )
    spy = Spy(sim)
    history = sim.run()
    private_names = set(model.private_names)
    assert spy.seen and all(set(up) <= set(model.common_names) for up in spy.seen)
    assert not any(set(up) & private_names for up in spy.seen)
    for state in sim.states.values():
        for t in state.private.values():
            for up in spy.seen:
                for sent in up.values():
                    assert sent.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
    if alg.startswith("pf2lora"):
        assert private_names and all(n.endswith(("lora_C", "lora_D")) for n in private_names)
        # the private adapters moved away from each other: they are really personal
        a, b = (sim.states[c].private for c in ("0", "1"))
        assert any(not torch.equal(a[k], b[k]) for k in a)
    assert {r["client"] for r in history.train} == {"0", "1", "2"}


def test_a_leaking_algorithm_is_stopped():
    class Leaky(type(make_algorithm("pf2lora"))):  # type: ignore[misc]
        def local_update(self, model, received, state, data, steps):
            upload, metrics = super().local_update(model, received, state, data, steps)
            return {**upload, **state.private}, metrics

    sim = Simulation(tiny_bert(), Leaky(), bert_clients(2), FederationConfig(rounds=1, local_steps=1, batch_size=4))
    with pytest.raises(PrivacyError, match="private tensor"):
        sim.run()


def test_same_seed_same_numbers_different_seed_different():
    _, h1 = simulate(seed=3)
    _, h2 = simulate(seed=3)
    _, h3 = simulate(seed=4)
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]  # noqa: E731
    assert strip(h1.train) == strip(h2.train) and h1.eval == h2.eval
    assert strip(h1.train) != strip(h3.train)


def test_client_sampling_and_size_weights():
    sim, history = simulate(alg="homlora", rounds=3, client_fraction=0.5, aggregation="num_examples")
    per_round = [[r["client"] for r in history.train if r["round"] == k] for k in (1, 2, 3)]
    assert all(len(c) == 2 for c in per_round)  # ceil(0.5·3)
    _, again = simulate(alg="homlora", rounds=3, client_fraction=0.5, aggregation="num_examples")
    assert per_round == [[r["client"] for r in again.train if r["round"] == k] for k in (1, 2, 3)]
    # size weights are n_k / Σ n over the round's participants
    payloads = [
        Payload("a", 1, {"w": torch.tensor([1.0])}, 1),
        Payload("b", 1, {"w": torch.tensor([4.0])}, 3),
    ]
    seen = {}

    class Recorder(Algorithm):
        name = "recorder"
        Config = type(make_algorithm("homlora").config)

        def local_update(self, model, received, state, data, steps):
            raise NotImplementedError

        def aggregate(self, global_state, uploads, weights):
            seen["weights"] = list(weights)
            return global_state

    model = tiny_bert()
    sim = Simulation(model, Recorder(), bert_clients(2), FederationConfig(aggregation="num_examples"))
    sim.algorithm.local_update = lambda *a: (  # type: ignore[method-assign]
        {k: v.clone() for k, v in sim.global_state.items()},
        {"train_loss": 0.0},
    )
    sim.run_round()
    assert seen["weights"] == [24 / 49, 25 / 49]
    assert payloads[0].num_bytes == 4


def test_round_records_communication_and_time():
    sim, history = simulate(rounds=1)
    common = sum(t.numel() for t in sim.global_state.values())
    for row in history.train:
        assert row["upload_params"] == common == row["download_params"]
        assert row["upload_bytes"] == 4 * common and row["client_seconds"] > 0
    (rnd,) = history.rounds
    assert rnd["upload_params"] == 3 * common and rnd["seconds"] > 0
    assert {r["round"] for r in history.eval} == {0, 1}


def test_per_client_state_is_adapter_sized():
    sim, _ = simulate(rounds=1)
    model = sim.model
    common = sum(p.numel() for n, p in model.net.named_parameters() if n in set(model.common_names))
    private = sum(p.numel() for n, p in model.net.named_parameters() if n in set(model.private_names))
    total_model = sum(p.numel() for p in model.net.parameters())
    for state in sim.states.values():
        numel = sum(t.numel() for t in state.private.values())
        numel += sum(
            t.numel() for s in state.optimizer["state"].values() for t in s.values() if isinstance(t, torch.Tensor)
        )
        # client adapter + AdamW's two moments of the common adapter (+ step counters)
        assert private + 2 * common <= numel <= private + 2 * common + len(model.common_names)
        assert numel < total_model / 4


def test_warm_start_refuses_mixed_groups():
    sim, _ = simulate(rounds=1)
    with pytest.raises(RuntimeError, match="before the first round"):
        sim.warm_start(global_state={})
    fresh = Simulation(sim.model, make_algorithm("pf2lora"), bert_clients(2), FederationConfig())
    with pytest.raises(KeyError, match="non-communicated"):
        fresh.warm_start(global_state={sim.model.private_names[0]: torch.zeros(1)})


def test_stream_reshuffles_each_epoch():
    from pf2lora.federation import BatchStream

    data = ClientData("x", 10, lambda idx: np.asarray(idx))
    s = BatchStream(data, 4, seed=0)
    epoch = np.concatenate([s.next(), s.next()])
    assert len(set(epoch.tolist())) == 8
    full = BatchStream(data, 50, seed=0)
    assert full.next().tolist() == list(range(10))


@pytest.mark.parametrize("how", ["uniform", "num_examples"])
def test_streamed_aggregation_is_the_weighted_mean_bit_for_bit(how: str):
    """The default aggregation is summed as uploads arrive (no round's uploads held at once): same bits."""
    from pf2lora.algorithms.homlora import HOMLoRA

    class HoldsUploads(HOMLoRA):
        def aggregate(self, global_state, uploads, weights):
            assert len(uploads) == 3
            return super().aggregate(global_state, uploads, weights)

    fed = FederationConfig(rounds=2, local_steps=1, batch_size=4, aggregation=how)
    streamed = Simulation(tiny_bert(r_private=0), make_algorithm("homlora"), bert_clients(3), fed)
    held = Simulation(tiny_bert(r_private=0), HoldsUploads(), bert_clients(3), fed)
    streamed.run(), held.run()
    for name, t in streamed.global_state.items():
        assert torch.equal(t, held.global_state[name]), name


def test_effective_ranks_from_factors_match_the_full_spectrum(tiny_model):
    from pf2lora.adapters import effective_rank, truncate_rank

    model = tiny_model(r=3, r_private=2)
    params = {n: p.detach().clone() for n, p in model.net.named_parameters() if "lora_" in n}
    params["fc2.lora_B"][:, 1:] = 0.0  # fc2's common part of rank 1: ranks differ between layers
    for p in (params, truncate_rank(params, 1)):  # HETLoRA's truncated shapes too
        for threshold in (0.5, 0.9, 1.0):
            full = {n: effective_rank(d, threshold) for n, d in model.delta_weights(p).items()}
            assert model.effective_ranks(p, threshold) == full
    assert len(set(model.effective_ranks(params, 1.0).values())) == 2
    zero = {n: torch.zeros_like(t) if n.endswith(("lora_B", "lora_D")) else t for n, t in params.items()}
    assert set(model.effective_ranks(zero).values()) == {0}


def test_eval_rows_carry_each_layers_effective_rank():
    sim, history = simulate("pf2lora", rounds=1)
    names = [f"rank:{n}" for n in sim.model.layers]
    for row in history.eval:
        ranks = [row[n] for n in names]
        assert all(0 <= r <= 4 + 2 for r in ranks) and row["rank_mean"] == pytest.approx(np.mean(ranks))
    assert any(row["rank_mean"] > 0 for row in history.eval)  # B starts at zero, D does not
    _, off = simulate("pf2lora", rounds=1, rank_threshold=0.0)
    assert not any(k.startswith("rank") for row in off.eval for k in row)


def test_lr_factor_schedules():
    assert [lr_factor("constant", r, 4, 0.0) for r in (1, 4)] == [1.0, 1.0]
    assert [lr_factor("linear", r, 4, 0.0) for r in (1, 2, 3, 4)] == [1.0, 0.75, 0.5, 0.25]
    cos = [lr_factor("cosine", r, 4, 0.1) for r in (1, 2, 3, 4)]
    assert cos[0] == 1.0 and cos[2] == pytest.approx(0.55) and cos == sorted(cos, reverse=True) and cos[3] > 0.1


@pytest.mark.parametrize("parallel", [1, 3])
def test_lr_schedule_sets_every_rounds_learning_rate(monkeypatch, parallel):
    """Each round's optimizer runs at lr × the round's factor, also when resumed from a saved state (AdamW keeps
    the rate it was saved with) and in a batched pass; the fine-tuning before an evaluation keeps its rate."""
    seen: list[tuple[str, float]] = []
    inner = base.apply_step

    def spy(opt, params, grads):
        seen.append((type(opt).__name__, opt.param_groups[0]["lr"]))
        inner(opt, params, grads)

    monkeypatch.setattr(base, "apply_step", spy)
    cfg = FederationConfig(
        rounds=4, local_steps=2, batch_size=4, lr_schedule="linear", eval_every=4, parallel_clients=parallel
    )
    algorithm = make_algorithm("fedavg_ft", {"lr": 0.1, "ft_steps": 1, "ft_lr": 0.3, "ft_optimizer": "sgd"})
    Simulation(tiny_bert(), algorithm, bert_clients(3), cfg, evaluator=accuracy).run()
    train = [lr for kind, lr in seen if kind == "AdamW"]
    assert train == pytest.approx([0.1] * 6 + [0.075] * 6 + [0.05] * 6 + [0.025] * 6)
    ft = [lr for kind, lr in seen if kind == "SGD"]  # one step per client and evaluation (rounds 0 and 4)
    assert ft == [0.3] * len(ft) and len(ft) == 6
