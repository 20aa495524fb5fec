"""Per-FedAvg-LoRA (the paper's Appendix A; Fallah et al., 2020) over one rank-r LoRA adapter.

Each client minimises ``f(x − α∇f(x))`` (MAML objective) with AdamW (or SGD) at lr η, then the
server averages x. Per local step, with independent batches D, D', D'':

* ``first_order``: x̃ = x − α∇f(x; D), gradient ∇f(x̃; D') (FO-MAML);
* ``hessian``:     gradient (I − α∇²f(x; D''))∇f(x̃; D'), the Hessian-vector product by double
  backward (Per-FedAvg's HF variant, with an exact product instead of a finite difference).

Personalisation before evaluation: one SGD step with lr α on a local training batch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat

from pf2lora.adapters import AdaptedModel, Params
from pf2lora.algorithms.base import (
    MAX_LR,
    Algorithm,
    BatchSource,
    ClientState,
    OptimizedConfig,
    apply_step,
    finish_local_update,
    grad_dict,
    leaves,
    make_optimizer,
)


class PerFedAvgConfig(OptimizedConfig):
    """Hyperparameters of Per-FedAvg-LoRA."""

    lr_inner: PositiveFloat = Field(1e-2, le=MAX_LR)
    """α: the one-step adaptation learning rate (training and personalisation)."""
    variant: Literal["first_order", "hessian"] = "first_order"


class PerFedAvg(Algorithm):
    """MAML-style personalised FedAvg over LoRA."""

    name = "perfedavg"
    display_name = "Per-FedAvg-LoRA"
    Config = PerFedAvgConfig
    config: PerFedAvgConfig

    def needs_exact_second_derivatives(self) -> bool:
        return self.config.variant == "hessian"

    def local_update(
        self, model: AdaptedModel, received: Params, state: ClientState, data: BatchSource, steps: int
    ) -> tuple[Params, dict[str, float]]:
        c = self.config
        x = leaves(received)
        opt = make_optimizer(c.optimizer, x, c.lr, c.weight_decay, state.optimizer)
        losses = []
        for _ in range(steps):
            loss = model.loss(x, data.next())
            g = grad_dict(loss, x)
            adapted = {k: (x[k] - c.lr_inner * g[k]).detach().requires_grad_(True) for k in x}
            g_outer = grad_dict(model.loss(adapted, data.next()), adapted)
            if c.variant == "hessian":
                g_inner = grad_dict(model.loss(x, data.next()), x, create_graph=True)
                dot = sum((g_inner[k] * g_outer[k]).sum() for k in x)
                hvp = grad_dict(dot, x)  # type: ignore[arg-type]
                g_outer = {k: g_outer[k] - c.lr_inner * hvp[k] for k in x}
            apply_step(opt, x, g_outer)
            losses.append(float(loss.detach()))
        return finish_local_update(x, state, opt, losses)

    def personalize(
        self, model: AdaptedModel, global_state: Params, state: ClientState | None, data: BatchSource | None
    ) -> Params:
        if data is None:
            return {k: v.detach() for k, v in global_state.items()}
        x = leaves(global_state)
        g = grad_dict(model.loss(x, data.next()), x)
        return {k: (x[k] - self.config.lr_inner * g[k]).detach() for k in x}
