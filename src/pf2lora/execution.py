"""How a client's computation is executed: its own random stream, and gradients that an executor may batch.

Algorithms take gradients with :func:`gradients` and snapshot/replay dropout masks with :func:`rng_state`
and :func:`replay_randomness`. Run plainly, these are ``torch.autograd.grad`` and torch's global RNG (the
sequential runtime seeds it per client). A runtime that trains several clients in one pass installs an
:class:`Executor` in each client's thread and a generator per client: the same calls then go to that
client's generator and to the executor, which takes every client's gradient in one backward pass. The
algorithm's code is the same either way, and so are the numbers: :class:`ClientDraws` makes every dropout
mask of a batched forward come from its client's generator in the order the client alone would draw it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

_local = threading.local()


class Executor(Protocol):
    """Takes gradients on behalf of the client running in the current thread."""

    def gradients(
        self, loss: Tensor, tensors: Sequence[Tensor], create_graph: bool, retain_graph: bool | None
    ) -> tuple[Tensor, ...]:
        """``torch.autograd.grad(loss, tensors, ...)`` with unused inputs as zeros."""
        ...


@contextlib.contextmanager
def running_client(generator: torch.Generator | None, executor: Executor | None = None) -> Iterator[None]:
    """Run a block as one client: its dropout from ``generator``, its gradients through ``executor``."""
    saved = getattr(_local, "generator", None), getattr(_local, "executor", None)
    _local.generator, _local.executor = generator, executor
    try:
        yield
    finally:
        _local.generator, _local.executor = saved


@contextlib.contextmanager
def _scoped(name: str, value: Any) -> Iterator[None]:
    """Set this thread's setting ``name`` to ``value`` for a block, restoring the outer value after it."""
    saved = getattr(_local, name, None)
    setattr(_local, name, value)
    try:
        yield
    finally:
        setattr(_local, name, saved)


def learning_rate_scale(factor: float) -> contextlib.AbstractContextManager[None]:
    """Run a block (one client's round) with every optimizer's learning rate multiplied by ``factor``."""
    return _scoped("lr_scale", factor)


def lr_scale() -> float:
    """The learning-rate multiplier of the block running in this thread (1 outside :func:`learning_rate_scale`)."""
    scale = getattr(_local, "lr_scale", None)
    return 1.0 if scale is None else scale


#: Per-instance scaling of the LoRA branches: (batch rows) -> (factor of the common branch, of the private one).
InstanceMixer = Callable[[Mapping[str, Tensor]], tuple[Tensor, Tensor]]


def branch_weights(common: Tensor, private: Tensor) -> contextlib.AbstractContextManager[None]:
    """Run a block with each batch row's common LoRA branch scaled by its entry of ``common`` and its private
    branch by its entry of ``private`` (one entry per row; repeated where a batch expands its rows, as beam
    search does)."""
    return _scoped("branch_weights", (common, private))


def current_branch_weights() -> tuple[Tensor, Tensor] | None:
    """The per-row branch factors of the block running in this thread (None: every row at 1)."""
    return getattr(_local, "branch_weights", None)


def instance_mixing(mixer: InstanceMixer | None) -> contextlib.AbstractContextManager[None]:
    """Run a block (one client's evaluation) with every forward's branch factors from ``mixer(inputs)``
    (FedDPA's instance-wise dynamic weighting); None: plain forwards."""
    return _scoped("mixer", mixer)


def current_mixer() -> InstanceMixer | None:
    """The instance mixer of the block running in this thread (None outside :func:`instance_mixing`)."""
    return getattr(_local, "mixer", None)


def client_generator() -> torch.Generator | None:
    """The generator of the client running in this thread (None: torch's global RNG)."""
    return getattr(_local, "generator", None)


def gradients(
    loss: Tensor, tensors: Sequence[Tensor], create_graph: bool = False, retain_graph: bool | None = None
) -> tuple[Tensor, ...]:
    """∇ of ``loss`` w.r.t. ``tensors`` (zeros where it does not depend on one), batched if an executor runs,
    loss-scaled when :func:`loss_scaling` is on."""
    executor = getattr(_local, "executor", None)
    if executor is not None:
        return executor.gradients(loss, tensors, create_graph, retain_graph)
    return scaled_backward([loss], list(tensors), create_graph, retain_graph)


class LossScaler:
    """Dynamic loss scaling for a float16 base (as ``torch.amp.GradScaler``, but per gradient, not per step).

    Each backward runs on ``scale · loss``, so small gradients survive the base's float16 backward, and is divided
    by ``scale`` again. The scale is a power of two, so both multiplications are exact: a gradient that neither
    underflows nor overflows is the same at any scale. On overflow the same backward is repeated at half the scale
    (no step is skipped, so the algorithm is unchanged); after ``growth_interval`` finite backwards it doubles.
    """

    def __init__(self, scale: float = 2.0**16, growth_interval: int = 200) -> None:
        self.scale, self.growth_interval, self.finite = scale, growth_interval, 0

    def backward(self, run: Callable[[float, bool], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
        """``run(scale, retain_graph)`` takes the scaled gradients; the unscaled ones, at the largest finite scale.

        The graph is kept for a repeat; it is freed with the loss, when the caller lets go of it.
        """
        while True:
            grads = run(self.scale, True)
            if all(bool(torch.isfinite(g).all()) for g in grads) or self.scale <= 1.0:
                break  # a non-finite gradient at scale 1 is divergence: the runtime reports it
            self.scale, self.finite = self.scale / 2, 0
        scale = self.scale
        self.finite += 1
        if self.finite % self.growth_interval == 0:
            self.scale *= 2
        return tuple(g / scale for g in grads)

    def state_dict(self) -> dict[str, float]:
        """Scale and count of finite backwards since the last change (checkpoints resume the same scale)."""
        return {"scale": self.scale, "finite": self.finite}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Continue from :meth:`state_dict`."""
        self.scale, self.finite = float(state["scale"]), int(state["finite"])


_scalers: list[LossScaler] = []


@contextlib.contextmanager
def loss_scaling(scaler: LossScaler | None) -> Iterator[None]:
    """Take every gradient of a block with ``scaler`` (None: unscaled), in any thread: a batched pass takes its
    clients' gradients in the thread that serves them."""
    if scaler is not None:
        _scalers.append(scaler)
    try:
        yield
    finally:
        if scaler is not None:
            _scalers.pop()


def scaled_backward(
    losses: Sequence[Tensor], tensors: Sequence[Tensor], create_graph: bool, retain_graph: bool | None
) -> tuple[Tensor, ...]:
    """∇ of Σ ``losses`` w.r.t. ``tensors`` (unused ones: zeros), through the active :class:`LossScaler` if any."""

    def run(scale: float, retain: bool | None) -> tuple[Tensor, ...]:
        outputs = [loss * scale for loss in losses] if scale != 1.0 else list(losses)
        return torch.autograd.grad(
            outputs,
            list(tensors),
            create_graph=create_graph,
            retain_graph=retain,
            allow_unused=True,
            materialize_grads=True,
        )

    if not _scalers:
        return run(1.0, retain_graph)
    return _scalers[-1].backward(run)


# ---- random streams ------------------------------------------------------------------------------------

RNGState = tuple[Tensor, list[Tensor] | None]


def rng_state() -> RNGState:
    """Snapshot of this client's RNG (its generator, else torch's CPU and, if used, CUDA RNG)."""
    gen = client_generator()
    if gen is not None:
        return gen.get_state(), None
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)


def _set_rng_state(state: RNGState) -> None:
    gen = client_generator()
    if gen is not None:
        gen.set_state(state[0])
        return
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


@contextlib.contextmanager
def replay_randomness(state: RNGState) -> Iterator[None]:
    """Run a block with the RNG at ``state`` (same dropout masks as then), then resume where we were."""
    now = rng_state()
    _set_rng_state(state)
    try:
        yield
    finally:
        _set_rng_state(now)


@dataclass(frozen=True)
class Segment:
    """The rows ``[start, stop)`` of a batched pass that belong to one client, whose own batch had ``length``
    positions where the pass has ``padded`` (``length == padded`` when nothing was padded)."""

    start: int
    stop: int
    length: int
    padded: int


aten = torch.ops.aten
#: Ops that draw random numbers from the global generator; any other than these is refused in a batched pass.
_RANDOM_OPS = {
    aten.bernoulli.default,
    aten.bernoulli.p,
    aten.bernoulli_.Tensor,
    aten.rand.default,
    aten.rand_like.default,
    aten.randn.default,
    aten.randn_like.default,
    aten.randint.low,
    aten.randint.default,
    aten.randperm.default,
    aten.uniform_.default,
    aten.normal_.default,
    aten.exponential_.default,
    aten.multinomial.default,
}


class ClientDraws(TorchDispatchMode):
    """During one forward pass, draw each client's rows of every dropout mask from that client's generator.

    Each client's mask is drawn with the shape its own batch would have given it (sequence dims of the padded
    length shrink back to the client's length) and written into its rows, so the masks equal those of the
    client's forward alone. ``bernoulli_`` (CPU dropout) and ``native_dropout`` (its fused CUDA kernel) are
    redirected; any other draw from the global RNG cannot be attributed to a client and raises. The clients
    are those of the current :func:`batched_pass` (narrowed to one inside :func:`one_client`).
    """

    def _fill(self, out: Tensor, p: float) -> Tensor:
        segs, gens = _local.segments, _local.generators
        rows = segs[-1].stop
        if out.dim() == 0 or out.shape[0] != rows:
            raise RuntimeError(
                f"a dropout mask of shape {tuple(out.shape)} is not laid out by batch rows ({rows}); "
                "this model cannot run several clients in one pass (set federation.parallel_clients: 1)"
            )
        for seg, gen in zip(segs, gens, strict=True):
            part = out[seg.start : seg.stop]
            shape = [seg.stop - seg.start] + [seg.length if d == seg.padded else d for d in part.shape[1:]]
            if list(part.shape) == shape:  # rows of a dim-0 slice: drawn in place, as into a tensor of their own
                part.bernoulli_(p, generator=gen)
            else:
                part.fill_(1)
                part[tuple(slice(0, n) for n in shape)] = torch.empty(
                    shape, dtype=out.dtype, device=out.device
                ).bernoulli_(p, generator=gen)
        return out

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Mapping[str, Any] | None = None):
        kwargs = dict(kwargs or {})
        if func is aten.bernoulli_.float and kwargs.get("generator") is None:
            p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
            return self._fill(args[0], float(p))
        if func is aten.native_dropout.default:
            x, p, train = args[0], float(args[1]), args[2] if len(args) > 2 else kwargs.get("train")
            if not train or p == 0.0:
                return func(*args, **kwargs)
            keep = self._fill(torch.empty_like(x), 1.0 - p)
            return x * keep * (1.0 / (1.0 - p)), keep.bool()
        if func in _RANDOM_OPS and kwargs.get("generator") is None:
            raise RuntimeError(f"{func} draws from the global RNG inside a batched pass; it cannot be given per client")
        return func(*args, **kwargs)


@contextlib.contextmanager
def batched_pass(segments: Sequence[Segment], generators: Sequence[torch.Generator] | None) -> Iterator[None]:
    """One forward pass over several clients' rows: adapters read :func:`segments`; dropout draws per client
    (when ``generators`` are given: in training)."""
    saved = getattr(_local, "segments", None), getattr(_local, "generators", None)
    _local.segments, _local.generators = list(segments), list(generators) if generators is not None else None
    try:
        with ClientDraws() if generators is not None else contextlib.nullcontext():
            yield
    finally:
        _local.segments, _local.generators = saved


@contextlib.contextmanager
def one_client(k: int) -> Iterator[Segment]:
    """Inside a batched pass, a block that computes client ``k``'s rows alone (they start at row 0 there)."""
    seg, gens = _local.segments[k], _local.generators
    inner = Segment(0, seg.stop - seg.start, seg.length, seg.padded)
    saved = _local.segments, gens
    _local.segments, _local.generators = [inner], [gens[k]] if gens is not None else None
    try:
        yield seg
    finally:
        _local.segments, _local.generators = saved


def segments() -> list[Segment] | None:
    """The client segments of the batched pass running in this thread (None outside one)."""
    return getattr(_local, "segments", None)
