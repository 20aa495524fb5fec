"""Sentence(-pair) classification (GLUE): cross-entropy training, accuracy and Matthews correlation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForSequenceClassificationLoss

from pf2lora.adapters import AdaptedModel, Params
from pf2lora.data import TextExample
from pf2lora.federation import ClientData
from pf2lora.metrics import accuracy, balanced_accuracy, matthews_corrcoef
from pf2lora.tasks.base import Task


class Classification(Task):
    """GLUE-style classification; ``settings.metric`` picks the primary metric (``accuracy`` or ``mcc``)."""

    kind = "classification"

    def __init__(self, tokenizer: Any, settings: Any) -> None:
        super().__init__(tokenizer, settings)
        self.primary_metric = settings.metric

    @staticmethod
    def loss_from_outputs(net: Any, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return ForSequenceClassificationLoss(batch["labels"], outputs.logits, net.config)

    @staticmethod
    def partition_keys(examples: Sequence[TextExample]) -> list[int]:
        return [e.label for e in examples]

    def encode(self, examples: Sequence[TextExample]) -> list[dict[str, Any]]:
        """Token ids per example (padding happens per batch)."""
        a = [e.text_a for e in examples]
        b = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
        enc = self.tokenizer(a, b, truncation=True, max_length=self.settings.max_length)
        return [{k: enc[k][i] for k in enc} | {"labels": e.label} for i, e in enumerate(examples)]

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Dynamic padding to the longest row of the batch."""
        return dict(self.tokenizer.pad(list(rows), return_tensors="pt"))

    def client(self, cid: str, train: Sequence[TextExample], test: Sequence[TextExample]) -> ClientData:
        rows = self.encode(train)
        return ClientData(cid, len(rows), lambda idx: self.collate([rows[i] for i in idx]), test=self.test_set(test))

    def test_set(self, examples: Sequence[TextExample]) -> list[dict[str, Any]]:
        return self.encode(examples)

    def _predicted(
        self, model: AdaptedModel, params: Params, rows: list[dict[str, Any]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predicted label and cross-entropy loss per row."""
        # batches of similar length waste little on padding (the mask keeps padding out of every result)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        pred = np.zeros(len(rows), dtype=int)
        loss = np.zeros(len(rows))
        bs = self.settings.eval_batch_size
        for start in range(0, len(rows), bs):
            chunk = order[start : start + bs]
            batch = self.collate([rows[i] for i in chunk])
            logits = model.call(params, **batch).logits.float()
            pred[chunk] = logits.argmax(-1).cpu().numpy()
            loss[chunk] = F.cross_entropy(logits, batch["labels"].to(logits.device), reduction="none").cpu().numpy()
        return pred, loss

    def score(self, model: AdaptedModel, params: Params, test: list[dict[str, Any]]) -> dict[str, float]:
        pred, loss = self._predicted(model, params, test)
        labels = np.array([r["labels"] for r in test])
        return {
            "accuracy": 100.0 * accuracy(pred, labels),
            "balanced_accuracy": 100.0 * balanced_accuracy(pred, labels),
            "mcc": 100.0 * matthews_corrcoef(pred, labels),
            "eval_loss": float(loss.mean()) if len(test) else 0.0,
        }

    def predict(self, model: AdaptedModel, params: Params, test: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The input as the model saw it (decoded, after truncation), the label, the predicted label and the
        example's cross-entropy loss."""
        pred, loss = self._predicted(model, params, test)
        return [
            {
                "input": self.tokenizer.decode(r["input_ids"], skip_special_tokens=True),
                "label": int(r["labels"]),
                "prediction": int(p),
                "loss": float(x),
            }
            for r, p, x in zip(test, pred, loss, strict=True)
        ]
