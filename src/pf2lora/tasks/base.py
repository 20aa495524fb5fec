"""What every task provides to an experiment: per-client data, a loss, an evaluator and partition keys."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from pf2lora.adapters import AdaptedModel, Params
from pf2lora.federation import ClientData
from pf2lora.models import ModelKind


class Task(ABC):
    """A supervised task over one dataset's examples, with its tokenizer and settings."""

    kind: ModelKind
    #: Metric reported in tables (maximised).
    primary_metric: str

    def __init__(self, tokenizer: Any, settings: Any) -> None:
        self.tokenizer = tokenizer
        self.settings = settings

    #: Keys of a training batch that are targets of the loss, not inputs of the model.
    targets: tuple[str, ...] = ("labels",)

    @property
    def eval_limit(self) -> int:
        """How many examples of a test set are scored (0: all of them)."""
        return 0

    @staticmethod
    def loss(net: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """HF models return their task loss when the batch holds labels/positions."""
        return net(**batch).loss

    @staticmethod
    @abstractmethod
    def loss_from_outputs(net: nn.Module, outputs: Any, batch: dict[str, Tensor]) -> Tensor:
        """The same loss from the model's outputs on ``batch`` (HF's own loss function), so that several
        clients' batches can share one forward pass and each still get its own loss."""

    @staticmethod
    @abstractmethod
    def partition_keys(examples: Sequence[Any]) -> list[Any]:
        """Per-example labels (or natural groups) that partitioners split on."""

    @abstractmethod
    def client(self, cid: str, train: Sequence[Any], test: Sequence[Any]) -> ClientData:
        """A client holding ``train`` (as batches) and ``test`` (for evaluation, as :meth:`test_set`)."""

    @abstractmethod
    def test_set(self, examples: Sequence[Any]) -> Any:
        """Test examples in the form :meth:`score` reads (encoded once, scored at every evaluation)."""

    @abstractmethod
    def score(self, model: AdaptedModel, params: Params, test: Any) -> dict[str, float]:
        """Metrics of the model ``params`` on one :meth:`test_set`."""

    @abstractmethod
    def predict(self, model: AdaptedModel, params: Params, test: Any) -> list[dict[str, Any]]:
        """One record per example of a :meth:`test_set`: its input, the model's output and the reference, as
        :meth:`score` scores them (``pf2lora predict``)."""

    def evaluate(self, model: AdaptedModel, params: Params, client: ClientData) -> dict[str, float]:
        """The personalized model's metrics on the client's own test split and, as ``global_<metric>``, on the
        held-out set shared by all clients (telling a learned task from a learned label prior)."""
        metrics = self.score(model, params, client.test)
        if client.global_test is not None:
            metrics |= {f"global_{k}": v for k, v in self.score(model, params, client.global_test).items()}
        return metrics
