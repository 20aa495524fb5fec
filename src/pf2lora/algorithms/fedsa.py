"""FedSA-LoRA (Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning", ICLR 2025).

One rank-r LoRA adapter per client whose A matrices are shared and B matrices are personal: the paper
finds that A learns general knowledge and B client-specific knowledge, so the server averages only the
A's; every B and the task head stay on the client.

Choices the paper leaves open (its public code builds on FederatedScope and trains all LoRA factors and the
classifier with one local optimizer):

* A, B and the head are trained jointly by one AdamW (or SGD) at lr η; its state is client-private and
  persists across rounds, as for every algorithm here.
* A starts from the server's one LoRA initialisation (Kaiming-uniform), B at zero and the head at the
  pretrained/initial head, identically on every client.
* The head is private whatever ``lora.head_group`` says: the method keeps every non-A parameter local.
* A client's personalized model is the global A with its own B and head.
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


class FedSAConfig(OptimizedConfig):
    """Hyperparameters of FedSA-LoRA."""


class FedSA(Algorithm):
    """Shared A, private B and head."""

    name = "fedsa"
    display_name = "FedSA-LoRA"
    Config = FedSAConfig
    config: FedSAConfig

    def communicated(self, model: AdaptedModel) -> list[str]:
        return [n for n in model.common_names + model.private_names if n.endswith(".lora_A")]

    def private(self, model: AdaptedModel) -> list[str]:
        return [n for n in model.common_names + model.private_names if n.endswith(".lora_B")] + model.head_names

    def local_update(
        self, model: AdaptedModel, received: Params, state: ClientState, data: BatchSource, steps: int
    ) -> tuple[Params, dict[str, float]]:
        c = self.config
        x, y = leaves(received), leaves(state.private)
        opt = make_optimizer(c.optimizer, {**x, **y}, c.lr, c.weight_decay, state.optimizer)
        losses = first_order_steps(model, {**x, **y}, opt, data, steps)
        state.private = {k: v.detach() for k, v in y.items()}
        return finish_local_update(x, state, opt, losses)
