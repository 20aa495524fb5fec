"""HOMLoRA: FedAvg of one rank-r LoRA adapter shared by every client (Section 3 of the paper).

Each client runs ``I`` AdamW (or SGD) steps on the common adapter from the broadcast value, the
server averages. There is no client adapter; every client is evaluated with the global adapter.
"""

from __future__ import annotations

from pf2lora.adapters import AdaptedModel, Params
from pf2lora.algorithms.base import (
    Algorithm,
    BatchSource,
    ClientState,
    OptimizedConfig,
    finish_local_update,
    first_order_steps,
    leaves,
    make_optimizer,
)


class HOMLoRAConfig(OptimizedConfig):
    """Hyperparameters of HOMLoRA."""


class HOMLoRA(Algorithm):
    """FedAvg over a single LoRA adapter."""

    name = "homlora"
    display_name = "HOMLoRA"
    Config = HOMLoRAConfig
    config: HOMLoRAConfig

    def local_update(
        self, model: AdaptedModel, received: Params, state: ClientState, data: BatchSource, steps: int
    ) -> tuple[Params, dict[str, float]]:
        c = self.config
        x = leaves(received)
        opt = make_optimizer(c.optimizer, x, c.lr, c.weight_decay, state.optimizer)
        return finish_local_update(x, state, opt, first_order_steps(model, x, opt, data, steps))
