"""PF2LoRA: two-level LoRA trained by bilevel optimisation (the paper's Algorithm 1).

x = common adapter (A, B [+ head]), communicated and averaged every round; y = private adapter
(C_k, D_k), kept on the client. Each local step:

    line 5:  y⁺ = y − α ∇y f(x, y; π)                                  (SGD, lr α)
    line 6:  x  ← x − η [∇x f(x, y⁺; ξ) − α ∇xy f(x, y; ζ) ∇y f(x, y⁺; ξ)]   (AdamW or SGD, lr η)

The bracket is the hypergradient; it is the exact gradient of ``x ↦ f(x, y − α∇y f(x, y))`` when
ζ = π. Two ways to get the mixed second-derivative term:

* ``exact``: double backward through autograd (SDPA's fused kernels lack double backward, so the
  step runs under the math attention backend);
* ``fd``: a finite difference of ∇x along v = ∇y f(x, y⁺; ξ) with ε = c/‖v‖ and identical dropout
  masks in both passes of a pair; first-order autograd only, so fused attention, gradient
  checkpointing and torch.compile stay usable.

Batch policy ``independent`` samples π, ξ, ζ independently (ξ̃ = ξ: one backward at y⁺ yields both
∇x and ∇y; the product stays unbiased because ζ is independent of ξ); ``shared`` sets ζ = π and
reuses ∇x f(x, y; π) from the lower-level backward (one-sided difference: one pass fewer).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, PositiveFloat
from torch.nn.attention import SDPBackend, sdpa_kernel

from pf2lora.adapters import AdaptedModel, Params
from pf2lora.algorithms.base import (
    MAX_LR,
    Algorithm,
    AlgorithmConfig,
    BatchSource,
    ClientState,
    OptimizedConfig,
    apply_step,
    axpy,
    finish_local_update,
    grad_dict,
    leaves,
    make_optimizer,
    sq_norm,
)
from pf2lora.execution import RNGState, replay_randomness, rng_state

FD_C = {
    torch.float64: 1e-3,
    torch.float32: 1e-3,
    torch.float16: 3e-2,
    torch.bfloat16: 1e-1,
}  # the difference must outgrow rounding


class PF2LoRAConfig(OptimizedConfig):
    """Hyperparameters of PF2LoRA."""

    lr_private: float = Field(1e-2, ge=0.0, le=MAX_LR)
    """α: SGD learning rate of the client adapter (lower level); also scales the hypergradient term."""
    hypergradient: Literal["exact", "fd"] = "fd"
    batches: Literal["independent", "shared"] = "independent"
    fd_c: PositiveFloat | None = None
    """Finite-difference step: ε = fd_c / ‖v‖ (default per base precision: ``FD_C``)."""


class PF2LoRA(Algorithm):
    """Bilevel two-level LoRA (Algorithm 1)."""

    name = "pf2lora"
    display_name = "PF2LoRA"
    Config = PF2LoRAConfig
    uses_private_adapter = True
    config: PF2LoRAConfig

    @classmethod
    def check_setup(cls, config: AlgorithmConfig, lora: Mapping[str, Any], num_clients: int) -> None:
        if lora["r_private"] < 1:
            raise ValueError(f"lora.r_private: {cls.name} trains a client adapter, so r_private must be >= 1")

    def needs_exact_second_derivatives(self) -> bool:
        return self.config.hypergradient == "exact"

    def local_update(
        self, model: AdaptedModel, received: Params, state: ClientState, data: BatchSource, steps: int
    ) -> tuple[Params, dict[str, float]]:
        c = self.config
        if not state.private:
            raise ValueError("pf2lora needs a client adapter: set r_private >= 1")
        x, y = leaves(received), leaves(state.private)
        opt = make_optimizer(c.optimizer, x, c.lr, c.weight_decay, state.optimizer)
        attention = sdpa_kernel(SDPBackend.MATH) if c.hypergradient == "exact" else contextlib.nullcontext()
        losses = []
        with attention:
            for _ in range(steps):
                y_next, hypergrad, loss = self.hypergradient(model, x, y, data)
                apply_step(opt, x, hypergrad)  # line 6
                y = leaves(y_next)  # line 5
                losses.append(loss)
        state.private = {k: v.detach() for k, v in y.items()}
        return finish_local_update(x, state, opt, losses)

    def hypergradient(
        self, model: AdaptedModel, x: Params, y: Params, data: BatchSource
    ) -> tuple[Params, Params, float]:
        """One step of Algorithm 1: returns (y⁺, hypergradient for x, f(x, y; π))."""
        c = self.config
        alpha = c.lr_private
        pi = data.next()
        shared = c.batches == "shared"
        if c.hypergradient == "exact" and shared:
            # Autograd through the one-step lookahead f(x, y − α∇y f(x, y; π); ξ).
            loss_pi = model.loss({**x, **y}, pi)
            g_y = grad_dict(loss_pi, y, create_graph=True)
            y_plus = axpy(y, -alpha, g_y)
            loss_xi = model.loss({**x, **y_plus}, data.next())
            return y_plus, grad_dict(loss_xi, x), float(loss_pi.detach())

        # line 5: lower-level SGD step (with ζ = π and fd, ∇x f(x, y; π) comes from the same backward).
        masks_pi = rng_state()
        loss_pi = model.loss({**x, **y}, pi)
        if shared:
            g = grad_dict(loss_pi, {**x, **y})
            g_x_pi, g_y = {k: g[k] for k in x}, {k: g[k] for k in y}
        else:
            g_y = grad_dict(loss_pi, y)
        y_plus = {k: (y[k] - alpha * g_y[k]).detach().requires_grad_(True) for k in y}

        # ∇x f(x, y⁺; ξ) and v = ∇y f(x, y⁺; ξ) from one backward.
        g = grad_dict(model.loss({**x, **y_plus}, data.next()), {**x, **y_plus})
        g_x, v = {k: g[k] for k in x}, {k: g[k] for k in y}
        if alpha == 0.0:
            return y_plus, g_x, float(loss_pi.detach())

        if c.hypergradient == "exact":
            # ∇xy f(x, y; ζ)·v by double backward.
            loss_zeta = model.loss({**x, **y}, data.next())
            g_y_zeta = grad_dict(loss_zeta, y, create_graph=True)
            dot = sum((g_y_zeta[k] * v[k]).sum() for k in y)
            hvp = grad_dict(dot, x)  # type: ignore[arg-type]
        else:
            hvp = (
                self._fd_mixed(model, x, y, v, pi, g_x_pi, masks_pi)
                if shared
                else self._fd_mixed(model, x, y, v, data.next(), None, None)
            )
        return y_plus, {k: g_x[k] - alpha * hvp[k] for k in x}, float(loss_pi.detach())

    def _fd_mixed(
        self,
        model: AdaptedModel,
        x: Params,
        y: Params,
        v: Params,
        batch: object,
        g_x_at_y: Params | None,
        masks: RNGState | None,
    ) -> Params:
        """∇xy f(x, y; batch)·v by a finite difference of ∇x along v, both passes with equal masks.

        Central when ``g_x_at_y`` is None; else one-sided, reusing ``g_x_at_y = ∇x f(x, y; batch)``
        that the caller computed with the RNG at ``masks``.
        """
        vnorm = math.sqrt(float(sq_norm(v)))
        if vnorm == 0.0:
            return {k: t.new_zeros(t.shape) for k, t in x.items()}
        eps = (self.config.fd_c or FD_C[model.base_dtype]) / vnorm

        def grad_x_at(sign: float) -> Params:
            shifted = {k: (y[k] + sign * eps * v[k]).detach() for k in y}
            return grad_dict(model.loss({**x, **shifted}, batch), x)

        if g_x_at_y is not None and masks is not None:
            with replay_randomness(masks):
                g_plus = grad_x_at(+1.0)
            return {k: (g_plus[k] - g_x_at_y[k]) / eps for k in x}
        with replay_randomness(rng_state()):
            g_plus = grad_x_at(+1.0)
        g_minus = grad_x_at(-1.0)  # the RNG was rewound: the same masks, and it advances from here
        return {k: (g_plus[k] - g_minus[k]) / (2 * eps) for k in x}
