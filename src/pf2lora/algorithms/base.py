"""The one small interface every federated algorithm implements, plus shared numeric helpers.

An algorithm knows nothing of the runtime: it is handed an :class:`~pf2lora.adapters.AdaptedModel`,
a source of local batches and the tensors the server broadcast, and it returns the tensors a client
uploads. The split mirrors Flower's strategies (server side: ``init_global``/``aggregate``) and
ClientApps (client side: ``init_client``/``local_update``/``personalize``).

An algorithm also *declares* its state (:meth:`Algorithm.communicated`, :meth:`Algorithm.private`,
:meth:`Algorithm.upload_spec`, ``metric_names``): which tensors cross the network and which stay on
the client. Runtimes enforce exactly that declaration; nothing is inferred from tensor names. Everything
an experiment needs to know about an algorithm (display name, data pooling, the LoRA shape it trains,
whether it takes exact second derivatives) is a class attribute or classmethod here, so a new algorithm
is one file plus one registry line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat
from torch import Tensor

from pf2lora.adapters import AdaptedModel, Params
from pf2lora.execution import InstanceMixer, gradients, lr_scale


class BatchSource(Protocol):
    """A client's local training data as an endless stream of mini-batches."""

    def next(self) -> Any:
        """The next mini-batch."""
        ...


@dataclass
class ClientState:
    """Everything a client keeps to itself between rounds: never put into a payload.

    ``private`` holds tensors, ``optimizer`` an optimizer ``state_dict``, ``extra`` plain values
    (numbers, strings): all of it survives ``torch.save``/``torch.load(weights_only=True)``.
    """

    private: Params = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """A serializable copy (for checkpoints and for a client's local disk)."""
        return {"private": dict(self.private), "optimizer": self.optimizer, "extra": dict(self.extra)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ClientState:
        """Inverse of :meth:`state_dict`."""
        return cls(dict(state["private"]), dict(state["optimizer"]), dict(state["extra"]))

    def to(self, device: torch.device | str) -> ClientState:
        """This state with every tensor (adapter, optimizer moments) on ``device`` (itself if all are there)."""
        from pf2lora.devices import to_device

        return ClientState(to_device(self.private, device), to_device(self.optimizer, device), dict(self.extra))


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one declared tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype


StateSpec = dict[str, TensorSpec]


def spec_of(params: Mapping[str, Tensor]) -> StateSpec:
    """The :class:`TensorSpec` of every tensor in ``params``."""
    return {k: TensorSpec(tuple(v.shape), v.dtype) for k, v in params.items()}


#: Largest learning rate accepted: above it nothing can be meant (and torch's float32 step would overflow).
MAX_LR = 1e6


class AlgorithmConfig(BaseModel):
    """Base of every algorithm's hyperparameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class OptimizedConfig(AlgorithmConfig):
    """Hyperparameters of the optimizer that trains the communicated (common) adapter."""

    lr: PositiveFloat = Field(1e-3, le=MAX_LR)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(0.0, ge=0.0)


class Algorithm(ABC):
    """A federated fine-tuning algorithm over a two-level LoRA model."""

    name: ClassVar[str]
    #: Name shown in tables and plots.
    display_name: ClassVar[str]
    Config: ClassVar[type[AlgorithmConfig]]
    #: Whether an experiment should pool every client's training data into one client.
    pools_client_data: ClassVar[bool] = False
    #: Whether the model carries the private (C, D) adapter; if not, it is built with r_private = 0.
    uses_private_adapter: ClassVar[bool] = False
    #: The metrics a client may report with its upload (anything else is refused by the runtime).
    metric_names: ClassVar[tuple[str, ...]] = ("train_loss",)
    #: Why this algorithm's clients cannot be trained in one batched pass (None: they can); runtimes then run
    #: them one after another and say why.
    batch_blocker: ClassVar[str | None] = None

    def __init__(self, config: AlgorithmConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = self.Config()
        elif not isinstance(config, AlgorithmConfig):
            config = self.Config(**dict(config))
        self.config = config

    # ---- what the algorithm trains and declares ----------------------------------------------
    @classmethod
    def lora_shape(cls, config: AlgorithmConfig, lora: Mapping[str, Any]) -> dict[str, Any]:
        """The LoRA settings (``r``, ``r_private``, ...) of the model this algorithm trains, from the experiment's."""
        return dict(lora) if cls.uses_private_adapter else {**lora, "r_private": 0}

    @classmethod
    def check_setup(cls, config: AlgorithmConfig, lora: Mapping[str, Any], num_clients: int) -> None:
        """Raise ``ValueError("field: why")`` if the hyperparameters cannot work with this LoRA shape/federation."""
        return None

    def needs_exact_second_derivatives(self) -> bool:
        """Whether training takes double backward (the model then needs eager/math attention)."""
        return False

    def communicated(self, model: AdaptedModel) -> list[str]:
        """Names of the tensors a client uploads and the server broadcasts (default: common adapter [+ head])."""
        return list(model.common_names)

    def private(self, model: AdaptedModel) -> list[str]:
        """Names of the tensors that never leave a client (default: client adapter [+ head])."""
        return list(model.private_names)

    def upload_spec(self, broadcast: StateSpec, state: ClientState) -> StateSpec:
        """What a client in ``state`` uploads: by default exactly the broadcast's names, shapes and dtypes."""
        return dict(broadcast)

    def trainable_parameters(self, global_state: Params, state: ClientState | None) -> int:
        """Scalars a client trains: the global (communicated) state and its private state, by default; an
        algorithm that freezes part of its state or trains a slice of the global one counts that instead."""
        private = state.private.values() if state is not None else ()
        return sum(t.numel() for t in global_state.values()) + sum(t.numel() for t in private)

    # ---- server side -------------------------------------------------------------------------
    def init_global(self, model: AdaptedModel, generator: torch.Generator) -> Params:
        """The server's initial global (communicated) state."""
        return model.fresh_lora(self.communicated(model), generator)

    def aggregate(self, global_state: Params, uploads: Sequence[Params], weights: Sequence[float]) -> Params:
        """New global state from the clients' uploads (``weights`` are normalised by the runtime)."""
        return weighted_mean(uploads, weights)

    # ---- client side -------------------------------------------------------------------------
    def init_client(
        self, model: AdaptedModel, client: int, num_clients: int, generator: torch.Generator
    ) -> ClientState:
        """Private state (adapter, optimizer, counters) of client ``client`` (0-based) of ``num_clients``."""
        return ClientState(private=model.fresh_lora(self.private(model), generator))

    @abstractmethod
    def local_update(
        self, model: AdaptedModel, received: Params, state: ClientState, data: BatchSource, steps: int
    ) -> tuple[Params, dict[str, float]]:
        """Run ``steps`` local steps from the broadcast ``received``; return (upload, metrics).

        ``state`` is updated in place. The upload must hold only communicated tensors.
        """

    def personalize(
        self, model: AdaptedModel, global_state: Params, state: ClientState | None, data: BatchSource | None
    ) -> Params:
        """All adapter/head values of the client's personalized model, for evaluation."""
        return {**{k: v.detach() for k, v in global_state.items()}, **(state.private if state else {})}

    def mixes_instances(self) -> bool:
        """Whether evaluation re-weights the personalized model's adapters per test instance (then runtimes
        evaluate clients one at a time, each under :meth:`instance_mixer`)."""
        return False

    def instance_mixer(self, model: AdaptedModel, personalized: Params, data: BatchSource | None) -> InstanceMixer:
        """The per-instance branch factors of the personalized model (only called where :meth:`mixes_instances`)."""
        raise NotImplementedError(f"{self.name} does not mix adapters per instance")


def weighted_mean(uploads: Sequence[Params], weights: Sequence[float]) -> Params:
    """Σ_k w_k·x_k for every tensor name (weights must sum to 1)."""
    if not uploads:
        raise ValueError("no uploads to aggregate")
    out: Params = {}
    for name in uploads[0]:
        acc = torch.zeros_like(uploads[0][name])
        for w, up in zip(weights, uploads, strict=True):
            acc.add_(up[name], alpha=float(w))
        out[name] = acc
    return out


def finish_local_update(
    x: Mapping[str, Tensor], state: ClientState, opt: torch.optim.Optimizer, losses: Sequence[float]
) -> tuple[Params, dict[str, float]]:
    """Keep the optimizer state on the client; return (the detached upload, the mean training loss)."""
    state.optimizer = opt.state_dict()
    return {k: v.detach() for k, v in x.items()}, {"train_loss": sum(losses) / len(losses)}


def first_order_steps(
    model: AdaptedModel, params: Mapping[str, Tensor], opt: torch.optim.Optimizer, data: BatchSource, steps: int
) -> list[float]:
    """``steps`` optimizer steps on the task loss, training every leaf in ``params``; the per-step losses."""
    return frozen_steps(model, params, {}, opt, data, steps)


def frozen_steps(
    model: AdaptedModel,
    params: Mapping[str, Tensor],
    frozen: Mapping[str, Tensor],
    opt: torch.optim.Optimizer,
    data: BatchSource,
    steps: int,
    view: Callable[[Params], Params] | None = None,
) -> list[float]:
    """``steps`` optimizer steps on the leaves ``params``, with ``frozen`` values in the forward pass but never
    trained; ``view`` maps all the values to what the model sees (e.g. adapters weighted). The per-step losses."""
    losses = []
    for _ in range(steps):
        values = {**params, **frozen}
        loss = model.loss(view(values) if view is not None else values, data.next())
        apply_step(opt, params, grad_dict(loss, params))
        losses.append(float(loss.detach()))
    return losses


def leaves(params: Mapping[str, Tensor]) -> Params:
    """Fresh leaf copies that require grad, for a client's local training."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def make_optimizer(
    kind: Literal["adamw", "sgd"], params: Mapping[str, Tensor], lr: float, weight_decay: float, state: dict
) -> torch.optim.Optimizer:
    """An optimizer over ``params`` that resumes from a saved ``state`` dict (empty: fresh), at ``lr`` times the
    round's schedule factor (:func:`~pf2lora.execution.lr_scale`)."""
    tensors = list(params.values())
    opt: torch.optim.Optimizer
    if kind == "adamw":
        opt = torch.optim.AdamW(tensors, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(tensors, lr=lr, weight_decay=weight_decay)
    if state:
        opt.load_state_dict(state)
    for group in opt.param_groups:  # after loading: a saved state carries the rate of the round it was saved in
        group["lr"] = lr * lr_scale()
    return opt


def apply_step(opt: torch.optim.Optimizer, params: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> None:
    """Set ``.grad`` of each leaf in ``params`` to ``grads`` and take one optimizer step."""
    for k, p in params.items():
        p.grad = grads[k]
    opt.step()
    opt.zero_grad(set_to_none=True)


def grad_dict(
    loss: Tensor, params: Mapping[str, Tensor], create_graph: bool = False, retain_graph: bool | None = None
) -> Params:
    """∇ of ``loss`` w.r.t. each tensor in ``params`` (zeros where it does not depend on one)."""
    names = list(params)
    grads = gradients(loss, [params[n] for n in names], create_graph=create_graph, retain_graph=retain_graph)
    return dict(zip(names, grads, strict=True))


def axpy(x: Mapping[str, Tensor], a: float, y: Mapping[str, Tensor]) -> Params:
    """``x + a·y`` name-wise (keeps the autograd graph)."""
    return {k: x[k] + a * y[k] for k in x}


def sq_norm(x: Mapping[str, Tensor]) -> Tensor:
    """Σ‖x_i‖² over all tensors."""
    return sum((t.detach().double() ** 2).sum() for t in x.values())  # type: ignore[return-value]
