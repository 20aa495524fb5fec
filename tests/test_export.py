"""PEFT export: a client's personalized model, reloaded by plain PEFT onto a fresh base, gives the same logits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY_ENCODER
from torch import Tensor, nn

from pf2lora.adapters import AdaptedModel, add_two_level_lora, truncate_rank
from pf2lora.errors import OutputError
from pf2lora.export import export_peft_adapter, peft_task_type

TOL = 1e-5


def _bert_cls() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**TINY_ENCODER, num_labels=3))


def _bert_qa() -> nn.Module:
    from transformers import BertConfig, BertForQuestionAnswering

    return BertForQuestionAnswering(BertConfig(**TINY_ENCODER))


def _roberta_cls() -> nn.Module:
    """Its classifier head is two Linears (``classifier.dense``, ``classifier.out_proj``)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    # RoBERTa's positions start after the padding index: 80 positions for 64-token inputs
    return RobertaForSequenceClassification(
        RobertaConfig(**{**TINY_ENCODER, "max_position_embeddings": 80}, num_labels=2)
    )


def _llama_lm() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )


def _gpt2_lm() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2))


def _gpt2_cls() -> nn.Module:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    cfg = GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2, num_labels=2, pad_token_id=0)
    return GPT2ForSequenceClassification(cfg)


#: name -> (builder, LoRA targets, head modules, PEFT task type, Auto class that reloads it)
CASES: dict[str, tuple[Callable[[], nn.Module], list[str], list[str], str, str]] = {
    "bert-cls": (_bert_cls, ["query", "value"], ["classifier"], "SEQ_CLS", "AutoModelForSequenceClassification"),
    # model.head_modules: BERT's pooler trained in full beside the classifier (a nested module in modules_to_save)
    "bert-cls-pooler": (
        _bert_cls,
        ["query", "value"],
        ["bert.pooler", "classifier"],
        "SEQ_CLS",
        "AutoModelForSequenceClassification",
    ),
    "bert-qa": (_bert_qa, ["query", "value"], ["qa_outputs"], "QUESTION_ANS", "AutoModelForQuestionAnswering"),
    "roberta-cls": (_roberta_cls, ["query", "value"], ["classifier"], "SEQ_CLS", "AutoModelForSequenceClassification"),
    "llama-lm": (_llama_lm, ["q_proj", "v_proj"], [], "CAUSAL_LM", "AutoModelForCausalLM"),
    "gpt2-lm": (_gpt2_lm, ["c_attn"], [], "CAUSAL_LM", "AutoModelForCausalLM"),
    "gpt2-cls": (_gpt2_cls, ["c_attn"], ["score"], "SEQ_CLS", "AutoModelForSequenceClassification"),
}


def _build(case: str, base_dir: Path, r: int = 4, r_private: int = 2, seed: int = 0) -> AdaptedModel:
    """A random model saved to ``base_dir`` (the exported adapter's base), then given two-level LoRA."""
    builder, targets, heads, _, _ = CASES[case]
    torch.manual_seed(seed)
    net = builder().eval()
    net.save_pretrained(base_dir)
    add_two_level_lora(net, targets, r=r, r_private=r_private, alpha=2 * r, alpha_private=3.0 if r_private else None)
    return AdaptedModel(net, lambda m, b: m(**b).logits.sum(), head_modules=heads)


def _random_params(model: AdaptedModel, seed: int = 1) -> dict[str, Tensor]:
    """Non-zero random values for every adapter factor and head parameter, so each term of the sum matters."""
    g = torch.Generator().manual_seed(seed)
    names = list(dict.fromkeys(model.common_names + model.private_names))
    return {n: 0.3 * torch.randn(t.shape, generator=g) for n, t in model.current(names).items()}


def _batch(seed: int = 2, size: int = 3, length: int = 10) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (size, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _reloaded_logits(case: str, base_dir: Path, adapter_dir: Path, batch: dict[str, Tensor]) -> Tensor:
    """Logits of plain ``PeftModel.from_pretrained`` on a freshly loaded base (start logits for QA)."""
    import peft
    import transformers

    auto = getattr(transformers, CASES[case][4])
    peft_model = peft.PeftModel.from_pretrained(auto.from_pretrained(base_dir), adapter_dir).eval()
    with torch.no_grad():
        return _logits(peft_model(**batch))


def _logits(output: object) -> Tensor:
    return output.start_logits if hasattr(output, "start_logits") else output.logits


def _pf2lora_logits(model: AdaptedModel, params: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        return _logits(model.call(params, **batch))


@pytest.mark.parametrize("case", list(CASES))
def test_two_level_round_trip(case: str, tmp_path: Path) -> None:
    model = _build(case, tmp_path / "base")
    params = _random_params(model)
    batch = _batch()
    out = export_peft_adapter(
        model, params, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"), task_type=CASES[case][3]
    )
    # PEFT froze the tensors it shared with the export's plain copy; pf2lora's flags are restored
    assert all(p.requires_grad == (n in model.head_names) for n, p in model.net.named_parameters() if "lora_" not in n)
    expected = _pf2lora_logits(model, params, batch)
    got = _reloaded_logits(case, tmp_path / "base", out, batch)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)
    # the adapter does real work: the model's own values (B = D = 0, the saved head) give the plain base
    assert not torch.allclose(_pf2lora_logits(model, {}, batch), expected, atol=1e-3)

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 6 and not config["rank_pattern"]
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    assert config["fan_in_fan_out"] == case.startswith("gpt2")
    assert sorted(config["target_modules"]) == sorted(model.layers)
    info = json.loads((out / "pf2lora_export.json").read_text())
    assert {m["rank"] for m in info["layers"].values()} == {6}
    assert sorted(info["head_parameters"]) == sorted(model.head_names)


def test_loads_without_pf2lora(tmp_path: Path) -> None:
    model = _build("bert-cls", tmp_path / "base")
    params = _random_params(model)
    batch = _batch()
    export_peft_adapter(
        model, params, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"), task_type="SEQ_CLS"
    )
    torch.save(batch, tmp_path / "batch.pt")
    code = textwrap.dedent(
        f"""
        import sys, torch, peft
        from transformers import AutoModelForSequenceClassification
        base = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "base")!r}, num_labels=3)
        model = peft.PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r}).eval()
        with torch.no_grad():
            logits = model(**torch.load({str(tmp_path / "batch.pt")!r})).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        assert "pf2lora" not in sys.modules, "pf2lora was imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    got = torch.load(tmp_path / "logits.pt")
    torch.testing.assert_close(got, _pf2lora_logits(model, params, batch), atol=TOL, rtol=TOL)


def test_hetlora_truncated_ranks(tmp_path: Path) -> None:
    """Truncated factors keep the layer's scaling alpha/r_max; per-layer ranks differ (rank_pattern)."""
    model = _build("bert-cls", tmp_path / "base", r=4, r_private=0)
    full = _random_params(model)
    ranks = {name: 2 if i % 2 else 3 for i, name in enumerate(model.layers)}
    params: dict[str, Tensor] = {}
    for name, rank in ranks.items():
        params |= truncate_rank({n: v for n, v in full.items() if n.startswith(name + ".")}, rank)
    # no head in params: the model's current (trained) head is exported, which differs from the saved base
    with torch.no_grad():
        model.net.classifier.weight.normal_(0, 0.5)
    batch = _batch()
    out = export_peft_adapter(
        model, params, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"), task_type="SEQ_CLS"
    )
    torch.testing.assert_close(
        _reloaded_logits("bert-cls", tmp_path / "base", out, batch),
        _pf2lora_logits(model, params, batch),
        atol=TOL,
        rtol=TOL,
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 3
    assert set(config["rank_pattern"].values()) == set(config["alpha_pattern"].values()) == {2}
    info = json.loads((out / "pf2lora_export.json").read_text())
    assert {n: m["rank"] for n, m in info["layers"].items()} == ranks
    assert all(m["scaling"] == 2.0 and m["r_private"] == 0 for m in info["layers"].values())


def test_reexport_and_refusal(tmp_path: Path) -> None:
    model = _build("bert-cls", tmp_path / "base")
    params = _random_params(model)
    batch = _batch()
    kw = {"base_model_name_or_path": str(tmp_path / "base"), "task_type": "SEQ_CLS"}
    export_peft_adapter(model, _random_params(model, seed=5), tmp_path / "adapter", client=0, **kw)
    out = export_peft_adapter(model, params, tmp_path / "adapter", client=1, **kw)
    torch.testing.assert_close(
        _reloaded_logits("bert-cls", tmp_path / "base", out, batch),
        _pf2lora_logits(model, params, batch),
        atol=TOL,
        rtol=TOL,
    )
    assert json.loads((out / "pf2lora_export.json").read_text())["client"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base"]  # no temporary leftovers

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="no earlier adapter export"):
        export_peft_adapter(model, params, other, **kw)
    assert (other / "notes.txt").read_text() == "keep me"


def test_peft_task_type() -> None:
    assert [peft_task_type(k) for k in ("classification", "qa", "causal_lm")] == [
        "SEQ_CLS",
        "QUESTION_ANS",
        "CAUSAL_LM",
    ]
    with pytest.raises(ValueError, match="unknown model kind"):
        peft_task_type("seq2seq")
