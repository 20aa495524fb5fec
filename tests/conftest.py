"""Shared fixtures: tiny randomly initialised models and deterministic batch sources."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor, nn

from pf2lora.adapters import AdaptedModel, add_two_level_lora
from pf2lora.federation import ClientData

#: The shared datasets (../shared/data beside the repository).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class FixedBatches:
    """A batch source cycling through a given list (so tests control π, ξ, ζ exactly)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches, self.i = batches, 0

    def next(self) -> Any:
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b


class TinyNet(nn.Module):
    """Two adapted layers with a nonlinearity: enough curvature for non-trivial mixed derivatives."""

    def __init__(self, d_in: int = 6, d_hidden: int = 8, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)
        self.head = nn.Linear(d_out, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def mse_loss(net: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return ((net(x) - y) ** 2).sum(1).mean()


@pytest.fixture
def tiny_model() -> Callable[..., AdaptedModel]:
    """Factory of a tiny two-level LoRA model with non-zero B and D (so every term is active)."""

    def make(r: int = 3, r_private: int = 2, dtype: torch.dtype = torch.float64, seed: int = 0, head: bool = False):
        torch.manual_seed(seed)
        net = TinyNet().to(dtype)
        add_two_level_lora(net, ["fc1", "fc2"], r=r, r_private=r_private, alpha=2 * r, alpha_private=r_private or None)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.3)
        return AdaptedModel(net, mse_loss, head_modules=["head"] if head else ())

    return make


def regression_batches(n: int, seed: int, dtype: torch.dtype = torch.float64, size: int = 16) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 6, generator=g, dtype=dtype), torch.randn(size, 3, generator=g, dtype=dtype))
        for _ in range(n)
    ]


#: Sizes of the tiny random BERT/RoBERTa encoders the unit tests build.
TINY_ENCODER = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def tiny_bert(r: int = 4, r_private: int = 2, dropout: float = 0.1, seed: int = 0) -> AdaptedModel:
    """A 2-layer random BERT classifier with two-level LoRA on query/value."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(**TINY_ENCODER, num_labels=2, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    net = BertForSequenceClassification(cfg)
    add_two_level_lora(net, ["query", "value"], r=r, r_private=r_private, alpha=2 * r, dropout=dropout)
    return AdaptedModel(net, lambda m, b: m(**b).loss, head_modules=["classifier"])


def bert_batch(g: torch.Generator, size: int = 8, length: int = 12) -> dict[str, Tensor]:
    return {
        "input_ids": torch.randint(0, 64, (size, length), generator=g),
        "attention_mask": torch.ones(size, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (size,), generator=g),
    }


def bert_clients(n: int, size: int = 24, seed: int = 0) -> list[ClientData]:
    """``n`` clients of random BERT examples (client k holds size + k of them, cycling ``size`` distinct ones)."""
    clients = []
    for k in range(n):
        data = bert_batch(torch.Generator().manual_seed(seed + k), size=size)
        clients.append(
            ClientData(str(k), size + k, lambda idx, d=data: {key: v[idx % size] for key, v in d.items()}, test=data)
        )
    return clients


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config for a tiny random BERT (local folder, MiniLM's tokenizer) on 96 SST-2 examples, 2 clients."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from pf2lora.models import minilm_path

    root = tmp_path_factory.mktemp("resume")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    BertForSequenceClassification(cfg).save_pretrained(root / "tiny-bert")
    tok.save_pretrained(root / "tiny-bert")
    config = {
        "name": "resume-test",
        "algorithm": "pf2lora",
        "compare": ["pf2lora", "hetlora"],
        "model": {"name": str(root / "tiny-bert")},
        "data": {"dataset": "sst2", "data_dir": str(DATA), "max_examples": 96, "global_examples": 24},
        "partition": {"num_clients": 2},
        "federation": {"rounds": 6, "local_steps": 3, "batch_size": 8, "eval_every": 2},
        "lora": {"r": 4, "r_private": 2},
        "task": {"max_length": 32},
        "algorithms": {"pf2lora": {"lr": 5e-3, "lr_private": 0.1}, "hetlora": {"r_min": 2, "r_max": 4}},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
