"""FedDPA (Yang et al., "Dual-Personalizing Adapter for Federated Foundation Models", NeurIPS 2024).

A global LoRA, averaged by the server, and a local LoRA that never leaves the client; at test time the
client's model mixes the two. Two schedules:

* ``T`` (alternating, FedDPA-T): in each round the client first trains its local adapter for ``I`` steps with
  the received global adapter frozen, the forward pass mixing them as ``a·ΔW_local + (1 − a)·ΔW_global``,
  then trains the global adapter alone (the local one out of the forward pass) for ``I`` steps from the
  received value, and uploads it. A round so costs 2·I steps. In a client's first round only the global
  adapter trains (the authors' code creates the local adapter after round 0).
* ``F`` (fine-tune after, FedDPA-F): federated training is FedAvg of the global adapter alone; before each
  evaluation the client trains its local adapter, from its initial value, for ``ft_steps`` steps with the
  global one frozen (mixed as above), as if training had stopped there; nothing of it is kept.

Choices taken from the authors' code (github.com/Lydia-yang/FedDPA, ``peft/tuners/lora/layer.py``,
``main.py``, ``fed_utils/model_aggregation.py``) where the paper leaves them open: the mixing weight a =
``local_weight`` = 0.5; the frozen adapter's output carries no gradient; the server averages the global
adapter only. The personalized model is the mix with weight a. The head (``lora.head_group: common``)
trains with the global adapter and is averaged. Each adapter has its own optimizer, kept on the client
across rounds (the authors' Trainer starts a fresh one each round; pf2lora keeps optimizer state for every
algorithm).

Instance-wise dynamic weighting at inference (``dynamic_weighting: true``; the authors' ``--auto``, in
``GlobalModel_generated.py``): each test instance gets its own mix. Its representation is the last layer's
hidden state at its last token (``embedding: last``, their default; ``mean``: averaged over its tokens) under
the local adapter alone; s = mean cosine similarity to ``instances`` (5) training instances of the client; the
global adapter is weighted by ``max_weight``·s (``max_weight`` 0.5, their "half") and the local one by
1 − ``max_weight``·s, as their ``set_local(['local'], [weight, 1 - weight])`` does with the global adapter
active (``peft/tuners/lora/layer.py`` scales the active adapter by the first weight). That direction (more
like the client's data → more global) reads against the paper's motivation; we could not check it against
the paper's equation and keep the code's. Note that in their script's default ``--batched`` mode every
answer is generated before the loop that sets the weights, so only ``--batched False`` applies them. Choices
of ours: the reference instances are drawn once per evaluation from the client's shuffled
training batches (the authors draw 5 at random for every test instance: same expectation, one forward);
for generation they are whole training rows (prompt and target), the test instance its prompt. The
personalized state that ranks and exports see stays the fixed mix with weight a (a static adapter cannot
carry a per-instance weight).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from pf2lora.adapters import AdaptedModel, Params
from pf2lora.algorithms.base import BatchSource, ClientState, frozen_steps, leaves, make_optimizer
from pf2lora.algorithms.dual import DualConfig, DualLoRA, weighted
from pf2lora.execution import InstanceMixer, branch_weights

#: The inputs of a batch that describe an instance (its targets are left out of the representation).
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class FedDPAConfig(DualConfig):
    """Hyperparameters of FedDPA."""

    variant: Literal["T", "F"] = "T"
    local_weight: float = Field(0.5, ge=0.0, le=1.0)
    """a: the local adapter's weight in the mix (training the local adapter, and at test time)."""
    ft_steps: int = Field(20, ge=0, le=1_000_000)
    """Variant F: the local adapter's training steps before each evaluation."""
    dynamic_weighting: bool = False
    """Mix the adapters per test instance at inference (module docstring); off: every instance uses weight a."""
    instances: int = Field(5, ge=1, le=4096)
    """Dynamic weighting: training instances the test instance is compared with."""
    max_weight: float = Field(0.5, ge=0.0, le=1.0)
    """Dynamic weighting: the global adapter's weight is this times the mean cosine similarity."""
    embedding: Literal["last", "mean"] = "last"
    """Dynamic weighting: an instance's representation, the last layer at its last token or averaged."""

    @model_validator(mode="after")
    def _mixable(self) -> FedDPAConfig:
        if self.dynamic_weighting and not 0.0 < self.local_weight < 1.0:
            raise ValueError("local_weight: dynamic weighting rescales the mix, so it must be in (0, 1)")
        return self


class FedDPA(DualLoRA):
    """Global adapter averaged, local adapter kept; the personalized model mixes them."""

    name = "feddpa"
    display_name = "FedDPA"
    Config = FedDPAConfig
    config: FedDPAConfig

    def local_update(
        self, model: AdaptedModel, received: Params, state: ClientState, data: BatchSource, steps: int
    ) -> tuple[Params, dict[str, float]]:
        c, a = self.config, self.config.local_weight
        losses = []
        if c.variant == "T" and state.extra.get("rounds", 0) > 0:
            losses += self.train_local(model, received, state, data, steps, lambda v: weighted(v, 1 - a, a))
        upload, more = self.train_global(model, received, state, data, steps, lambda v: weighted(v, 1.0, 0.0))
        state.extra["rounds"] = state.extra.get("rounds", 0) + 1
        return upload, {"train_loss": sum(losses + more) / len(losses + more)}

    def personalize(
        self, model: AdaptedModel, global_state: Params, state: ClientState | None, data: BatchSource | None
    ) -> Params:
        c, a = self.config, self.config.local_weight
        local = dict(state.private) if state else {}
        if c.variant == "F" and state is not None and data is not None and c.ft_steps:
            y = leaves(local)
            opt = make_optimizer(c.optimizer, y, c.lr_local, c.weight_decay, {})
            frozen = {k: v.detach() for k, v in global_state.items()}
            frozen_steps(model, y, frozen, opt, data, c.ft_steps, lambda v: weighted(v, 1 - a, a))
            local = {k: v.detach() for k, v in y.items()}
        return weighted({**{k: v.detach() for k, v in global_state.items()}, **local}, 1 - a, a)

    def mixes_instances(self) -> bool:
        return self.config.dynamic_weighting

    def instance_mixer(self, model: AdaptedModel, personalized: Params, data: BatchSource | None) -> InstanceMixer:
        c, a = self.config, self.config.local_weight
        if data is None:
            raise ValueError("feddpa: dynamic weighting needs the client's training data")

        def represent(inputs: Mapping[str, Tensor]) -> Tensor:
            """Unit representations of the rows of ``inputs`` under the local adapter alone."""
            x = {k: v for k, v in inputs.items() if k in INPUTS}
            rows = x["input_ids"].shape[0]
            # personalized = (1 − a)·global + a·local: factors 0 and 1/a leave the local adapter at weight 1
            with branch_weights(torch.zeros(rows), torch.full((rows,), 1.0 / a)):
                hidden = model.call(personalized, **x, output_hidden_states=True).hidden_states[-1]
            mask = x.get("attention_mask", torch.ones(hidden.shape[:2])).to(hidden.device, hidden.dtype)
            if c.embedding == "mean":
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
            else:  # the last real token, under right or left padding
                last = (mask * torch.arange(mask.shape[1], device=mask.device, dtype=mask.dtype)).argmax(1)
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            return torch.nn.functional.normalize(pooled.float(), dim=-1)

        references: list[Tensor] = []

        def mixer(inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
            if not references:
                while sum(len(r) for r in references) < c.instances:
                    references.append(represent(data.next()))
            ref = torch.cat(references)[: c.instances]
            similarity = (represent(inputs) @ ref.T).mean(1)
            w_global = c.max_weight * similarity
            return w_global / (1 - a), (1 - w_global) / a

        return mixer
