"""Two-level LoRA adapters on any ``torch.nn.Module``.

Each adapted Linear computes ``W_k = W0 + s·B A + s̃·D_k C_k`` with ``W0`` frozen, ``s = alpha/r`` and
``s̃ = alpha_private/r_private``. ``(A, B)`` is the *common* adapter (communicated), ``(C_k, D_k)`` the
*private* client adapter (never leaves the client).

Why a small layer of our own rather than HF PEFT's ``LoraLayer``: every algorithm here evaluates the
model *functionally* at adapter values that are not the module's parameters (the PF2LoRA lookahead
``y - α∇y f`` is a non-leaf tensor; one frozen base serves many simulated clients whose adapters are
swapped per call; HETLoRA clients hold truncated rank-``r_k`` factors). PEFT would let two named
adapters be summed, but its scaling is tied to each adapter's configured rank (truncation would
rescale), its multi-adapter training marks only the active adapter trainable, and its
``modules_to_save`` wrapper duplicates heads per adapter under sequence-classification task types.
A 60-line layer with a fixed scaling and ``torch.func.functional_call`` gives all of that exactly.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pf2lora import execution
from pf2lora.devices import to_device

COMMON_SUFFIXES = ("lora_A", "lora_B")
PRIVATE_SUFFIXES = ("lora_C", "lora_D")
Params = dict[str, Tensor]
Group = Literal["common", "private"]


class TwoLevelLoRALinear(nn.Module):
    """A frozen linear map plus a common rank-``r`` and a private rank-``r_private`` LoRA branch.

    ``base`` may be ``nn.Linear`` (weight ``out×in``) or a GPT-2 style ``Conv1D`` (weight ``in×out``,
    ``fan_in_fan_out=True``); the base forward is called unchanged. Scalings are fixed at
    construction so that truncating factors to a smaller rank (HETLoRA) never rescales them.
    """

    def __init__(
        self,
        base: nn.Module,
        r: int,
        r_private: int = 0,
        alpha: float | None = None,
        alpha_private: float | None = None,
        dropout: float = 0.0,
        fan_in_fan_out: bool = False,
    ) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"r must be >= 1, got {r}")
        if r_private < 0:
            raise ValueError(f"r_private must be >= 0, got {r_private}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        weight = base.weight
        self.fan_in_fan_out = fan_in_fan_out
        self.in_features, self.out_features = (
            (weight.shape[0], weight.shape[1]) if fan_in_fan_out else (weight.shape[1], weight.shape[0])
        )
        self.r, self.r_private = r, r_private
        self.scaling = (alpha if alpha is not None else r) / r
        self.scaling_private = (
            (alpha_private if alpha_private is not None else r_private) / r_private if r_private else 0.0
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # adapters train in the base's precision if that is fp32/fp64, else in fp32 (over a bf16/fp16 base)
        dev, dt = weight.device, weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=dev, dtype=dt))
        if r_private:
            self.lora_C = nn.Parameter(torch.empty(r_private, self.in_features, device=dev, dtype=dt))
            self.lora_D = nn.Parameter(torch.zeros(self.out_features, r_private, device=dev, dtype=dt))
        self.reset_lora_parameters()

    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """LoRA's initialisation (Hu et al.): A, C Kaiming-uniform, B, D zero, so ΔW starts at 0."""
        with torch.no_grad():
            for name in ("lora_A", "lora_C"):
                if hasattr(self, name):
                    kaiming_uniform_(getattr(self, name), generator)
            for name in ("lora_B", "lora_D"):
                if hasattr(self, name):
                    getattr(self, name).zero_()

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        h = self.dropout(x)
        # Mixed precision: a bf16 base feeds the (fp32) adapters in their own dtype; each branch returns in the
        # base's (both casts are no-ops in fp32, where the arithmetic is exactly the plain formula's).
        h = h.to(self.lora_A.dtype)
        rows = execution.current_branch_weights()  # per-instance mixing (FedDPA's dynamic weighting), else None
        common = self.scaling * _low_rank(h, self.lora_A, self.lora_B)
        out = out + (common if rows is None else common * _per_row(rows[0], common)).to(out.dtype)
        if self.r_private:
            private = self.scaling_private * _low_rank(h, self.lora_C, self.lora_D)
            out = out + (private if rows is None else private * _per_row(rows[1], private)).to(out.dtype)
        return out

    def delta_weight(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """ΔW (``out×in``) of this layer, from its own parameters or from ``params`` (local names)."""
        p = params or {}
        a, b = p.get("lora_A", self.lora_A), p.get("lora_B", self.lora_B)
        delta = self.scaling * (b @ a)
        if self.r_private:
            c, d = p.get("lora_C", self.lora_C), p.get("lora_D", self.lora_D)
            delta = delta + self.scaling_private * (d @ c)
        return delta

    def delta_factors(self, params: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """ΔW as ``left @ right`` (``out×k``, ``k×in``, k = r + r̃): its spectrum without forming ΔW."""
        p = params or {}
        left, right = [self.scaling * p.get("lora_B", self.lora_B)], [p.get("lora_A", self.lora_A)]
        if self.r_private:
            left.append(self.scaling_private * p.get("lora_D", self.lora_D))
            right.append(p.get("lora_C", self.lora_C))
        return torch.cat(left, 1), torch.cat(right, 0)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, r={self.r}, "
            f"r_private={self.r_private}, scaling={self.scaling:g}, "
            f"scaling_private={self.scaling_private:g}"
        )


def _per_row(weights: Tensor, x: Tensor) -> Tensor:
    """``weights`` (one per instance) shaped to scale the rows of ``x``; each repeated over the consecutive rows a
    batch expanded it into (beam search's ``num_beams``)."""
    n = weights.numel()
    if x.shape[0] % n:
        raise RuntimeError(f"{n} per-instance weights for a batch of {x.shape[0]} rows")
    w = weights.repeat_interleave(x.shape[0] // n)
    return w.to(device=x.device, dtype=x.dtype).view(-1, *[1] * (x.dim() - 1))


def _low_rank(h: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``h A^T B^T``; with factors stacked per client (``K×r×in``, ``K×out×r``), each client's rows use its own."""
    if a.dim() == 2:
        return (h @ a.t()) @ b.t()
    segs = execution.segments()
    if segs is None or len(segs) != a.shape[0]:
        raise RuntimeError(f"{a.shape[0]} stacked adapters outside a batched pass of as many clients")
    sizes = {s.stop - s.start for s in segs}
    if len(sizes) == 1:  # equal rows per client: one batched matmul
        hk = h.reshape(a.shape[0], -1, h.shape[-1])
        return torch.bmm(torch.bmm(hk, a.transpose(1, 2)), b.transpose(1, 2)).reshape(*h.shape[:-1], b.shape[1])
    return torch.cat([(h[s.start : s.stop] @ a[k].t()) @ b[k].t() for k, s in enumerate(segs)])


def per_client_forward(module: nn.Module) -> None:
    """Let ``module`` (a trainable head) run with parameters stacked per client, each client's rows with its own.

    Outside a batched pass, or with plain parameters, the module's own forward runs unchanged. (A bound method,
    so that copies of the model rebind it to themselves.)
    """
    module._plain_dims = {n: p.dim() for n, p in module.named_parameters()}  # type: ignore[assignment]
    module.forward = types.MethodType(_head_forward, module)  # type: ignore[method-assign]


def _head_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    dims: dict[str, int] = self._plain_dims  # type: ignore[assignment]
    current = dict(self.named_parameters())
    if all(current[n].dim() == d for n, d in dims.items()):
        return type(self).forward(self, *args, **kwargs)
    segs = execution.segments() or []
    rows = segs[-1].stop if segs else -1

    def part(v: Any, s: execution.Segment) -> Any:
        return v[s.start : s.stop] if isinstance(v, Tensor) and v.dim() and v.shape[0] == rows else v

    outs = []
    for k in range(len(segs)):
        own = {n: t[k] if t.dim() > dims[n] else t for n, t in current.items()}
        with execution.one_client(k) as s:
            args_k, kwargs_k = tuple(part(a, s) for a in args), {n: part(v, s) for n, v in kwargs.items()}
            outs.append(torch.func.functional_call(self, own, args_k, kwargs_k))
    return torch.cat(outs)


def kaiming_uniform_(t: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``nn.init.kaiming_uniform_(a=√5)`` as PEFT uses for ``lora_A``, with an explicit generator."""
    bound = 1.0 / math.sqrt(t.shape[1])
    with torch.no_grad():
        return t.uniform_(-bound, bound, generator=generator)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def add_two_level_lora(
    model: nn.Module,
    target_modules: Sequence[str],
    r: int,
    r_private: int = 0,
    alpha: float | None = None,
    alpha_private: float | None = None,
    dropout: float = 0.0,
) -> list[str]:
    """Freeze ``model`` and wrap every Linear/Conv1D whose name ends with a target in a two-level layer.

    Returns the qualified names of the adapted modules; raises if no target matched.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped: list[str] = []
    matched: set[str] = set()
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        hits = {t for t in target_modules if leaf == t or name.endswith("." + t) or name == t}
        if not name or not hits:
            continue
        matched |= hits
        if isinstance(module, TwoLevelLoRALinear):
            continue
        if not (isinstance(module, nn.Linear) or _is_conv1d(module)):
            raise TypeError(f"target module {name!r} is {type(module).__name__}, not Linear/Conv1D")
        layer = TwoLevelLoRALinear(
            module, r, r_private, alpha, alpha_private, dropout, fan_in_fan_out=_is_conv1d(module)
        )
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, leaf, layer)
        wrapped.append(name)
    unmatched = [t for t in target_modules if t not in matched]
    if unmatched or not wrapped:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"{(unmatched or list(target_modules))[0]!r} matches no module of the model "
            f"(its Linear layers are named {', '.join(leaves[:12])}{', ...' if len(leaves) > 12 else ''})"
        )
    return wrapped


def lora_layers(model: nn.Module) -> dict[str, TwoLevelLoRALinear]:
    """All two-level layers of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, TwoLevelLoRALinear)}


class _LossModule(nn.Module):
    """Wraps ``loss_fn(net, batch)`` as a module so ``functional_call`` can swap adapter values."""

    def __init__(self, net: nn.Module, loss_fn: Callable[[nn.Module, Any], Tensor]) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.net, batch)


class AdaptedModel:
    """One frozen base with two-level LoRA, evaluated at any adapter values (functionally).

    Parameter state splits into: the frozen base (held by the module), the common group
    (``lora_A``/``lora_B`` and, if ``head_group == "common"``, the task head) and the private group
    (``lora_C``/``lora_D`` and, if ``head_group == "private"``, the head). Many simulated clients
    share this single object; each keeps only its own small adapter tensors.
    """

    def __init__(
        self,
        net: nn.Module,
        loss_fn: Callable[[nn.Module, Any], Tensor],
        head_modules: Iterable[str] = (),
        head_group: Group = "common",
        loss_from_outputs: Callable[[nn.Module, Any, Any], Tensor] | None = None,
        targets: Sequence[str] = (),
    ) -> None:
        if head_group not in ("common", "private"):
            raise ValueError(f"head_group must be 'common' or 'private', got {head_group!r}")
        self.net = net
        self._wrapper = _LossModule(net, loss_fn)
        self.head_group: Group = head_group
        #: ``loss_fn`` split in two, so that several clients' batches can share one forward pass: the keys of a
        #: batch that are targets (not model inputs), and the loss of one client's slice of the outputs.
        self.loss_from_outputs, self.targets = loss_from_outputs, tuple(targets)
        heads = tuple(head_modules)
        self.head_names: list[str] = []
        for name, p in net.named_parameters():
            if any(name == h or name.startswith(h + ".") for h in heads):
                p.requires_grad_(True)
                self.head_names.append(name)
        if heads and not self.head_names:
            raise ValueError(f"head_modules {list(heads)} matched no parameter of the model")
        modules = dict(net.named_modules())
        for h in heads:
            if h in modules:
                per_client_forward(modules[h])
        names = [n for n, _ in net.named_parameters()]
        lora_common = [n for n in names if n.rsplit(".", 1)[-1] in COMMON_SUFFIXES]
        lora_private = [n for n in names if n.rsplit(".", 1)[-1] in PRIVATE_SUFFIXES]
        self.common_names = lora_common + (self.head_names if head_group == "common" else [])
        self.private_names = lora_private + (self.head_names if head_group == "private" else [])
        self.layers = lora_layers(net)
        first = next(iter(self.layers.values()), None)
        #: Precision of the frozen base (adapters may be fp32 over a bf16 base).
        self.base_dtype: torch.dtype = first.base.weight.dtype if first is not None else torch.float32

    # ---- state -----------------------------------------------------------------------------
    def current(self, names: Iterable[str]) -> Params:
        """Detached copies of the module's current values for ``names``."""
        p = dict(self.net.named_parameters())
        return {n: p[n].detach().clone() for n in names}

    def fresh_lora(self, names: Iterable[str], generator: torch.Generator) -> Params:
        """LoRA initialisation for adapter ``names`` (A, C uniform; B, D zero); heads are copied."""
        p = dict(self.net.named_parameters())
        out: Params = {}
        for n in names:
            t = torch.empty_like(p[n], device="cpu")  # drawn on the CPU: the same values on every device
            suffix = n.rsplit(".", 1)[-1]
            if suffix in ("lora_A", "lora_C"):
                kaiming_uniform_(t, generator)
            elif suffix in ("lora_B", "lora_D"):
                t.zero_()
            else:
                t.copy_(p[n].detach())
            out[n] = t.to(p[n].device)
        return out

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live (batches are moved there on the way in)."""
        return next(self.net.parameters()).device

    # ---- evaluation ----------------------------------------------------------------------------
    def loss(self, params: Mapping[str, Tensor], batch: Any) -> Tensor:
        """Task loss on ``batch`` with the given adapter/head values (others from the module)."""
        batch = to_device(batch, self.device)
        with self.mixed(batch if isinstance(batch, Mapping) else {}):
            return torch.func.functional_call(
                self._wrapper, {"net." + k: v for k, v in params.items()}, (batch,), strict=False
            )

    def call(self, params: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Any:
        """Forward of the underlying network at the given adapter/head values."""
        device = self.device
        args, kwargs = to_device(args, device), to_device(kwargs, device)
        with self.mixed(kwargs):
            return torch.func.functional_call(self.net, dict(params), args, kwargs, strict=False)

    @contextlib.contextmanager
    def mixed(self, inputs: Mapping[str, Any]) -> Iterator[None]:
        """Inside :func:`~pf2lora.execution.instance_mixing`, scale each row's adapter branches by what the mixer
        computes from ``inputs`` (its own forwards run unmixed); elsewhere, or without ``input_ids``, nothing."""
        mixer = execution.current_mixer()
        if mixer is None or "input_ids" not in inputs:
            yield
            return
        with execution.instance_mixing(None):
            common, private = mixer(inputs)
        with execution.branch_weights(common, private):
            yield

    @contextlib.contextmanager
    def use(self, params: Mapping[str, Tensor]) -> Iterator[nn.Module]:
        """Temporarily put ``params`` into the network itself, for code that calls it directly (``generate``).

        ``functional_call`` covers ``forward`` only; this swaps the same values in place of the registered
        parameters (shapes may differ, as for HETLoRA's truncated factors) and restores them afterwards.
        """
        saved = []
        try:
            for name, value in params.items():
                owner, leaf = name.rsplit(".", 1) if "." in name else ("", name)
                module = self.net.get_submodule(owner)
                saved.append((module, leaf, module._parameters[leaf]))
                module._parameters[leaf] = value  # type: ignore[assignment]
            yield self.net
        finally:
            for module, leaf, original in reversed(saved):
                module._parameters[leaf] = original

    def delta_weights(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """ΔW of every adapted layer at ``params`` (the personalized update of a client)."""
        out = {}
        for lname, layer in self.layers.items():
            local = _layer_params(params, lname)
            out[lname] = layer.delta_weight(local).detach()
        return out

    def effective_ranks(self, params: Mapping[str, Tensor], threshold: float = 0.9) -> dict[str, int]:
        """:func:`effective_rank` of every adapted layer's ΔW at ``params``, from its low-rank factors (two thin
        QRs and a k×k SVD per layer, cheap at any width)."""
        out = {}
        for lname, layer in self.layers.items():
            local = _layer_params(params, lname)
            left, right = (t.detach().double() for t in layer.delta_factors(local))
            r_left = torch.linalg.qr(left, mode="r").R
            r_right = torch.linalg.qr(right.t(), mode="r").R
            out[lname] = rank_of_spectrum(torch.linalg.svdvals(r_left @ r_right.t()), threshold)
        return out

    def trainable_parameters(self, params: Mapping[str, Tensor]) -> int:
        """Number of scalars in ``params``."""
        return sum(t.numel() for t in params.values())


def _layer_params(params: Mapping[str, Tensor], layer: str) -> dict[str, Tensor]:
    """The entries of ``params`` that belong to adapted layer ``layer``, under their local names."""
    prefix = layer + "."
    return {n[len(prefix) :]: v for n, v in params.items() if n.startswith(prefix) and "." not in n[len(prefix) :]}


def effective_rank(delta: Tensor, threshold: float = 0.9) -> int:
    """The paper's rank rule: smallest ``j`` with ``Σ_{i≤j} σ_i ≥ threshold·Σ_i σ_i`` (0 for ΔW = 0)."""
    return rank_of_spectrum(torch.linalg.svdvals(delta.detach().double()), threshold)


def rank_of_spectrum(s: Tensor, threshold: float = 0.9) -> int:
    """The paper's rank rule on singular values ``s`` (see :func:`effective_rank`)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    s = s.sort(descending=True).values
    total = s.sum()
    if total <= 0:
        return 0
    cum = torch.cumsum(s, 0)
    return int(torch.searchsorted(cum, threshold * total - 1e-12 * total).item()) + 1


def truncate_rank(params: Mapping[str, Tensor], rank: int) -> Params:
    """HETLoRA distribution: keep the first ``rank`` rows of A (r×in) and columns of B (out×r)."""
    out: Params = {}
    for n, t in params.items():
        suffix = n.rsplit(".", 1)[-1]
        if suffix == "lora_A":
            out[n] = t[:rank].clone()
        elif suffix == "lora_B":
            out[n] = t[:, :rank].clone()
        else:
            out[n] = t.clone()
    return out


def zero_pad_rank(params: Mapping[str, Tensor], rank: int) -> Params:
    """HETLoRA aggregation: zero-pad A's rows and B's columns up to ``rank`` (= r_max)."""
    out: Params = {}
    for n, t in params.items():
        suffix = n.rsplit(".", 1)[-1]
        if suffix == "lora_A":
            out[n] = torch.cat([t, t.new_zeros(rank - t.shape[0], t.shape[1])], 0)
        elif suffix == "lora_B":
            out[n] = torch.cat([t, t.new_zeros(t.shape[0], rank - t.shape[1])], 1)
        else:
            out[n] = t.clone()
    return out
