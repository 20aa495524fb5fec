"""Extractive question answering (SQuAD v1.1/v2.0): span training, n-best decoding, official EM/F1.

Long contexts are cut into windows (``max_length`` tokens, ``doc_stride`` overlap) as in HF's run_qa;
a window without the answer, or an unanswerable question (v2), is labelled with the CLS position. At
evaluation every window of a question is scored and the best valid span wins; for v2 the empty answer
wins when the CLS score beats the best span.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers.loss.loss_utils import ForQuestionAnsweringLoss

from pf2lora.adapters import AdaptedModel, Params
from pf2lora.data import QAExample
from pf2lora.federation import ClientData
from pf2lora.metrics import squad_em_f1
from pf2lora.tasks.base import Task


class QuestionAnswering(Task):
    """SQuAD-style extractive QA; primary metric F1."""

    kind = "qa"
    primary_metric = "f1"

    targets = ("start_positions", "end_positions")

    @staticmethod
    def loss_from_outputs(net: Any, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return ForQuestionAnsweringLoss(
            outputs.start_logits, outputs.end_logits, batch["start_positions"], batch["end_positions"]
        )

    @staticmethod
    def partition_keys(examples: Sequence[QAExample]) -> list[str]:
        return [e.title for e in examples]

    def features(self, examples: Sequence[QAExample]) -> list[dict[str, Any]]:
        """Tokenized windows with start/end labels, offsets and the index of their example."""
        s = self.settings
        enc = self.tokenizer(
            [e.question.lstrip() for e in examples],
            [e.context for e in examples],
            truncation="only_second",
            max_length=s.max_length,
            stride=s.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        feats = []
        for i, offsets in enumerate(enc["offset_mapping"]):
            ex_idx = enc["overflow_to_sample_mapping"][i]
            ex = examples[ex_idx]
            seq_ids = enc.sequence_ids(i)
            ctx = [k for k, sid in enumerate(seq_ids) if sid == 1]
            start_pos = end_pos = 0
            if not ex.is_impossible and ex.answers:
                a_start = ex.answer_starts[0]
                a_end = a_start + len(ex.answers[0])
                if offsets[ctx[0]][0] <= a_start and offsets[ctx[-1]][1] >= a_end:
                    start_pos = next(k for k in ctx if offsets[k][1] > a_start)
                    end_pos = next(k for k in reversed(ctx) if offsets[k][0] < a_end)
            feats.append(
                {
                    "input_ids": enc["input_ids"][i],
                    "attention_mask": enc["attention_mask"][i],
                    **({"token_type_ids": enc["token_type_ids"][i]} if "token_type_ids" in enc else {}),
                    "start_positions": start_pos,
                    "end_positions": end_pos,
                    "example": ex_idx,
                    "context_offsets": [offsets[k] if seq_ids[k] == 1 else None for k in range(len(offsets))],
                }
            )
        return feats

    def collate(self, feats: Sequence[dict[str, Any]], labels: bool = True) -> dict[str, torch.Tensor]:
        """Pad a batch of windows; keep start/end labels for training."""
        keys = ["input_ids", "attention_mask", "token_type_ids"] + (
            ["start_positions", "end_positions"] if labels else []
        )
        rows = [{k: f[k] for k in keys if k in f} for f in feats]
        return dict(self.tokenizer.pad(rows, return_tensors="pt"))

    def client(self, cid: str, train: Sequence[QAExample], test: Sequence[QAExample]) -> ClientData:
        feats = self.features(train)
        return ClientData(cid, len(feats), lambda idx: self.collate([feats[i] for i in idx]), test=self.test_set(test))

    def test_set(self, examples: Sequence[QAExample]) -> tuple[list[dict[str, Any]], Sequence[QAExample]]:
        """Windowed features and the questions they come from (answers are scored per question)."""
        return self.features(examples), examples

    def _answers(
        self, model: AdaptedModel, params: Params, test: tuple[list[dict[str, Any]], Sequence[QAExample]]
    ) -> list[str]:
        """The predicted answer text per question ("" for no answer under SQuAD v2): the best-scoring valid span
        over the question's windows (``n_best`` starts × ends, at most ``max_answer_length`` tokens)."""
        feats, examples = test
        s = self.settings
        best: dict[int, tuple[float, str]] = {}
        null: dict[int, float] = {}
        for start in range(0, len(feats), s.eval_batch_size):
            chunk = feats[start : start + s.eval_batch_size]
            out = model.call(params, **self.collate(chunk, labels=False))
            for f, st, en in zip(chunk, out.start_logits.cpu().numpy(), out.end_logits.cpu().numpy(), strict=True):
                ex = examples[f["example"]]
                null[f["example"]] = min(null.get(f["example"], np.inf), float(st[0] + en[0]))
                offs = f["context_offsets"]
                for i in np.argsort(st)[::-1][: s.n_best]:
                    for j in np.argsort(en)[::-1][: s.n_best]:
                        if i >= len(offs) or j >= len(offs) or offs[i] is None or offs[j] is None:
                            continue
                        if j < i or j - i + 1 > s.max_answer_length:
                            continue
                        score = float(st[i] + en[j])
                        if score > best.get(f["example"], (-np.inf, ""))[0]:
                            best[f["example"]] = (score, ex.context[offs[i][0] : offs[j][1]])
        answers = []
        for k in range(len(examples)):
            score, text = best.get(k, (-np.inf, ""))
            answers.append("" if s.version_2_with_negative and null.get(k, np.inf) > score else text)
        return answers

    @staticmethod
    def _references(ex: QAExample) -> list[str]:
        return [] if ex.is_impossible else list(ex.answers)

    def score(
        self, model: AdaptedModel, params: Params, test: tuple[list[dict[str, Any]], Sequence[QAExample]]
    ) -> dict[str, float]:
        examples = test[1]
        answers = self._answers(model, params, test)
        m = squad_em_f1(
            {ex.qid: a for ex, a in zip(examples, answers, strict=True)},
            {ex.qid: self._references(ex) for ex in examples},
        )
        return {"exact_match": m["exact_match"], "f1": m["f1"]}

    def predict(
        self, model: AdaptedModel, params: Params, test: tuple[list[dict[str, Any]], Sequence[QAExample]]
    ) -> list[dict[str, Any]]:
        """Each question (id, title) with the predicted answer and the reference answers."""
        examples = test[1]
        return [
            {"id": ex.qid, "title": ex.title, "input": ex.question, "prediction": a, "references": self._references(ex)}
            for ex, a in zip(examples, self._answers(model, params, test), strict=True)
        ]
