"""Data-to-text generation (E2E, WebNLG) with a causal LM: teacher-forced training, beam-search evaluation.

A training example is one (source, reference) pair rendered as ``prompt.format(source=...)`` followed by the
reference and EOS; the loss covers the reference tokens only. Evaluation generates with beam search
(batched, left padding) for the client's distinct test sources and scores every hypothesis against all of
its references (BLEU, NIST, METEOR, ROUGE-L, CIDEr, TER).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from pf2lora.adapters import AdaptedModel, Params
from pf2lora.data import GenExample
from pf2lora.devices import to_device
from pf2lora.errors import InputError
from pf2lora.federation import ClientData
from pf2lora.metrics import generation_metrics
from pf2lora.tasks.base import Task


class Generation(Task):
    """Causal-LM data-to-text generation; primary metric BLEU."""

    kind = "causal_lm"
    primary_metric = "BLEU"

    @staticmethod
    def loss_from_outputs(net: Any, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return ForCausalLMLoss(outputs.logits, batch["labels"], vocab_size=net.config.vocab_size)

    @staticmethod
    def partition_keys(examples: Sequence[GenExample]) -> list[str]:
        return [e.group for e in examples]

    def __init__(self, tokenizer: Any, settings: Any) -> None:
        super().__init__(tokenizer, settings)
        try:
            settings.prompt.format(source="")
        except (KeyError, IndexError, ValueError) as e:
            raise InputError(f"task.prompt: {settings.prompt!r} is not a template with only {{source}} ({e})") from None
        if "{source}" not in settings.prompt:
            raise InputError(f"task.prompt: {settings.prompt!r} never shows the input: it needs {{source}}")

    def prompt(self, source: str) -> str:
        """The text the model continues."""
        return self.settings.prompt.format(source=source)

    def encode(self, examples: Sequence[GenExample]) -> list[dict[str, list[int]]]:
        """One row per (source, reference): prompt tokens masked out of the labels.

        A row whose target ``max_length`` cuts off entirely carries no loss (a batch of only such rows
        would give a NaN loss): it is dropped, and if no row keeps a target token that is an input error.
        """
        tok, max_len = self.tokenizer, self.settings.max_length
        rows = []
        for e in examples:
            prompt_ids = tok(self.prompt(e.source), add_special_tokens=False)["input_ids"]
            for ref in e.references:
                target = tok(" " + ref.strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                if len(prompt_ids) >= max_len:
                    continue
                ids = (prompt_ids + target)[:max_len]
                labels = ([-100] * len(prompt_ids) + target)[:max_len]
                rows.append({"input_ids": ids, "labels": labels})
        if examples and not rows:
            raise InputError(
                f"task.max_length: {max_len} tokens leave no room for the target after the prompt "
                f"(the shortest prompt here has {min(len(tok(self.prompt(e.source))['input_ids']) for e in examples)})"
            )
        return rows

    def collate(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Right padding for teacher forcing (positions stay 0..n-1); padded labels are ignored."""
        width = max(len(r["input_ids"]) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def client(self, cid: str, train: Sequence[GenExample], test: Sequence[GenExample]) -> ClientData:
        rows = self.encode(train)
        return ClientData(cid, len(rows), lambda idx: self.collate([rows[i] for i in idx]), test=self.test_set(test))

    @property
    def eval_limit(self) -> int:
        """``task.eval_examples_per_client``: beam search is the cost of evaluation."""
        return self.settings.eval_examples_per_client

    def test_set(self, examples: Sequence[GenExample]) -> list[GenExample]:
        """At most :attr:`eval_limit` sources."""
        limit = self.eval_limit
        return list(examples)[:limit] if limit else list(examples)

    def generate(self, model: AdaptedModel, params: Params, sources: Sequence[str]) -> list[str]:
        """Beam-search continuations of the prompts, cut at the first newline."""
        s, tok = self.settings, self.tokenizer
        out: list[str] = []
        with model.use(params) as net:
            for start in range(0, len(sources), s.eval_batch_size):
                prompts = [self.prompt(src) for src in sources[start : start + s.eval_batch_size]]
                enc = to_device(
                    dict(tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)), model.device
                )
                with model.mixed(enc):
                    gen = net.generate(
                        **enc,
                        num_beams=s.num_beams,
                        max_new_tokens=s.max_new_tokens,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id,
                        eos_token_id=tok.eos_token_id,
                    )
                texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :].cpu(), skip_special_tokens=True)
                out.extend(t.strip().split("\n")[0].strip() for t in texts)
        return out

    def score(self, model: AdaptedModel, params: Params, test: list[GenExample]) -> dict[str, float]:
        examples = test
        if not examples:
            return {}
        rows = self.encode(examples)
        losses = [float(model.loss(params, self.collate(rows[i : i + 8]))) for i in range(0, len(rows), 8)]
        hyps = self.generate(model, params, [e.source for e in examples])
        return {**generation_metrics(hyps, [e.references for e in examples]), "eval_loss": sum(losses) / len(losses)}

    def predict(self, model: AdaptedModel, params: Params, test: list[GenExample]) -> list[dict[str, Any]]:
        """Each source with the generated text and its references."""
        hyps = self.generate(model, params, [e.source for e in test])
        return [
            {"input": e.source, "prediction": h, "references": list(e.references)}
            for e, h in zip(test, hyps, strict=True)
        ]
