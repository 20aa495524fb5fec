"""Every sampled client of a round in one batched pass equals running them one after another (to float rounding)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ENCODER
from torch import Tensor

from pf2lora.adapters import AdaptedModel, add_two_level_lora
from pf2lora.algorithms import ALGORITHMS, make_algorithm
from pf2lora.federation import ClientData, FederationConfig
from pf2lora.runtime.simulation import Simulation
from pf2lora.tasks.classification import Classification

#: Settings that make every algorithm's optional path run (HETLoRA prunes, Per-FedAvg takes its HVP).
SETTINGS = {
    "pf2lora": {"lr": 5e-3, "lr_private": 0.2},
    "hetlora": {"r_min": 2, "r_max": 4, "gamma": 0.5, "lam": 5.0},
    "perfedavg": {"variant": "hessian"},
    "fdlora": {"fusion_budget": 3, "fusion_batches": 1},  # AdaFusion's search is per-client code: a few evaluations
    "pf2lora exact": {"lr": 5e-3, "lr_private": 0.2, "hypergradient": "exact"},
    "pf2lora shared": {"lr": 5e-3, "lr_private": 0.2, "batches": "shared"},
}


def tiny_classifier(dropout: float = 0.1, r: int = 4, r_private: int = 2, head_group: str = "common") -> AdaptedModel:
    """A random 2-layer BERT classifier whose loss can be split per client (as experiments build it)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(**TINY_ENCODER, num_labels=2, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    net = BertForSequenceClassification(cfg)
    add_two_level_lora(net, ["query", "value"], r=r, r_private=r_private, alpha=2 * r, dropout=dropout)
    return AdaptedModel(
        net, Classification.loss, ["classifier"], head_group, Classification.loss_from_outputs, Classification.targets
    )


def ragged_clients(n: int, seed: int = 0) -> list[ClientData]:
    """Clients of different sizes whose examples have different lengths (each batch padded to its longest)."""
    clients = []
    for k in range(n):
        g = torch.Generator().manual_seed(seed + k)
        size = 10 + 3 * k
        lengths = torch.randint(3, 15, (size,), generator=g)
        ids = torch.randint(1, 64, (size, 14), generator=g)
        labels = torch.randint(0, 2, (size,), generator=g)

        def fetch(idx, lengths=lengths, ids=ids, labels=labels) -> dict[str, Tensor]:
            idx = torch.as_tensor(idx)
            width = int(lengths[idx].max())
            mask = (torch.arange(width)[None, :] < lengths[idx][:, None]).long()
            return {"input_ids": ids[idx, :width] * mask, "attention_mask": mask, "labels": labels[idx]}

        clients.append(ClientData(str(k), size, fetch, test=fetch(torch.arange(size))))
    return clients


def accuracy(model: AdaptedModel, params, client: ClientData) -> dict[str, float]:
    out = model.call(params, **client.test)
    return {"acc": float((out.logits.argmax(-1) == client.test["labels"]).float().mean()), "loss": float(out.loss)}


def simulate(name: str, parallel: int | None, **fed) -> Simulation:
    model = tiny_classifier(r_private=4 if name == "fdlora" else 2)  # FDLoRA fuses two LoRAs of equal rank
    config = FederationConfig(
        rounds=2, local_steps=2, batch_size=6, client_fraction=0.75, parallel_clients=parallel, **fed
    )
    algorithm = make_algorithm(name.split()[0], SETTINGS.get(name, {}))
    sim = Simulation(model, algorithm, ragged_clients(4), config, accuracy)
    sim.run()
    return sim


#: Batched matmuls sum in another order than one client's do, and the CPU's kernels decide that order: on an
#: AVX512 host one element of HETLoRA's Adam moment differed by 2.6e-7 (relative 1.6e-5) after four steps. A
#: wrong batch, mask or gradient moves values by orders of magnitude more.
RTOL, ATOL = 1e-4, 1e-6


def assert_close(a, b, where: str) -> None:
    if isinstance(a, Tensor):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=RTOL, abs=ATOL), where
    else:
        assert a == b, where


@pytest.mark.parametrize("name", [*sorted(ALGORITHMS), "pf2lora exact", "pf2lora shared"])
def test_batched_equals_sequential(name: str) -> None:
    sequential, batched = simulate(name, 1), simulate(name, 4)
    assert sequential.lockstep is None and batched.lockstep is not None
    assert_close(sequential.global_state, batched.global_state, "global")
    for cid, state in sequential.states.items():
        assert_close(state.state_dict(), batched.states[cid].state_dict(), f"client {cid}")
    strip = [{k: v for k, v in row.items() if k != "client_seconds"} for row in sequential.history.train]
    assert_close(strip, [{k: v for k, v in r.items() if k != "client_seconds"} for r in batched.history.train], "train")
    assert_close(sequential.history.eval, batched.history.eval, "eval")


def _task_models() -> dict[str, tuple[torch.nn.Module, type, list[str]]]:
    """Tiny random models of each task kind, with the task class whose loss they train."""
    from transformers import (
        BertConfig,
        BertForQuestionAnswering,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from pf2lora.tasks.generation import Generation
    from pf2lora.tasks.qa import QuestionAnswering

    torch.manual_seed(0)
    small = {"vocab_size": 64, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    return {
        "classification": (BertForSequenceClassification(BertConfig(**TINY_ENCODER)), Classification, ["classifier"]),
        "qa": (BertForQuestionAnswering(BertConfig(**TINY_ENCODER)), QuestionAnswering, ["qa_outputs"]),
        "gpt2": (
            GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64)),
            Generation,
            [],
        ),
        "llama": (LlamaForCausalLM(LlamaConfig(**small, num_hidden_layers=2, num_key_value_heads=1)), Generation, []),
    }


def _batch(kind: str, g: torch.Generator, rows: int, width: int, real: int) -> dict[str, Tensor]:
    """A right-padded batch whose longest row has ``real`` tokens (``width`` columns)."""
    lengths = torch.randint(2, real + 1, (rows,), generator=g)
    lengths[0] = real
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, 64, (rows, width), generator=g) * mask
    batch = {"input_ids": ids, "attention_mask": mask}
    if kind == "classification":
        batch["labels"] = torch.randint(0, 2, (rows,), generator=g)
    elif kind == "qa":
        batch["start_positions"] = torch.randint(0, real, (rows,), generator=g)
        batch["end_positions"] = torch.randint(0, real, (rows,), generator=g)
    else:
        batch["labels"] = torch.where(mask.bool() & (torch.arange(width) > 1), ids, -100)
    return batch


@pytest.mark.parametrize("kind", ["classification", "qa", "gpt2", "llama"])
def test_loss_from_outputs_is_the_models_own_loss(kind: str) -> None:
    net, task, _ = _task_models()[kind]
    net.eval()
    batch = _batch(kind, torch.Generator().manual_seed(1), 5, 9, 9)
    inputs = {k: v for k, v in batch.items() if k not in task.targets}
    torch.testing.assert_close(task.loss_from_outputs(net, net(**inputs), batch), task.loss(net, batch), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["classification", "qa", "gpt2", "llama"])
def test_one_pass_gives_each_client_its_own_loss_and_gradient(kind: str) -> None:
    """Clients with different rows, lengths and adapters in one pass, dropout on: each gets what it gets alone."""
    from pf2lora.algorithms.base import grad_dict, leaves
    from pf2lora.runtime.batched import Lockstep

    net, task, heads = _task_models()[kind]
    targets = ["c_attn"] if kind == "gpt2" else ["q_proj", "v_proj"] if kind == "llama" else ["query", "value"]
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.2
    add_two_level_lora(net, targets, r=3, r_private=2, dropout=0.2)
    model = AdaptedModel(net, task.loss, heads, "common", task.loss_from_outputs, task.targets)
    net.train()
    g = torch.Generator().manual_seed(2)
    names = model.common_names + model.private_names
    clients = []
    for k, (rows, real) in enumerate([(4, 7), (3, 11), (5, 5)]):
        params = {n: torch.randn(p.shape, generator=g) * 0.3 for n, p in net.named_parameters() if n in names}
        if kind == "classification" and k == 1:  # a lower-rank client (HETLoRA): zero-padded in the pass
            params = {
                n: (v[:2] if n.endswith("lora_A") else v[:, :2] if n.endswith("lora_B") else v)
                for n, v in params.items()
            }
        clients.append((params, _batch(kind, g, rows, real, real)))

    def alone(params, batch, seed):
        torch.manual_seed(seed)
        x = leaves(params)
        loss = model.loss(x, batch)
        return loss.detach(), grad_dict(loss, x)

    def job(params, batch):
        def run(m):
            x = leaves(params)
            loss = m.loss(x, batch)
            return loss.detach(), grad_dict(loss, x)

        return run

    expected = [alone(p, b, 10 + k) for k, (p, b) in enumerate(clients)]
    gens = [torch.Generator().manual_seed(10 + k) for k in range(len(clients))]
    got = Lockstep(model).run([job(p, b) for p, b in clients], gens)
    for k, ((l0, g0), (l1, g1)) in enumerate(zip(expected, got, strict=True)):
        torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-7, msg=f"client {k} loss")
        for n in g0:
            torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-6, msg=f"client {k} {n}")


def test_padded_length_avoids_model_sizes() -> None:
    """Sequence dims are told from others by their size: the padded length never equals a model dimension."""
    from pf2lora.runtime.batched import Lockstep

    model = tiny_classifier()
    g = torch.Generator().manual_seed(0)
    batches = [_batch("classification", g, 2, 32, 32), _batch("classification", g, 2, 30, 30)]
    _, segments = Lockstep(model)._merge(batches)
    assert [s.length for s in segments] == [32, 30] and segments[0].padded == 33  # 32 = hidden size, 33 free


def test_unbatchable_model_runs_sequentially_and_says_why(tiny_model) -> None:
    with pytest.warns(UserWarning, match="parallel_clients: clients run one at a time: the model.s loss"):
        sim = Simulation(
            tiny_model(), make_algorithm("homlora"), ragged_clients(2), FederationConfig(parallel_clients=2)
        )
    assert sim.lockstep is None and "one client at a time" in sim.execution


def test_a_failing_client_fails_the_round_and_stops_every_thread() -> None:
    import threading

    from pf2lora.runtime.batched import Lockstep

    model = tiny_classifier()
    batch = _batch("classification", torch.Generator().manual_seed(0), 2, 5, 5)

    def fine(m):
        return float(m.loss(model.current(model.common_names), batch))

    def broken(m):
        m.loss(model.current(model.common_names), batch)
        raise ZeroDivisionError("client 1 broke")

    before = threading.active_count()
    with pytest.raises(ZeroDivisionError, match="client 1 broke"):
        Lockstep(model).run([fine, broken, fine], [None, None, None])
    assert threading.active_count() == before


def test_a_model_with_dropout_shared_across_rows_is_not_batched() -> None:
    """DeBERTa drops out its relative-position table, one mask for all rows: its clients cannot share a pass."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    cfg = DebertaV2Config(
        **TINY_ENCODER, relative_attention=True, pos_att_type=["c2p", "p2c"], position_buckets=8, num_labels=2
    )
    net = DebertaV2ForSequenceClassification(cfg)
    add_two_level_lora(net, ["query_proj", "value_proj"], r=2)
    model = AdaptedModel(
        net, Classification.loss, ["classifier"], "common", Classification.loss_from_outputs, Classification.targets
    )
    with pytest.warns(UserWarning, match=r"one at a time: the model cannot run clients in one pass \(a dropout mask"):
        sim = Simulation(model, make_algorithm("homlora"), ragged_clients(2), FederationConfig(parallel_clients=2))
    assert sim.lockstep is None
    sim.run_round()


def test_clients_run_one_at_a_time_on_the_cpu_unless_asked() -> None:
    """On the CPU one client's pass fills the cores, so batching is opt-in there (federation.parallel_clients)."""
    default = Simulation(tiny_classifier(), make_algorithm("homlora"), ragged_clients(3), FederationConfig())
    asked = Simulation(
        tiny_classifier(), make_algorithm("homlora"), ragged_clients(3), FederationConfig(parallel_clients=2)
    )
    assert default.lockstep is None and default.execution == "one client at a time"
    assert asked.lockstep is not None and asked.execution == "up to 2 clients per batched pass"
