"""PF2LoRA without bilevel optimisation (the paper's Appendix F.2 ablation).

Same two-level adapters and optimizers as PF2LoRA (SGD with lr α on the client adapter, AdamW or SGD
with lr η on the common adapter), but both are updated at once from first-order gradients of one
batch: ``y ← y − α∇y f(x, y; ξ)``, ``x ← x − η∇x f(x, y; ξ)``; no hypergradient.
"""

from __future__ import annotations

from pf2lora.adapters import AdaptedModel, Params
from pf2lora.algorithms.base import (
    BatchSource,
    ClientState,
    apply_step,
    finish_local_update,
    grad_dict,
    leaves,
    make_optimizer,
)
from pf2lora.algorithms.pf2lora import PF2LoRA, PF2LoRAConfig


class PF2LoRANoBOConfig(PF2LoRAConfig):
    """PF2LoRA's hyperparameters; the hypergradient and batch options are ignored."""


class PF2LoRANoBO(PF2LoRA):
    """Two-level LoRA trained jointly with first-order gradients."""

    name = "pf2lora_nobo"
    display_name = "PF2LoRA w/o BO"
    Config = PF2LoRANoBOConfig

    def needs_exact_second_derivatives(self) -> bool:
        return False

    def local_update(
        self, model: AdaptedModel, received: Params, state: ClientState, data: BatchSource, steps: int
    ) -> tuple[Params, dict[str, float]]:
        c = self.config
        x, y = leaves(received), leaves(state.private)
        opt = make_optimizer(c.optimizer, x, c.lr, c.weight_decay, state.optimizer)
        losses = []
        for _ in range(steps):
            loss = model.loss({**x, **y}, data.next())
            g = grad_dict(loss, {**x, **y})
            y = leaves({k: y[k] - c.lr_private * g[k] for k in y})
            apply_step(opt, x, {k: g[k] for k in x})
            losses.append(float(loss.detach()))
        state.private = {k: v.detach() for k, v in y.items()}
        return finish_local_update(x, state, opt, losses)
