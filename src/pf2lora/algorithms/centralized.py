"""Centralized LoRA: one rank-r LoRA trained on every client's training data pooled together.

The upper bound without privacy: ``pools_client_data`` tells the experiment builder to hand the
runtime a single client holding the union of the clients' training sets; the one model is then
evaluated on every client's own test split. Local training is HOMLoRA's.
"""

from __future__ import annotations

from pf2lora.algorithms.homlora import HOMLoRA, HOMLoRAConfig


class CentralizedConfig(HOMLoRAConfig):
    """Hyperparameters of centralized LoRA (as HOMLoRA's)."""


class Centralized(HOMLoRA):
    """LoRA on pooled data."""

    name = "centralized"
    display_name = "Centralized LoRA"
    Config = CentralizedConfig
    pools_client_data = True
