"""In-process federation runtime: many simulated clients over one frozen base model.

The runtime knows no algorithm: it calls the :class:`~pf2lora.algorithms.base.Algorithm` interface
(init, local update, aggregate, personalize), moves every client→server message as one
:class:`Payload`, and refuses a payload that names a client-private tensor. Per-client state is the
client adapter, optimizer state and data position only, so memory grows by adapter size per client.
A run is a function of its config and seed: every client draws its dropout from a seed derived from
(seed, round, client), and its batches from its own generator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import Tensor

from pf2lora.adapters import AdaptedModel, Params
from pf2lora.algorithms.base import Algorithm, ClientState


class PrivacyError(RuntimeError):
    """A client tried to send a tensor that must stay on the client."""


@dataclass
class ClientData:
    """One client's local data: ``fetch(indices)`` builds a training batch; ``test`` is for the evaluator."""

    cid: str
    num_train: int
    fetch: Callable[[np.ndarray], Any]
    test: Any = None


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
    """Endless shuffled mini-batches of a client's training set (a fresh permutation per epoch)."""

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

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: PositiveInt = 10
    local_steps: PositiveInt = 10
    batch_size: PositiveInt = 16
    client_fraction: float = Field(1.0, gt=0.0, le=1.0)
    aggregation: Literal["uniform", "num_examples"] = "uniform"
    eval_every: int = Field(1, ge=0)
    """Evaluate every this many rounds (0: only after the last round)."""
    seed: int = 0


def derive_seed(*parts: int) -> int:
    """A 63-bit seed determined by ``parts`` (independent streams per round/client/purpose)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


Evaluator = Callable[[AdaptedModel, Params, ClientData], dict[str, float]]


@dataclass
class History:
    """Rows of a run: ``train`` (per round and client), ``eval`` (per evaluation and client), ``rounds``."""

    train: list[dict[str, Any]] = field(default_factory=list)
    eval: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)


class Simulation:
    """Runs ``algorithm`` over ``clients`` for ``config.rounds`` rounds on one shared model."""

    def __init__(
        self,
        model: AdaptedModel,
        algorithm: Algorithm,
        clients: Sequence[ClientData],
        config: FederationConfig,
        evaluator: Evaluator | None = None,
        eval_clients: Sequence[ClientData] | None = None,
    ) -> None:
        if not clients:
            raise ValueError("a federation needs at least one client")
        if len({c.cid for c in clients}) != len(clients):
            raise ValueError("client ids must be unique")
        self.model, self.algorithm, self.clients, self.config = model, algorithm, list(clients), config
        self.evaluator = evaluator
        self.eval_clients = list(eval_clients) if eval_clients is not None else self.clients
        self._communicable = set(model.common_names)
        self._private = set(model.private_names)
        seed = config.seed
        self.global_state: Params = algorithm.init_global(model, torch.Generator().manual_seed(seed))
        self.states: dict[str, ClientState] = {}
        self.streams: dict[str, BatchStream] = {}
        for i, c in enumerate(self.clients):
            gen = torch.Generator().manual_seed(derive_seed(seed, 1, i))
            self.states[c.cid] = algorithm.init_client(model, i, len(self.clients), gen)
            self.streams[c.cid] = BatchStream(c, config.batch_size, derive_seed(seed, 2, i))
        self.round = 0

    def warm_start(self, global_state: Params | None = None, private: Mapping[str, Params] | None = None) -> None:
        """Replace the initial global state and/or some clients' private adapters (before round 1)."""
        if self.round:
            raise RuntimeError("warm_start must come before the first round")
        if global_state is not None:
            unknown = set(global_state) - self._communicable
            if unknown:
                raise KeyError(f"warm_start global_state has non-common tensors: {sorted(unknown)}")
            self.global_state = {k: v.detach().clone() for k, v in global_state.items()}
        for cid, tensors in (private or {}).items():
            unknown = set(tensors) - self._private
            if unknown:
                raise KeyError(f"warm_start private state of {cid!r} has non-private tensors: {sorted(unknown)}")
            self.states[cid].private = {k: v.detach().clone() for k, v in tensors.items()}

    def check_payload(self, payload: Payload) -> None:
        """Refuse a payload holding a private or unknown tensor name."""
        for name in payload.tensors:
            if name in self._private:
                raise PrivacyError(f"client {payload.cid} tried to send private tensor {name!r}")
            if name not in self._communicable:
                raise PrivacyError(f"client {payload.cid} sent unknown tensor {name!r}")

    def sample_clients(self, rnd: int) -> list[int]:
        """Indices of this round's participants (all of them at fraction 1)."""
        m = len(self.clients)
        k = max(1, math.ceil(self.config.client_fraction * m))
        if k == m:
            return list(range(m))
        rng = np.random.default_rng(derive_seed(self.config.seed, 3, rnd))
        return sorted(rng.choice(m, size=k, replace=False).tolist())

    def run_round(self, history: History, on_client: Callable[[dict[str, Any]], None] | None = None) -> list[Payload]:
        """One round: broadcast, local updates, aggregation; appends train rows to ``history``."""
        self.round += 1
        rnd, cfg = self.round, self.config
        t0 = time.perf_counter()
        download = sum(t.numel() for t in self.global_state.values())
        download_bytes = sum(t.numel() * t.element_size() for t in self.global_state.values())
        payloads: list[Payload] = []
        self.model.net.train()
        for i in self.sample_clients(rnd):
            client = self.clients[i]
            torch.manual_seed(derive_seed(cfg.seed, 4, rnd, i))
            tc = time.perf_counter()
            received = {k: v.clone() for k, v in self.global_state.items()}
            tensors, metrics = self.algorithm.local_update(
                self.model, received, self.states[client.cid], self.streams[client.cid], cfg.local_steps
            )
            payload = Payload(client.cid, rnd, tensors, client.num_train, metrics)
            self.check_payload(payload)
            payloads.append(payload)
            history.train.append(
                {
                    "round": rnd,
                    "step": rnd * cfg.local_steps,
                    "client": client.cid,
                    **metrics,
                    "upload_params": payload.num_parameters,
                    "upload_bytes": payload.num_bytes,
                    "download_params": download,
                    "download_bytes": download_bytes,
                    "client_seconds": time.perf_counter() - tc,
                }
            )
            if on_client is not None:
                on_client(history.train[-1])
        if cfg.aggregation == "uniform":
            weights = [1.0 / len(payloads)] * len(payloads)
        else:
            total = sum(p.num_examples for p in payloads)
            weights = [p.num_examples / total for p in payloads]
        self.global_state = self.algorithm.aggregate(self.global_state, [dict(p.tensors) for p in payloads], weights)
        history.rounds.append(
            {
                "round": rnd,
                "clients": len(payloads),
                "upload_params": sum(p.num_parameters for p in payloads),
                "upload_bytes": sum(p.num_bytes for p in payloads),
                "download_params": download * len(payloads),
                "download_bytes": download_bytes * len(payloads),
                "seconds": time.perf_counter() - t0,
            }
        )
        return payloads

    def personalized(self, client: ClientData) -> Params:
        """Adapter values of ``client``'s personalized model under the current global state."""
        idx = next((i for i, c in enumerate(self.eval_clients) if c is client), 0)
        stream = BatchStream(client, self.config.batch_size, derive_seed(self.config.seed, 5, self.round, idx))
        return self.algorithm.personalize(self.model, self.global_state, self.states.get(client.cid), stream)

    def evaluate(self, history: History) -> None:
        """Evaluate every evaluation client's personalized model; appends eval rows."""
        if self.evaluator is None:
            return
        self.model.net.eval()
        for client in self.eval_clients:
            torch.manual_seed(derive_seed(self.config.seed, 6, self.round))
            params = self.personalized(client)
            with torch.no_grad():
                metrics = self.evaluator(self.model, params, client)
            history.eval.append(
                {"round": self.round, "step": self.round * self.config.local_steps, "client": client.cid, **metrics}
            )

    def run(
        self,
        on_round: Callable[[int, History], None] | None = None,
        on_client: Callable[[dict[str, Any]], None] | None = None,
    ) -> History:
        """All rounds, evaluating at round 0, every ``eval_every`` rounds and after the last."""
        history = History()
        every = self.config.eval_every
        if every:
            self.evaluate(history)
        for rnd in range(1, self.config.rounds + 1):
            self.run_round(history, on_client)
            if (every and rnd % every == 0) or rnd == self.config.rounds:
                self.evaluate(history)
            if on_round is not None:
                on_round(rnd, history)
        return history
