"""Where a run computes: device names (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) and moving state there.

The frozen base, the adapters, optimizer state and batches live on one device; batches are built on the
CPU by the tasks and moved at the model's door (:meth:`pf2lora.adapters.AdaptedModel.loss`), so tasks and
algorithms stay device-agnostic. Random initialisations are drawn on the CPU and then moved, so a run
starts from the same values on every device.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from pf2lora.errors import ConfigError

#: Accepted values of ``federation.device``.
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"


def resolve_device(spec: str) -> torch.device:
    """The device a spec names; ``auto`` is CUDA if present, else MPS, else CPU.

    Raises a one-line :class:`ConfigError` naming ``federation.device`` for a device this machine lacks.
    """
    if not re.match(DEVICE_PATTERN, spec):
        raise ConfigError(f"federation.device: {spec!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"federation.device: {spec} requested, but this machine has no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"federation.device: {spec} requested, but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"federation.device: {spec} requested, but MPS is not available here")
    return device


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples, nested) on ``device``; a no-op where it is already."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
