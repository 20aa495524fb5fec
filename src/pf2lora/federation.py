"""Runtime-neutral federation vocabulary: what any runtime (in-process, Flower) shares.

Client data and batch streams, the one message a client sends (:class:`Payload`), seeding, aggregation
weights, and the enforcement of an algorithm's declaration of what it communicates
(:func:`check_payload`). Nothing here runs a round; :mod:`pf2lora.runtime` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import Tensor

from pf2lora.algorithms.base import StateSpec
from pf2lora.devices import DEVICE_PATTERN
from pf2lora.errors import DivergenceError


class PrivacyError(RuntimeError):
    """A client tried to send something its algorithm did not declare as communicated."""


@dataclass
class ClientData:
    """One client's local data: ``fetch(indices)`` builds a training batch; ``test`` (the client's own test split)
    and ``global_test`` (the set shared by all clients, or None) are for the evaluator."""

    cid: str
    num_train: int
    fetch: Callable[[np.ndarray], Any]
    test: Any = None
    global_test: Any = None


def pool_clients(clients: Sequence[ClientData], cid: str = "pooled") -> ClientData:
    """One client holding every client's training data (centralized training)."""
    offsets = np.cumsum([0] + [c.num_train for c in clients])

    def fetch(idx: np.ndarray) -> Any:
        # A batch may span clients: fetch each client's rows, then merge dict batches by padding-aware concat.
        owner = np.searchsorted(offsets, idx, side="right") - 1
        parts = [clients[k].fetch(idx[owner == k] - offsets[k]) for k in np.unique(owner)]
        return parts[0] if len(parts) == 1 else _concat_batches(parts)

    return ClientData(cid, int(offsets[-1]), fetch)


def _concat_batches(parts: list[Any]) -> Any:
    """Concatenate batches (dicts of tensors padded to different widths, or tuples of tensors)."""
    if isinstance(parts[0], dict):
        out = {}
        for key in parts[0]:
            tensors = [p[key] for p in parts]
            if tensors[0].dim() == 2:
                width = max(t.shape[1] for t in tensors)
                fill = -100 if key == "labels" else 0
                tensors = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill) for t in tensors]
            out[key] = torch.cat(tensors)
        return out
    return type(parts[0])(torch.cat(ts) for ts in zip(*parts, strict=True))


class BatchStream:
    """Endless shuffled mini-batches of a client's training set (a fresh permutation per epoch).

    Its position (generator state, permutation, offset) is a plain dict (:meth:`state_dict`), so a
    resumed run draws exactly the batches the interrupted one would have drawn.
    """

    def __init__(self, data: ClientData, batch_size: int, seed: int) -> None:
        if data.num_train < 1:
            raise ValueError(f"client {data.cid!r} has no training examples")
        self.data = data
        self.batch_size = min(batch_size, data.num_train)
        self.rng = np.random.default_rng(seed)
        self._order = np.arange(0)
        self._pos = 0

    def next(self) -> Any:
        """The next mini-batch; a full-batch stream always returns every example in order."""
        n = self.data.num_train
        if self.batch_size == n:
            return self.data.fetch(np.arange(n))
        if self._pos + self.batch_size > len(self._order):
            self._order = self.rng.permutation(n)
            self._pos = 0
        idx = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return self.data.fetch(idx)

    def state_dict(self) -> dict[str, Any]:
        """Generator state, current permutation and offset (tensors and plain values only)."""
        return {"rng": self.rng.bit_generator.state, "order": torch.from_numpy(self._order.copy()), "pos": self._pos}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken."""
        self.rng.bit_generator.state = state["rng"]
        self._order = state["order"].numpy().copy()
        self._pos = int(state["pos"])


@dataclass(frozen=True)
class Payload:
    """The only thing a client sends to the server."""

    cid: str
    round: int
    tensors: Mapping[str, Tensor]
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        """Scalars sent."""
        return sum(t.numel() for t in self.tensors.values())

    @property
    def num_bytes(self) -> int:
        """Bytes sent (tensor payload only)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class FederationConfig(BaseModel):
    """How the federation runs, independent of the algorithm."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    rounds: PositiveInt = Field(10, le=1_000_000)
    local_steps: PositiveInt = Field(10, le=1_000_000)
    batch_size: PositiveInt = Field(16, le=1_000_000)
    client_fraction: float = Field(1.0, gt=0.0, le=1.0)
    aggregation: Literal["uniform", "num_examples"] = "uniform"
    eval_every: int = Field(1, ge=0)
    """Evaluate every this many rounds (0: only after the last round)."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """The learning rate of every optimizer the clients train with, per round (:func:`lr_factor`): ``cosine`` is
    OpenFedLLM's per-round cosine decay; step sizes inside an algorithm's update rule (PF2LoRA's α, Per-FedAvg's
    inner step) and the fine-tuning before an evaluation keep their configured values."""
    lr_min_ratio: float = Field(0.0, ge=0.0, le=1.0)
    """Where ``cosine``/``linear`` decay to, as a fraction of the configured learning rate."""
    rank_threshold: float = Field(0.9, ge=0.0, le=1.0)
    """At every evaluation, the effective rank of each client's personalized ΔW per adapted layer (the paper's
    rule: the fewest singular values holding this share of their sum) goes into the eval rows; 0: not tracked."""
    checkpoint_every: PositiveInt = 1
    """Checkpoint the whole federation every this many rounds (and always after the last)."""
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    """Where to compute: ``auto`` (CUDA if present, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    offload_client_state: bool = False
    """Keep clients' private and optimizer state in CPU memory between rounds (many clients, small device)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """The frozen base's precision; adapters, heads, optimizer moments and hypergradients stay fp32 (fp16: with
    dynamic loss scaling)."""
    parallel_clients: PositiveInt | None = None
    """Clients trained (and evaluated) together in one batched pass; default: on a GPU every sampled client, in
    waves of at most 32, on the CPU 1 (one after another). Results are the same either way (up to float
    rounding); lower it if the device runs short of memory."""
    seed: int = Field(0, ge=0, lt=2**63)


def lr_factor(schedule: Literal["constant", "cosine", "linear"], rnd: int, rounds: int, min_ratio: float) -> float:
    """The learning-rate multiplier of round ``rnd`` (1-based) of ``rounds``: 1 in round 1, then decaying towards
    ``min_ratio`` as OpenFedLLM's ``cosine_learning_rate(rnd - 1, rounds, ...)`` (the last round still trains)."""
    t = (rnd - 1) / rounds
    if schedule == "cosine":
        return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * t
    return 1.0


def derive_seed(*parts: int) -> int:
    """A 63-bit seed determined by ``parts`` (independent streams per round/client/purpose)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def sample_clients(num_clients: int, fraction: float, seed: int, rnd: int) -> list[int]:
    """Indices of round ``rnd``'s participants (all of them at fraction 1), a function of (seed, round)."""
    k = max(1, math.ceil(fraction * num_clients))
    if k == num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng(derive_seed(seed, 3, rnd))
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


def aggregation_weights(num_examples: Sequence[int], how: Literal["uniform", "num_examples"]) -> list[float]:
    """Normalised weights of clients holding ``num_examples`` training examples: equal, or proportional to them."""
    if how == "uniform":
        return [1.0 / len(num_examples)] * len(num_examples)
    total = sum(num_examples)
    return [n / total for n in num_examples]


def check_payload(
    payload: Payload, expected: StateSpec, private: Sequence[str], metric_names: Sequence[str], algorithm: str
) -> None:
    """Enforce an algorithm's declaration on one upload.

    The upload must hold exactly the ``expected`` communicated tensors with their shapes and dtypes, and
    metrics must be real numbers under the algorithm's declared names; anything else is a
    :class:`PrivacyError` naming client, round and tensor. A non-finite loss or tensor is a
    :class:`~pf2lora.errors.DivergenceError` (training diverged, the upload is not a leak).
    """
    where = f"{algorithm}: client {payload.cid}, round {payload.round}"
    private_set = set(private)
    for name, t in payload.tensors.items():
        if name in private_set:
            raise PrivacyError(f"{where}: tried to send the client-private tensor {name!r}")
        if name not in expected:
            raise PrivacyError(f"{where}: sent the undeclared tensor {name!r}")
        if not isinstance(t, Tensor):
            raise PrivacyError(f"{where}: {name!r} is a {type(t).__name__}, not a tensor")
        spec = expected[name]
        if tuple(t.shape) != spec.shape or t.dtype != spec.dtype:
            raise PrivacyError(
                f"{where}: {name!r} has shape {tuple(t.shape)} and dtype {t.dtype}, "
                f"declared {spec.shape} and {spec.dtype}"
            )
    missing = [n for n in expected if n not in payload.tensors]
    if missing:
        raise PrivacyError(f"{where}: upload lacks the declared tensor {missing[0]!r} ({len(missing)} missing)")
    for key, value in payload.metrics.items():
        if key not in metric_names:
            raise PrivacyError(f"{where}: sent the undeclared metric {key!r}")
        if isinstance(value, bool) or not isinstance(value, Real):
            raise PrivacyError(f"{where}: metric {key!r} is a {type(value).__name__}, not a number")
    bad_metric = next((k for k, v in payload.metrics.items() if not math.isfinite(float(v))), None)
    bad_tensor = next((n for n, t in payload.tensors.items() if not bool(torch.isfinite(t).all())), None)
    if bad_metric is not None or bad_tensor is not None:
        what = f"{bad_metric} = {payload.metrics[bad_metric]}" if bad_metric else f"non-finite values in {bad_tensor!r}"
        raise DivergenceError(f"{where}: training diverged ({what}); the learning rate is the likely cause")


@dataclass
class History:
    """Rows of a run: ``train`` (per round and client), ``eval`` (per evaluation and client), ``rounds``."""

    train: list[dict[str, Any]] = field(default_factory=list)
    eval: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
