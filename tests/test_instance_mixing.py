"""Per-instance mixing of the two adapters at inference (FedDPA's instance-wise dynamic weighting)."""

from __future__ import annotations

import pytest
import torch
from conftest import FixedBatches, bert_clients, tiny_bert
from test_batched import tiny_classifier

from pf2lora.adapters import AdaptedModel, add_two_level_lora
from pf2lora.algorithms import make_algorithm
from pf2lora.algorithms.base import ClientState
from pf2lora.algorithms.dual import weighted
from pf2lora.execution import instance_mixing
from pf2lora.federation import FederationConfig
from pf2lora.runtime.simulation import Simulation


def _random_adapters(model: AdaptedModel, seed: int) -> tuple[dict, dict]:
    """Global (A, B, head) and local (C, D) values with every factor non-zero."""
    g = torch.Generator().manual_seed(seed)
    values = {n: 0.5 * torch.randn(t.shape, generator=g) for n, t in model.current(model.common_names).items()}
    local = {n: 0.5 * torch.randn(t.shape, generator=g) for n, t in model.current(model.private_names).items()}
    return values, local


def _batch(g: torch.Generator, size: int, length: int, pad_from: list[int]) -> dict[str, torch.Tensor]:
    mask = torch.ones(size, length, dtype=torch.long)
    for row, start in enumerate(pad_from):
        mask[row, start:] = 0
    return {"input_ids": torch.randint(1, 64, (size, length), generator=g), "attention_mask": mask}


def _representation(model: AdaptedModel, values: dict, batch: dict, how: str) -> torch.Tensor:
    """By hand: the local adapter alone, last layer, last real token (or mean), unit length."""
    hidden = model.call(values, **batch, output_hidden_states=True).hidden_states[-1]
    mask = batch["attention_mask"].float()
    if how == "mean":
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    else:
        pooled = torch.stack([hidden[i, int(mask[i].nonzero().max())] for i in range(len(mask))])
    return torch.nn.functional.normalize(pooled, dim=-1)


@pytest.mark.parametrize("how", ["last", "mean"])
def test_feddpa_dynamic_weighting_mixes_each_instance_by_its_similarity(how):
    model = tiny_bert(r=3, r_private=3, dropout=0.0)
    model.net.eval()
    a = 0.3
    alg = make_algorithm(
        "feddpa", {"local_weight": a, "dynamic_weighting": True, "instances": 5, "max_weight": 0.8, "embedding": how}
    )
    x, y = _random_adapters(model, 0)
    personalized = alg.personalize(model, x, ClientState(private=y), None)
    assert all(torch.allclose(personalized[k], weighted({**x, **y}, 1 - a, a)[k]) for k in personalized)
    g = torch.Generator().manual_seed(1)
    refs = [_batch(g, 3, 9, [9, 7, 5]) | {"labels": torch.zeros(3, dtype=torch.long)} for _ in range(2)]
    test = _batch(g, 4, 10, [10, 6, 3, 8])
    mixer = alg.instance_mixer(model, personalized, FixedBatches(refs))
    with torch.no_grad():
        with instance_mixing(mixer):
            mixed = model.call(personalized, **test).logits
        local_only = weighted({**x, **y}, 0.0, 1.0)
        ref = torch.cat([_representation(model, local_only, {k: b[k] for k in test}, how) for b in refs])[:5]
        sim = (_representation(model, local_only, test, how) @ ref.T).mean(1)
        for i in range(4):  # each instance alone, under its own fixed mix: global 0.8·s_i, local 1 − 0.8·s_i
            w = 0.8 * float(sim[i])
            row = {k: v[i : i + 1] for k, v in test.items()}
            expected = model.call(weighted({**x, **y}, w, 1 - w), **row).logits
            torch.testing.assert_close(mixed[i : i + 1], expected, atol=1e-5, rtol=1e-5)
        plain = model.call(personalized, **test).logits  # outside the mixing: the fixed mix with weight a
    assert not torch.allclose(mixed, plain, atol=1e-4)


def test_mixing_follows_beam_search_rows():
    """``generate`` expands each instance into num_beams rows: all of them get that instance's weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    net = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    add_two_level_lora(net, ["c_attn"], r=2, r_private=2, alpha=4.0)
    model = AdaptedModel(net, lambda m, b: m(**b).loss)
    model.net.eval()
    x, y = _random_adapters(model, 3)
    values = {**x, **y}
    weights = torch.tensor([0.2, 0.9])
    prompts = {"input_ids": torch.randint(1, 64, (2, 5), generator=torch.Generator().manual_seed(4))}
    prompts["attention_mask"] = torch.ones(2, 5, dtype=torch.long)

    def mixer(inputs):
        return 1 - weights, weights

    def generate(params):
        with model.use(params) as m:
            return m.generate(**prompts, num_beams=3, max_new_tokens=6, do_sample=False, pad_token_id=0)

    with torch.no_grad(), instance_mixing(mixer), model.mixed(prompts):
        mixed = generate(values)
    for i, w in enumerate(weights.tolist()):
        with torch.no_grad():
            alone = generate(weighted(values, 1 - w, w))
        assert torch.equal(mixed[i], alone[i])


def test_feddpa_dynamic_weighting_in_a_federation():
    """Clients are evaluated one at a time under their mixer (also where training is batched), and the numbers
    differ from the fixed mix's; bad settings are refused."""

    def run(**extra):
        alg = make_algorithm("feddpa", {"lr": 0.05, "lr_local": 0.05, **extra})
        cfg = FederationConfig(rounds=1, local_steps=2, batch_size=4, parallel_clients=3)

        def evaluator(model, params, client):
            logits = model.call(params, **{k: v for k, v in client.test.items() if k != "labels"}).logits
            return {"logit_sum": float(logits.sum())}

        sim = Simulation(tiny_classifier(r=3, r_private=3), alg, bert_clients(3), cfg, evaluator=evaluator)
        assert sim.lockstep is not None  # training is batched; evaluation under a mixer is not
        return [row["logit_sum"] for row in sim.run().eval]

    fixed, dynamic = run(), run(dynamic_weighting=True)
    assert len(fixed) == len(dynamic) == 6
    assert fixed[:3] != dynamic[:3] or fixed[3:] != dynamic[3:]
    with pytest.raises(ValueError, match="local_weight"):
        make_algorithm("feddpa", {"dynamic_weighting": True, "local_weight": 1.0})
