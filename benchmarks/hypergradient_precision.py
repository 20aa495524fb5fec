"""How far PF2LoRA's ``fd`` hypergradient over a bf16/fp16 base is from the fp32 ``exact`` one, per ``fd_c`` (MiniLM).

One hypergradient ∇x f(x, y⁺; ξ) − α ∇xy f(x, y; π) ∇y f(x, y⁺; ξ) (ζ = π) at fixed adapter values with non-zero
B and D, computed (a) exactly by double backward over the fp32 model with eager attention, (b) by finite
differences over the fp32 model and (c) over the low-precision model (``--low``: bf16 or fp16), for several
``fd_c``. Prints the relative error of the whole hypergradient and of its second-order term
T = ∇x f(x, y⁺; ξ) − hypergradient, plus the low-precision floor: the error of the first-order part alone.
Dropout off (eval mode), so the passes are deterministic.

    .venv/bin/python benchmarks/hypergradient_precision.py [--alpha 0.5 --batch 16 --seq 64 --low bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import math

import torch

from pf2lora import models
from pf2lora.adapters import AdaptedModel, add_two_level_lora
from pf2lora.algorithms.base import grad_dict, leaves
from pf2lora.algorithms.pf2lora import PF2LoRA
from pf2lora.execution import LossScaler, loss_scaling
from pf2lora.experiment import keep_heads_fp32


class Fixed:
    """π then ξ, forever (ζ = π: the fd pair reuses π)."""

    def __init__(self, batches: list) -> None:
        self.batches, self.i = batches, 0

    def next(self) -> dict:
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b


def model(dtype: torch.dtype) -> AdaptedModel:
    net, _ = models.load("minilm", "classification", 2, "eager", dtype)
    add_two_level_lora(net, ["query", "value"], r=8, r_private=2, alpha=16, dropout=0.0)
    if dtype != torch.float32:
        keep_heads_fp32(net, ["classifier"])
    net.eval()
    return AdaptedModel(net, lambda m, b: m(**b).loss, ["classifier"])


def norm(d: dict) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in d.values()))


def diff(a: dict, b: dict) -> dict:
    return {k: a[k].double() - b[k].double() for k in a}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--low", choices=["bf16", "fp16"], default="bf16")
    args = p.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    m32, m16 = model(torch.float32), model(torch.bfloat16 if args.low == "bf16" else torch.float16)
    g = torch.Generator().manual_seed(0)
    x = m32.fresh_lora(m32.common_names, g)
    y = m32.fresh_lora(m32.private_names, g)
    for params in (x, y):
        for k, t in params.items():
            if k.endswith(("lora_B", "lora_D")):
                t.normal_(0, 0.05, generator=g)
    vocab = m32.net.config.vocab_size
    batches = [
        {
            "input_ids": torch.randint(0, vocab, (args.batch, args.seq), generator=g),
            "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
            "labels": torch.randint(0, 2, (args.batch,), generator=g),
        }
        for _ in range(2)
    ]

    def hyper(mdl: AdaptedModel, mode: str, c: float | None = None) -> dict:
        alg = PF2LoRA({"hypergradient": mode, "batches": "shared", "lr_private": args.alpha, "fd_c": c})
        with scaled(mdl):
            return alg.hypergradient(mdl, leaves(x), leaves(y), Fixed(batches))[1]

    def scaled(mdl: AdaptedModel) -> contextlib.AbstractContextManager:
        """Loss scaling over an fp16 base, as the runtime does."""
        return loss_scaling(LossScaler() if mdl.base_dtype == torch.float16 else None)

    def first_order(mdl: AdaptedModel) -> dict:
        with scaled(mdl):
            return _first_order(mdl)

    def _first_order(mdl: AdaptedModel) -> dict:
        xs, ys = leaves(x), leaves(y)
        g_y = grad_dict(mdl.loss({**xs, **ys}, batches[0]), ys)
        y_plus = {k: (ys[k] - args.alpha * g_y[k]).detach() for k in ys}
        return grad_dict(mdl.loss({**xs, **y_plus}, batches[1]), xs)

    exact = hyper(m32, "exact")
    term = norm(diff(first_order(m32), exact))
    total = norm(exact)
    floor = norm(diff(first_order(m16), first_order(m32)))
    print(f"MiniLM, batch {args.batch} × {args.seq}, α = {args.alpha}; ‖hypergradient‖ = {total:.4g}, ‖T‖ = {term:.4g}")
    print(
        f"{args.low} floor (first-order part only): {floor / total:.2e} of ‖hypergradient‖, {floor / term:.2e} of ‖T‖"
    )
    print(f"{'base':6s} {'fd_c':>8s} {'err / ‖hyper‖':>14s} {'err / ‖T‖':>10s}")
    for dtype, mdl in (("fp32", m32), (args.low, m16)):
        for c in (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0):
            err = norm(diff(hyper(mdl, "fd", c), exact))
            print(f"{dtype:6s} {c:8.0e} {err / total:14.2e} {err / term:10.2e}")


if __name__ == "__main__":
    main()
