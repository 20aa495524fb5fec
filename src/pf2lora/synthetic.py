"""The synthetic rank-learning study (paper Section 5, Appendices J–K), on the real engine.

Two clients fit ``Y = X W_k* + noise`` with a frozen *zero* ``nn.Linear(10, 10)`` carrying two-level
LoRA: PF2LoRA (r = 4, r̃ = 2) against HETLoRA (r_min = 1, r_max = 12, initial ranks 2 and 10), both
with 240 trainable parameters, 2000 steps, communication every 10, through the same adapters,
algorithms and runtime as the language-model experiments.

Ground truths: ``independent`` is the paper's text (W_k* = A_k* B_k*, independent N(0,1) factors of
ranks 3 and 4; then W_1* − W_2* generically has rank 7, so no rank-4 common plus rank-2 private
adapters fit both clients and losses stay above the noise floor); ``shared`` (default) is
W_k* = U V + U_k V_k with a shared part of rank ``shared_rank`` so exact recovery is possible.

Loss = mean over rows of ‖x W − y‖² summed over the 10 outputs, so the noise floors are
10·σ² = 0.1 and 0.4. nn.Linear computes x Wᵀ, so the adapter's ΔW is compared with W_k*ᵀ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator
from torch import Tensor, nn

from pf2lora.adapters import AdaptedModel, Params, add_two_level_lora, effective_rank
from pf2lora.algorithms import make_algorithm
from pf2lora.config import find_non_finite
from pf2lora.federation import ClientData, FederationConfig, derive_seed
from pf2lora.io import atomic_write
from pf2lora.runtime.simulation import Simulation

DIM = 10
N_SAMPLES, N_TRAIN = 1000, 700
NOISE_STD = (0.1, 0.2)


class SyntheticConfig(BaseModel):
    """Settings of the synthetic study (defaults: the paper's, with the ``shared`` ground truth); NaN/inf refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    seed: int = Field(0, ge=0, lt=2**63)
    """0 to 2**63 - 1 (numpy's SeedSequence refuses negatives)."""
    ground_truth: Literal["shared", "independent"] = "shared"
    ranks: tuple[PositiveInt, PositiveInt] = (3, 4)
    shared_rank: int = Field(2, ge=0)
    steps: PositiveInt = 2000
    local_steps: PositiveInt = 10
    batch_size: PositiveInt = N_TRAIN
    rank_threshold: float = Field(0.9, gt=0.0, le=1.0)
    # Appendix K picks (η, α) = (0.005, 0.002) from its grid [0.001, 0.01]; with those PF2LoRA has not
    # converged after 2000 steps here (README), so the default is the grid's top, (0.01, 0.01).
    pf2lora: dict[str, Any] = Field(default_factory=lambda: {"lr": 1e-2, "lr_private": 1e-2, "hypergradient": "exact"})
    hetlora: dict[str, Any] = Field(
        default_factory=lambda: {"lr": 2e-3, "r_min": 1, "r_max": 12, "ranks": [2, 10], "lam": 0.1, "gamma": 0.7}
    )

    @field_validator("pf2lora", "hetlora")
    @classmethod
    def _finite(cls, hyper: dict[str, Any]) -> dict[str, Any]:
        """Hyperparameters go to the algorithms unchecked here, so refuse NaN/inf (``--lr nan``) now."""
        bad = find_non_finite(hyper)
        if bad is not None:
            raise ValueError(f"{bad}: must be a finite number")
        return hyper

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        if self.steps % self.local_steps:
            raise ValueError(f"steps ({self.steps}) must be a multiple of local_steps ({self.local_steps})")
        if self.ground_truth == "shared" and min(self.ranks) < self.shared_rank:
            raise ValueError(f"ranks {self.ranks} must be >= shared_rank {self.shared_rank}")
        if max(self.ranks) > DIM:
            raise ValueError(f"ranks {self.ranks} must be <= {DIM}")
        return self


@dataclass
class SyntheticClient:
    """One client's data and ground truth."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    w_star: Tensor  # in×out, Y = X W*
    noise_std: float

    @property
    def noise_floor(self) -> float:
        """Expected loss of the true W: 10·σ²."""
        return DIM * self.noise_std**2


def ground_truths(cfg: SyntheticConfig, gen: torch.Generator) -> list[Tensor]:
    """W_1*, W_2* (10×10) per the chosen ground truth."""

    def gauss(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    if cfg.ground_truth == "independent":
        return [gauss(DIM, r) @ gauss(r, DIM) for r in cfg.ranks]
    s = cfg.shared_rank
    shared = gauss(DIM, s) @ gauss(s, DIM)
    return [shared + gauss(DIM, r - s) @ gauss(r - s, DIM) for r in cfg.ranks]


def make_clients(cfg: SyntheticConfig) -> list[ClientData]:
    """The two clients of the study, deterministic in ``cfg.seed``."""
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 100))
    clients = []
    for k, (w, std) in enumerate(zip(ground_truths(cfg, gen), NOISE_STD, strict=True)):
        x = torch.randn(N_SAMPLES, DIM, generator=gen, dtype=torch.float64)
        y = x @ w + std * torch.randn(N_SAMPLES, DIM, generator=gen, dtype=torch.float64)
        x, y = x.float(), y.float()
        sc = SyntheticClient(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:], w.float(), std)
        clients.append(
            ClientData(
                cid=str(k + 1),
                num_train=N_TRAIN,
                fetch=lambda idx, sc=sc: (sc.x_train[idx], sc.y_train[idx]),
                test=sc,
            )
        )
    return clients


def regression_loss(net: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean over rows of the squared error summed over outputs."""
    x, y = batch
    return ((net(x) - y) ** 2).sum(dim=1).mean()


def make_model(r: int, r_private: int) -> AdaptedModel:
    """A frozen zero ``Linear(10, 10)`` with two-level LoRA, scalings 1 (ΔW = B A + D C)."""
    net = nn.Sequential()
    net.add_module("proj", nn.Linear(DIM, DIM, bias=False))
    nn.init.zeros_(net.proj.weight)
    add_two_level_lora(net, ["proj"], r=r, r_private=r_private, alpha=r, alpha_private=r_private or None)
    return AdaptedModel(net, regression_loss)


def orthogonal_init(seed: int, r: int, r_private: int, n_clients: int) -> tuple[Params, list[Params]]:
    """Paper's PF2LoRA init: N(0,1)-scale factors with B A orthogonal (rows and columns) to every D_k C_k."""
    gen = torch.Generator().manual_seed(derive_seed(seed, 101))
    q_in, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=gen))
    q_out, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=gen))
    if r + n_clients * r_private > DIM:
        raise ValueError("not enough dimensions for mutually orthogonal initial adapters")

    def factors(cols: slice, k: int) -> tuple[Tensor, Tensor]:
        left = torch.randn(k, k, generator=gen) @ q_in[:, cols].T  # k×in, rows in span(q_in[:, cols])
        right = q_out[:, cols] @ torch.randn(k, k, generator=gen)  # out×k
        return left, right

    a, b = factors(slice(0, r), r)
    common = {"proj.lora_A": a, "proj.lora_B": b}
    private = []
    for k in range(n_clients):
        lo = r + k * r_private
        c, d = factors(slice(lo, lo + r_private), r_private)
        private.append({"proj.lora_C": c, "proj.lora_D": d})
    return common, private


def evaluate(model: AdaptedModel, params: Params, client: ClientData) -> dict[str, float]:
    """Train/test loss, ‖W_k − W_k*‖_F and the adapter's rank (the runtime adds the effective rank of W_k)."""
    sc: SyntheticClient = client.test
    delta = model.delta_weights(params)["proj"]  # out×in = W_kᵀ
    return {
        "train_loss": float(model.loss(params, (sc.x_train, sc.y_train))),
        "test_loss": float(model.loss(params, (sc.x_test, sc.y_test))),
        "distance": float(torch.linalg.matrix_norm(delta - sc.w_star.T)),
        "adapter_rank": sum(t.shape[0] for n, t in params.items() if n.endswith(("lora_A", "lora_C"))),
    }


def run_algorithm(name: str, cfg: SyntheticConfig) -> list[dict[str, Any]]:
    """Run one algorithm of the study; one metrics row per evaluation round and client."""
    clients = make_clients(cfg)
    fed = FederationConfig(
        rounds=cfg.steps // cfg.local_steps,
        local_steps=cfg.local_steps,
        batch_size=cfg.batch_size,
        rank_threshold=cfg.rank_threshold,
        seed=cfg.seed,
    )
    if name == "pf2lora":
        r, r_private = 4, 2
        model = make_model(r, r_private)
        sim = Simulation(model, make_algorithm("pf2lora", cfg.pf2lora), clients, fed, evaluate)
        common, private = orthogonal_init(cfg.seed, r, r_private, len(clients))
        sim.warm_start(common, {c.cid: p for c, p in zip(clients, private, strict=True)})
    elif name == "hetlora":
        r_max = int(cfg.hetlora["r_max"])
        model = make_model(r_max, 0)
        sim = Simulation(model, make_algorithm("hetlora", cfg.hetlora), clients, fed, evaluate)
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 102))
        sim.warm_start({"proj.lora_A": torch.randn(r_max, DIM, generator=gen), "proj.lora_B": torch.zeros(DIM, r_max)})
    else:
        raise ValueError(f"the synthetic study compares 'pf2lora' and 'hetlora', not {name!r}")
    return [
        {
            "algorithm": name,
            "client": row["client"],
            "step": row["step"],
            **{k: v for k, v in row.items() if k not in ("client", "step", "round") and not k.startswith("rank")},
            "effective_rank": int(row["rank:proj"]),
        }
        for row in sim.run().eval
    ]


def true_effective_ranks(cfg: SyntheticConfig) -> list[int]:
    """The same rank rule applied to the ground truths W_k*."""
    return [effective_rank(c.test.w_star, cfg.rank_threshold) for c in make_clients(cfg)]


def noise_floors() -> list[float]:
    """10·σ_k² for the two clients."""
    return [DIM * s**2 for s in NOISE_STD]


def summarize(rows: Sequence[dict[str, Any]], cfg: SyntheticConfig) -> list[dict[str, Any]]:
    """Final row of every (algorithm, client) with its noise floor, loss/floor ratio and true rank."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        last[(r["algorithm"], r["client"])] = r
    floors = dict(zip(("1", "2"), noise_floors(), strict=True))
    true_ranks = dict(zip(("1", "2"), true_effective_ranks(cfg), strict=True))
    return [
        {
            **r,
            "noise_floor": floors[r["client"]],
            "test_over_floor": r["test_loss"] / floors[r["client"]],
            "true_effective_rank": true_ranks[r["client"]],
        }
        for r in last.values()
    ]


def run_study(cfg: SyntheticConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Both algorithms on the same data: (metrics rows, summary rows)."""
    rows = run_algorithm("pf2lora", cfg) + run_algorithm("hetlora", cfg)
    return rows, summarize(rows, cfg)


def plot(rows: Sequence[dict[str, Any]], path: str, floors: Sequence[float]) -> None:
    """The paper's four panels: train loss, test loss, distance, rank evolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    panels = [
        ("train_loss", "training loss", True),
        ("test_loss", "test loss", True),
        ("distance", r"$\|W_k - W_k^*\|_F$", True),
        ("effective_rank", "effective rank (90% rule)", False),
    ]
    styles = {"pf2lora": "-", "hetlora": "--"}
    colors = {"1": "tab:blue", "2": "tab:red"}
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["algorithm"], r["client"]), []).append(r)
    for ax, (key, title, log) in zip(axes, panels, strict=True):
        for (alg, cid), rs in sorted(series.items()):
            ax.plot(
                [r["step"] for r in rs],
                [r[key] for r in rs],
                styles.get(alg, ":"),
                color=colors.get(cid),
                label=f"{alg} client {cid}",
            )
        if key in ("train_loss", "test_loss"):
            for cid, f in zip(("1", "2"), floors, strict=True):
                ax.axhline(f, color=colors[cid], lw=0.8, alpha=0.5, ls=":")
        if key == "effective_rank":
            for (alg, cid), rs in sorted(series.items()):
                if alg == "hetlora":
                    ax.plot(
                        [r["step"] for r in rs],
                        [r["adapter_rank"] for r in rs],
                        ":",
                        lw=1,
                        color=colors.get(cid),
                        label=f"hetlora client {cid}: r_k",
                    )
            ax.legend(fontsize=7)
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
