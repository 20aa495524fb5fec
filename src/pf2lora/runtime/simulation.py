"""In-process federation runtime: many simulated clients over one frozen base model.

The runtime knows no algorithm: it calls the :class:`~pf2lora.algorithms.base.Algorithm` interface
(init, local update, aggregate, personalize), moves every client→server message as one
:class:`~pf2lora.federation.Payload`, and enforces the algorithm's declaration of what it communicates
(:func:`~pf2lora.federation.check_payload`). Per-client state is the algorithm's private state,
optimizer state and data position only, so memory grows by adapter size per client.
A run is a function of its config and seed: every client draws its dropout from a seed derived from
(seed, round, client), and its batches from its own generator. The whole federation is one
serializable dict (:meth:`Simulation.state_dict`), so a run resumes bit for bit.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from pf2lora.adapters import AdaptedModel, Params
from pf2lora.algorithms.base import Algorithm, ClientState, spec_of
from pf2lora.devices import to_device
from pf2lora.errors import DivergenceError
from pf2lora.execution import InstanceMixer, LossScaler, instance_mixing, learning_rate_scale, loss_scaling
from pf2lora.federation import (
    BatchStream,
    ClientData,
    FederationConfig,
    History,
    Payload,
    PrivacyError,
    aggregation_weights,
    check_payload,
    derive_seed,
    lr_factor,
    sample_clients,
)
from pf2lora.runtime.batched import Lockstep
from pf2lora.runtime.rounds import ServerRound

T = TypeVar("T")
Evaluator = Callable[[AdaptedModel, Params, ClientData], dict[str, float]]

#: Clients per batched pass on an accelerator when ``federation.parallel_clients`` is not set: every sampled
#: client of the paper's settings (8-100 clients at fraction ≤ 0.3); thousands of simulated clients go in waves.
AUTO_PARALLEL = 32

#: Version of the :meth:`Simulation.state_dict` layout.
STATE_FORMAT = 1


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
        indices: Sequence[int] | None = None,
        num_clients: int | None = None,
    ) -> None:
        if not clients:
            raise ValueError("a federation needs at least one client")
        if len({c.cid for c in clients}) != len(clients):
            raise ValueError("client ids must be unique")
        self.model, self.algorithm, self.clients, self.config = model, algorithm, list(clients), config
        self.evaluator = evaluator
        self.eval_clients = list(eval_clients) if eval_clients is not None else self.clients
        #: Each client's index in the whole federation of ``num_clients`` (a node holds one client of many): its
        #: seeds and initial state depend on that index only, so a node's client equals the in-process one.
        self.indices = list(indices) if indices is not None else list(range(len(self.clients)))
        self.num_clients = num_clients if num_clients is not None else len(self.clients)
        if len(self.indices) != len(self.clients) or not all(0 <= i < self.num_clients for i in self.indices):
            raise ValueError(f"indices must give each client a place among the {self.num_clients} clients")
        self.eval_indices = self.indices if eval_clients is None else list(range(len(self.eval_clients)))
        self.communicated = algorithm.communicated(model)
        self.private = algorithm.private(model)
        overlap = set(self.communicated) & set(self.private)
        if overlap:
            raise ValueError(f"{algorithm.name} declares {sorted(overlap)[0]!r} both communicated and private")
        seed = config.seed
        # where clients' state waits between rounds: the compute device, or CPU memory when offloaded
        self.home = torch.device("cpu") if config.offload_client_state else model.device
        self.global_state: Params = algorithm.init_global(model, torch.Generator().manual_seed(seed))
        self._check_global(self.global_state, "init_global")
        self.states: dict[str, ClientState] = {}
        self.streams: dict[str, BatchStream] = {}
        for i, c in zip(self.indices, self.clients, strict=True):
            gen = torch.Generator().manual_seed(derive_seed(seed, 1, i))
            self.states[c.cid] = algorithm.init_client(model, i, self.num_clients, gen).to(self.home)
            self.streams[c.cid] = BatchStream(c, config.batch_size, derive_seed(seed, 2, i))
        self.round = 0
        self.history = History()
        #: Clients per batched pass (1: one after another). Unset, it is AUTO_PARALLEL on an accelerator and 1 on
        #: the CPU, whose cores one client's pass already fills: there, padding every client's batch to a
        #: common length cost more than batching saved (README, "All clients of a round in one pass").
        self.parallel = config.parallel_clients or (AUTO_PARALLEL if model.device.type != "cpu" else 1)
        lockstep = Lockstep(model) if self.parallel != 1 else None
        blocker = lockstep.blocker(algorithm, self.clients[0].fetch(np.arange(1))) if lockstep else None
        #: The lockstep that batches clients' passes (None: clients run one after another).
        self.lockstep = lockstep if blocker is None else None
        #: How clients execute, in words.
        self.execution = (
            f"one client at a time ({blocker})"
            if blocker
            else "one client at a time"
            if self.lockstep is None
            else f"up to {self.parallel} clients per batched pass"
        )
        #: Loss scaling for a float16 base (its backward would underflow small gradients).
        self.scaler = LossScaler() if model.base_dtype == torch.float16 else None
        if blocker and (config.parallel_clients or 1) > 1:
            warnings.warn(f"federation.parallel_clients: clients run one at a time: {blocker}", stacklevel=2)

    def _check_global(self, state: Params, where: str) -> None:
        if set(state) != set(self.communicated):
            extra = sorted(set(state) ^ set(self.communicated))
            raise PrivacyError(
                f"{self.algorithm.name}: {where} global state differs from the declaration at {extra[0]!r}"
            )

    def warm_start(self, global_state: Params | None = None, private: Mapping[str, Params] | None = None) -> None:
        """Replace the initial global state and/or some clients' private adapters (before round 1)."""
        if self.round:
            raise RuntimeError("warm_start must come before the first round")
        if global_state is not None:
            unknown = set(global_state) - set(self.communicated)
            if unknown:
                raise KeyError(f"warm_start global_state has non-communicated tensors: {sorted(unknown)}")
            self.global_state = {k: v.detach().clone() for k, v in global_state.items()}
        for cid, tensors in (private or {}).items():
            unknown = set(tensors) - set(self.private)
            if unknown:
                raise KeyError(f"warm_start private state of {cid!r} has non-private tensors: {sorted(unknown)}")
            self.states[cid].private = {k: v.detach().clone() for k, v in tensors.items()}

    def check_payload(self, payload: Payload, broadcast: Mapping[str, Any]) -> None:
        """Enforce the algorithm's declaration on an upload (see :func:`pf2lora.federation.check_payload`)."""
        expected = self.algorithm.upload_spec(spec_of(broadcast), self.states[payload.cid])
        check_payload(payload, expected, self.private, self.algorithm.metric_names, self.algorithm.name)

    def sample_clients(self, rnd: int) -> list[int]:
        """Indices of this round's participants (all of them at fraction 1)."""
        return sample_clients(self.num_clients, self.config.client_fraction, self.config.seed, rnd)

    def run_round(self, on_client: Callable[[dict[str, Any]], None] | None = None) -> None:
        """One round: broadcast, local updates, aggregation (:class:`ServerRound`); appends rows to ``self.history``."""
        rnd, cfg = self.round + 1, self.config
        self.model.net.train()
        sampled = self.sample_clients(rnd)
        weights = aggregation_weights([self.clients[i].num_train for i in sampled], cfg.aggregation)
        server = ServerRound(self.algorithm, self.global_state, rnd, cfg.local_steps, weights)
        wave = self.parallel if self.lockstep is not None else 1
        for first in range(0, len(sampled), wave):
            chunk = sampled[first : first + wave]
            tc = time.perf_counter()
            payloads = self._local_updates(rnd, chunk)
            seconds = (time.perf_counter() - tc) / len(chunk)  # clients of one batched pass share its time
            for payload in payloads:
                row = server.add(payload, seconds)
                if on_client is not None:
                    on_client(row)
        new_global, summary = server.finish()
        self._check_global(new_global, f"round {rnd}: aggregate")
        self.global_state = new_global
        self.round = rnd
        self.history.train.extend(server.rows)
        self.history.rounds.append(summary)

    def _batched(self, count: int) -> bool:
        """Whether ``count`` clients go through the lockstep (always off the CPU, where its dropout streams are
        the only ones that make batched and sequential runs agree; on the CPU one client runs plainly)."""
        return self.lockstep is not None and (count > 1 or self.model.device.type != "cpu")

    def _local_updates(self, rnd: int, chunk: Sequence[int]) -> list[Payload]:
        """Checked uploads of the clients ``chunk`` (positions in ``self.clients``) from the current global state.

        Each client's dropout comes from a seed of (seed, round, client) and its batches from its own stream,
        so a client's update is the same whether it runs alone or batched with others.
        """
        cfg, device = self.config, self.model.device
        lr = lr_factor(cfg.lr_schedule, rnd, cfg.rounds, cfg.lr_min_ratio)

        def job(i: int) -> Callable[[AdaptedModel], tuple[Params, dict[str, float]]]:
            cid = self.clients[i].cid

            def update(model: AdaptedModel) -> tuple[Params, dict[str, float]]:
                received = {k: v.clone() for k, v in self.global_state.items()}
                state = self.states[cid].to(device)
                with learning_rate_scale(lr):
                    out = self.algorithm.local_update(model, received, state, self.streams[cid], cfg.local_steps)
                self.states[cid] = state.to(self.home)
                return out

            return update

        seeds = [derive_seed(cfg.seed, 4, rnd, self.indices[i]) for i in chunk]
        payloads = []
        for i, (tensors, metrics) in zip(chunk, self._run_clients([job(i) for i in chunk], seeds), strict=True):
            client = self.clients[i]
            payload = Payload(client.cid, rnd, tensors, client.num_train, metrics)
            self.check_payload(payload, self.global_state)
            payloads.append(payload)
        return payloads

    def train_client(self, rnd: int, position: int = 0) -> Payload:
        """The checked upload of the client at ``position`` in round ``rnd`` from ``self.global_state`` (a node's
        side of a round when the server is elsewhere); its private state advances, ``self.round`` does not."""
        self.model.net.train()
        return self._local_updates(rnd, [position])[0]

    def _run_clients(
        self, jobs: Sequence[Callable[[AdaptedModel], T]], seeds: Sequence[int], plain: bool = False
    ) -> list[T]:
        """``jobs[k](model)`` for each client k, its randomness seeded by ``seeds[k]``: batched through the
        lockstep (each with its own generator), or one after another (the global RNG seeded per client; always
        where ``plain``)."""
        with loss_scaling(self.scaler):
            if plain or not self._batched(len(jobs)):
                results = []
                for job, seed in zip(jobs, seeds, strict=True):
                    torch.manual_seed(seed)
                    results.append(job(self.model))
                return results
            assert self.lockstep is not None
            device = self.model.device
            return self.lockstep.run(jobs, [torch.Generator(device).manual_seed(s) for s in seeds])

    def _personalize(self, model: AdaptedModel, client: ClientData) -> tuple[Params, InstanceMixer | None]:
        """Adapter values of ``client``'s personalized model under the current global state, and the algorithm's
        per-instance mixing of them (None: every test instance sees those values)."""
        pos = next((i for i, c in enumerate(self.eval_clients) if c is client), 0)
        idx = self.eval_indices[pos]
        stream = BatchStream(client, self.config.batch_size, derive_seed(self.config.seed, 5, self.round, idx))
        state = self.states.get(client.cid)
        params = self.algorithm.personalize(
            model, self.global_state, state.to(self.model.device) if state else None, stream
        )
        mixer = self.algorithm.instance_mixer(model, params, stream) if self.algorithm.mixes_instances() else None
        return params, mixer

    def evaluated_params(self, client: ClientData) -> Params:
        """Exactly the personalized values :meth:`evaluate` scores for ``client`` now (same seeding)."""
        return self.as_evaluated(client, lambda model, params, client: params)

    def as_evaluated(self, client: ClientData, fn: Callable[[AdaptedModel, Params, ClientData], T]) -> T:
        """``fn(model, params, client)`` on ``client``'s personalized model exactly as :meth:`evaluate` scores it
        now (same seeding, per-instance mixing included)."""
        self.model.net.eval()
        torch.manual_seed(derive_seed(self.config.seed, 6, self.round))
        with loss_scaling(self.scaler):
            return self._scored(self.model, client, fn)[0]

    def _scored(
        self, model: AdaptedModel, client: ClientData, fn: Callable[[AdaptedModel, Params, ClientData], T]
    ) -> tuple[T, Params]:
        """``fn`` on the personalized model of ``client`` under its instance mixer, without autograd; and the
        personalized values."""
        params, mixer = self._personalize(model, client)
        # evaluation never feeds autograd: no version counters, no views
        with torch.inference_mode(), instance_mixing(mixer):
            return fn(model, params, client), params

    def _ranks(self, params: Params) -> dict[str, float]:
        """``rank:<layer>`` per adapted layer of the personalized ΔW and their mean ``rank_mean`` (none when
        ``rank_threshold`` is 0)."""
        if not self.config.rank_threshold or not self.model.layers:
            return {}
        ranks = self.model.effective_ranks(params, self.config.rank_threshold)
        return {f"rank:{name}": float(r) for name, r in ranks.items()} | {"rank_mean": statistics.fmean(ranks.values())}

    def evaluate(self) -> None:
        """Evaluate every evaluation client's personalized model (batched like training); appends eval rows."""
        if self.evaluator is None:
            return
        evaluator = self.evaluator
        # per-instance mixing scales rows of one client's batch: such clients are evaluated one at a time
        plain = self.algorithm.mixes_instances()
        wave = self.parallel if self.lockstep is not None and not plain else 1
        for first in range(0, len(self.eval_clients), wave):
            chunk = self.eval_clients[first : first + wave]

            def job(client: ClientData) -> Callable[[AdaptedModel], dict[str, float]]:
                def score(model: AdaptedModel) -> dict[str, float]:
                    metrics, params = self._scored(model, client, evaluator)
                    return metrics | self._ranks(params)

                return score

            self.model.net.eval()
            seed = derive_seed(self.config.seed, 6, self.round)
            results = self._run_clients([job(c) for c in chunk], [seed] * len(chunk), plain=plain)
            for client, metrics in zip(chunk, results, strict=True):
                bad = next((k for k, v in metrics.items() if not math.isfinite(v)), None)
                if bad is not None:
                    raise DivergenceError(
                        f"{self.algorithm.name}: round {self.round}, client {client.cid}: evaluation gave {bad} = "
                        f"{metrics[bad]}; training diverged — the learning rate is the likely cause, lower it"
                    )
                self.history.eval.append(
                    {"round": self.round, "step": self.round * self.config.local_steps, "client": client.cid, **metrics}
                )

    def run(
        self,
        on_round: Callable[[int, History], None] | None = None,
        on_client: Callable[[dict[str, Any]], None] | None = None,
    ) -> History:
        """The remaining rounds, evaluating at round 0, every ``eval_every`` rounds and after the last.

        Starts after ``self.round``: a simulation restored by :meth:`load_state_dict` continues there.
        """
        every = self.config.eval_every
        if self.round == 0 and every and not self.history.eval:
            self.evaluate()
        for rnd in range(self.round + 1, self.config.rounds + 1):
            self.run_round(on_client)
            if (every and rnd % every == 0) or rnd == self.config.rounds:
                self.evaluate()
            if on_round is not None:
                on_round(rnd, self.history)
        return self.history

    def private_parameters_per_client(self) -> float:
        """Mean scalars in a client's private state (the adapter that never leaves it)."""
        return sum(sum(t.numel() for t in s.private.values()) for s in self.states.values()) / len(self.states)

    def trainable_parameters_per_client(self) -> float:
        """Mean scalars a client trains, as its algorithm counts them (e.g. HETLoRA at the client's rank)."""
        counts = [self.algorithm.trainable_parameters(self.global_state, s) for s in self.states.values()]
        return sum(counts) / len(counts)

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole federation after ``self.round`` rounds: global state, every client's private and
        optimizer state and batch position, the RNG, and the history (tensors and plain values only)."""
        return {
            "format": STATE_FORMAT,
            "algorithm": self.algorithm.name,
            "round": self.round,
            "global": to_device(self.global_state, "cpu"),
            "clients": {
                cid: {"state": self.states[cid].to("cpu").state_dict(), "stream": self.streams[cid].state_dict()}
                for cid in self.states
            },
            "torch_rng": torch.get_rng_state(),
            "loss_scale": self.scaler.state_dict() if self.scaler is not None else {},
            "history": {"train": self.history.train, "eval": self.history.eval, "rounds": self.history.rounds},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a simulation with the same config, algorithm and clients."""
        if state.get("runtime") == "flower":
            raise ValueError("it is a Flower run's checkpoint; resume it with --runtime flower")
        if state.get("format") != STATE_FORMAT or state.get("algorithm") != self.algorithm.name:
            raise ValueError(
                f"checkpoint is of format {state.get('format')} for {state.get('algorithm')!r}; "
                f"expected format {STATE_FORMAT} for {self.algorithm.name!r}"
            )
        if set(state["clients"]) != set(self.states):
            raise ValueError("checkpoint holds different clients than this run")
        self._check_global(state["global"], "checkpoint")
        self.global_state = to_device(dict(state["global"]), self.model.device)
        for cid, client in state["clients"].items():
            self.states[cid] = ClientState.from_state_dict(client["state"]).to(self.home)
            self.streams[cid].load_state_dict(client["stream"])
        torch.set_rng_state(state["torch_rng"])
        if self.scaler is not None and state.get("loss_scale"):
            self.scaler.load_state_dict(state["loss_scale"])
        self.round = int(state["round"])
        h = state["history"]
        self.history = History(list(h["train"]), list(h["eval"]), list(h["rounds"]))
