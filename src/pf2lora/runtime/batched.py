"""Several simulated clients trained (or evaluated) in one batched pass over the frozen base.

Each client runs its algorithm's unchanged per-client code (``local_update``, ``personalize``, a task's
``evaluate``) in its own thread, one thread at a time. Its model calls (``loss``, ``call``) and its gradients
(:func:`pf2lora.execution.gradients`) are requests: once every client waits on one, :class:`Lockstep` serves
all of them together, as

* one forward pass of the frozen base over all clients' batches (concatenated rows, sequences padded to a
  common length), each client's adapters and head applied to its own rows (stacked factors, batched matmul;
  HETLoRA's lower ranks zero-padded, which changes no value), each client's loss computed from its own rows
  by the task's loss function;
* one backward pass of the sum of those losses, which gives each client exactly its own gradient, since no
  row depends on another client's parameters.

Dropout masks come from each client's own generator, in the shape its own batch has (``ClientDraws``), and
optimizer steps, finite-difference steps, ranks and norms stay in the client's code. Results therefore equal
sequential execution up to floating-point rounding of the batched matmuls (tested per algorithm to 1e-5).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from pf2lora import execution
from pf2lora.adapters import AdaptedModel
from pf2lora.algorithms.base import Algorithm
from pf2lora.devices import to_device
from pf2lora.execution import Segment

T = TypeVar("T")


@dataclass
class _Forward:
    params: Mapping[str, Tensor]
    batch: dict[str, Any]
    outputs: bool  # ``call`` (model outputs) rather than ``loss``
    grad: bool
    inference: bool


@dataclass
class _Grad:
    loss: Tensor
    tensors: Sequence[Tensor]
    create_graph: bool
    retain_graph: bool | None


class _Abort(BaseException):
    """Unwinds a client thread when the round failed elsewhere."""


class _Client:
    def __init__(self, index: int, generator: torch.Generator | None) -> None:
        self.index, self.generator = index, generator
        self.go = threading.Semaphore(0)
        self.request: _Forward | _Grad | None = None
        self.result: Any = None
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = self.abort = False


class _ClientModel:
    """What a client's code sees as its :class:`AdaptedModel`: forwards become requests to the lockstep."""

    def __init__(self, model: AdaptedModel, lockstep: Lockstep, client: _Client) -> None:
        self._model, self._lockstep, self._client = model, lockstep, client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def loss(self, params: Mapping[str, Tensor], batch: Any) -> Tensor:
        return self._lockstep._submit(self._client, _forward(params, batch, outputs=False))

    def call(self, params: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("a batched model call takes keyword inputs only")
        return self._lockstep._submit(self._client, _forward(params, kwargs, outputs=True))


def _forward(params: Mapping[str, Tensor], batch: Any, outputs: bool) -> _Forward:
    if not isinstance(batch, Mapping):
        raise TypeError(f"a batched pass needs dict batches, not {type(batch).__name__}")
    return _Forward(params, dict(batch), outputs, torch.is_grad_enabled(), torch.is_inference_mode_enabled())


class _Gradients:
    """The :class:`pf2lora.execution.Executor` of one client thread."""

    def __init__(self, lockstep: Lockstep, client: _Client) -> None:
        self.lockstep, self.client = lockstep, client

    def gradients(
        self, loss: Tensor, tensors: Sequence[Tensor], create_graph: bool, retain_graph: bool | None
    ) -> tuple[Tensor, ...]:
        return self.lockstep._submit(self.client, _Grad(loss, list(tensors), create_graph, retain_graph))


class Lockstep:
    """Runs per-client jobs over one :class:`AdaptedModel`, serving their passes batched across clients."""

    def __init__(self, model: AdaptedModel) -> None:
        self.model = model
        self._back = threading.Semaphore(0)
        net = model.net
        # sizes a padded sequence length must avoid, so that ClientDraws can tell sequence dims from others
        sizes = {d for t in [*net.parameters(), *net.buffers()] for d in t.shape}
        config = getattr(net, "config", None)
        sizes |= {v for v in (config.to_dict() if config is not None else {}).values() if type(v) is int}
        self._avoid = sizes

    def blocker(self, algorithm: Algorithm, sample: Any) -> str | None:
        """Why ``algorithm``'s clients cannot share a pass on this model (None when they can).

        ``sample`` is one training batch: two clients' training-mode passes over it are tried, which finds models
        that draw dropout masks shared by all rows (DeBERTa's relative-position dropout), so never per client.
        """
        model = self.model
        if algorithm.batch_blocker:
            return f"{algorithm.name} {algorithm.batch_blocker}"
        if model.loss_from_outputs is None:
            return "the model's loss has no per-client form (AdaptedModel.loss_from_outputs)"
        if not isinstance(sample, Mapping):
            return f"its batches are {type(sample).__name__}, not dicts of tensors"
        params = model.current(model.common_names + model.private_names)
        training = model.net.training
        model.net.train()
        try:
            with torch.no_grad():
                self.run([lambda m: m.loss(params, sample)] * 2, [torch.Generator(model.device)] * 2)
        except (RuntimeError, TypeError, ValueError) as e:
            return f"the model cannot run clients in one pass ({str(e).split(';')[0]})"
        finally:
            model.net.train(training)
        return None

    # ---- running clients ----------------------------------------------------------------------------
    def run(self, jobs: Sequence[Callable[[AdaptedModel], T]], generators: Sequence[torch.Generator | None]) -> list[T]:
        """Run ``jobs[k](model_k)`` for every client k, with its dropout from ``generators[k]``; their results."""
        clients = [_Client(k, g) for k, g in enumerate(generators)]
        threads = [
            threading.Thread(target=self._body, args=(c, job), name=f"pf2lora-client-{c.index}", daemon=True)
            for c, job in zip(clients, jobs, strict=True)
        ]
        for t in threads:
            t.start()
        try:
            runnable = list(clients)
            while runnable:
                for c in runnable:
                    self._resume(c)
                    if c.error is not None:
                        raise c.error
                waiting = [c for c in clients if not c.done]
                self._serve(waiting)
                runnable = waiting
            return [c.value for c in clients]
        finally:
            for c in clients:
                if not c.done:
                    c.abort = True
                    self._resume(c)
            for t in threads:
                t.join()

    def _body(self, c: _Client, job: Callable[[AdaptedModel], Any]) -> None:
        c.go.acquire()
        try:
            if c.abort:
                return
            with execution.running_client(c.generator, _Gradients(self, c)):
                c.value = job(_ClientModel(self.model, self, c))  # type: ignore[arg-type]
        except _Abort:
            pass
        except BaseException as e:  # handed to the coordinator, which re-raises it
            c.error = e
        finally:
            c.done = True
            self._back.release()

    def _resume(self, c: _Client) -> None:
        """Let client ``c`` run until it waits on its next request or finishes."""
        c.go.release()
        self._back.acquire()

    def _submit(self, c: _Client, request: _Forward | _Grad) -> Any:
        c.request = request
        self._back.release()
        c.go.acquire()
        if c.abort:
            raise _Abort
        result, c.result, c.request = c.result, None, None
        return result

    def _serve(self, waiting: list[_Client]) -> None:
        """Serve every waiting request: forwards grouped by autograd mode, gradients by their flags."""
        groups: dict[tuple, list[_Client]] = {}
        for c in waiting:
            r = c.request
            key = (
                ("forward", r.grad, r.inference)
                if isinstance(r, _Forward)
                else ("grad", r.create_graph, r.retain_graph)
            )
            groups.setdefault(key, []).append(c)
        for key, group in groups.items():
            if key[0] == "forward":
                with torch.set_grad_enabled(key[1]), torch.inference_mode() if key[2] else contextlib.nullcontext():
                    results = self._forward([c.request for c in group], [c.generator for c in group])
            else:
                results = self._backward([c.request for c in group], everyone=len(group) == len(waiting))
            for c, res in zip(group, results, strict=True):
                c.result = res

    # ---- one pass for many clients --------------------------------------------------------------------
    def _forward(self, reqs: list[_Forward], generators: list[torch.Generator | None]) -> list[Any]:
        model, device = self.model, self.model.device
        names = set(reqs[0].params)
        if any(set(r.params) != names for r in reqs):
            raise ValueError("clients of one batched pass must pass the same adapter tensors")
        stacked = {n: _stack([r.params[n] for r in reqs]) for n in reqs[0].params}
        batches = [to_device(r.batch, device) for r in reqs]
        inputs, segments = self._merge(batches)
        draws = [g for g in generators if g is not None] if model.net.training else None
        with execution.batched_pass(segments, draws if draws and len(draws) == len(reqs) else None):
            out = torch.func.functional_call(model.net, stacked, (), inputs, strict=False)
        results = []
        for r, seg, batch in zip(reqs, segments, batches, strict=True):
            own = _slice(out, seg, segments[-1].stop)
            has_targets = all(k in batch for k in model.targets)
            loss = model.loss_from_outputs(model.net, own, batch) if has_targets else None
            if r.outputs:
                if loss is not None:
                    own["loss"] = loss
                results.append(own)
            else:
                results.append(loss)
        return results

    def _merge(self, batches: list[dict[str, Any]]) -> tuple[dict[str, Any], list[Segment]]:
        """One input dict from the clients' batches (targets left out), and each client's segment of it."""
        keys = [k for k in batches[0] if k not in self.model.targets]
        lengths = [
            max((v.shape[1] for v in b.values() if isinstance(v, Tensor) and v.dim() >= 2), default=0) for b in batches
        ]
        rows = [next(v.shape[0] for v in b.values() if isinstance(v, Tensor) and v.dim()) for b in batches]
        width = max(lengths)
        if any(n != width for n in lengths):
            taken = self._avoid | set(rows) | {sum(rows)}
            while width in taken:
                width += 1
        padded = any(n != width for n in lengths)
        inputs: dict[str, Any] = {}
        for k in keys + (["attention_mask"] if padded and "attention_mask" not in keys else []):
            parts = []
            for b, n, m in zip(batches, lengths, rows, strict=True):
                v = b.get(k)
                if v is None:  # a mask for a batch that had none: all its positions are real
                    v = torch.ones(m, n, dtype=torch.long, device=self.model.device)
                if isinstance(v, Tensor) and v.dim() >= 2 and v.shape[1] < width:
                    fill = torch.zeros(v.shape[0], width - v.shape[1], *v.shape[2:], dtype=v.dtype, device=v.device)
                    v = torch.cat([v, fill], 1)
                parts.append(v)
            if not all(isinstance(p, Tensor) for p in parts):
                raise TypeError(f"batch key {k!r} is not a tensor: it cannot be batched across clients")
            inputs[k] = torch.cat(parts)
        segments, start = [], 0
        for n, m in zip(lengths, rows, strict=True):
            segments.append(Segment(start, start + m, n, width))
            start += m
        return inputs, segments

    def _backward(self, reqs: list[_Grad], everyone: bool) -> list[tuple[Tensor, ...]]:
        create = reqs[0].create_graph
        # free the graph only when no other client still holds a loss in it
        retain = reqs[0].retain_graph if everyone else True
        flat = [t for r in reqs for t in r.tensors]
        grads = execution.scaled_backward([r.loss for r in reqs], flat, create, retain)
        out, i = [], 0
        for r in reqs:
            out.append(tuple(grads[i : i + len(r.tensors)]))
            i += len(r.tensors)
        return out


def _stack(tensors: list[Tensor]) -> Tensor:
    """One tensor per client stacked on a new first dim; LoRA factors of lower rank zero-padded to the largest."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) == 1:
        return torch.stack(tensors)
    if {t.dim() for t in tensors} != {2}:
        raise ValueError(f"clients' tensors of shapes {sorted(shapes)} cannot be stacked")
    rows, cols = max(t.shape[0] for t in tensors), max(t.shape[1] for t in tensors)
    if len({t.shape[0] for t in tensors}) > 1 and len({t.shape[1] for t in tensors}) > 1:
        raise ValueError(f"clients' tensors of shapes {sorted(shapes)} cannot be stacked")
    return torch.stack([torch.nn.functional.pad(t, (0, cols - t.shape[1], 0, rows - t.shape[0])) for t in tensors])


def _slice(out: Any, seg: Segment, rows: int) -> Any:
    """One client's part of a model output: its rows, and its own length along padded sequence dims."""
    fields = {}
    for k, v in out.items():
        if isinstance(v, Tensor) and v.dim() and v.shape[0] == rows:
            v = v[seg.start : seg.stop]
            if seg.length != seg.padded:
                v = v[(slice(None), *(slice(0, seg.length) if d == seg.padded else slice(None) for d in v.shape[1:]))]
                v = v.contiguous()
            fields[k] = v
    return type(out)(**fields)
