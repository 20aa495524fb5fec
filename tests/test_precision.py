"""Mixed precision: a bf16 frozen base with fp32 adapters, heads, optimizer state and hypergradient arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import DATA
from torch import nn
from typer.testing import CliRunner

from pf2lora import checkpoint
from pf2lora.adapters import TwoLevelLoRALinear
from pf2lora.algorithms.pf2lora import FD_C
from pf2lora.cli import app
from pf2lora.execution import LossScaler, gradients, loss_scaling


def test_adapters_stay_fp32_over_a_bf16_base():
    base = nn.Linear(6, 4).to(torch.bfloat16)
    layer = TwoLevelLoRALinear(base, r=3, r_private=2, alpha=6)
    assert layer.lora_A.dtype == layer.lora_C.dtype == torch.float32
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_D.normal_()
    x = torch.randn(5, 6, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.lora_A.grad.dtype == layer.lora_D.grad.dtype == torch.float32
    expected = base(x).float() + x.float() @ layer.delta_weight().t()
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_fd_constant_follows_the_base_precision():
    assert FD_C[torch.float32] == 1e-3 and FD_C[torch.bfloat16] > FD_C[torch.float16] > FD_C[torch.float32]


@pytest.mark.skipif(not (DATA / "glue" / "SST-2").is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize(("algorithm", "precision"), [("pf2lora", "bf16"), ("hetlora", "bf16"), ("pf2lora", "fp16")])
def test_a_low_precision_run_keeps_everything_trainable_in_fp32(
    tiny_config: Path, tmp_path: Path, algorithm: str, precision: str
):
    out = tmp_path / precision
    args = ["run", str(tiny_config), "--out", str(out), "--algorithm", algorithm]
    args += ["--set", "federation.rounds=2", "--set", f"federation.precision={precision}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    state = checkpoint.load(out)
    tensors = list(state["global"].values())
    for client in state["clients"].values():
        tensors += list(client["state"]["private"].values())
        tensors += [t for s in client["state"]["optimizer"]["state"].values() for t in s.values() if t.dim()]
    assert tensors and all(t.dtype == torch.float32 for t in tensors)
    assert all(torch.isfinite(t).all() for t in tensors)
    assert (state["loss_scale"].get("scale", 1.0) > 1.0) == (precision == "fp16")


def test_loss_scaling_repeats_an_overflowing_backward_at_half_the_scale():
    """fp16 backward: scale·gradient overflows at 2^16, so the scale halves until it fits; no step is lost."""
    x = torch.ones(3, requires_grad=True)
    scaler = LossScaler()
    with loss_scaling(scaler):
        (g,) = gradients((x.half() * 1000.0).float().sum(), [x])
    assert scaler.scale == 64.0  # the largest power of two with 1000·scale ≤ 65504
    assert torch.equal(g, torch.full((3,), 1000.0))


def test_loss_scaling_keeps_gradients_that_fp16_would_flush_to_zero():
    x = torch.ones(3, requires_grad=True)

    def loss() -> torch.Tensor:
        return (x.half() * 1e-4).float().sum() * 1e-4  # ∂/∂x = 1e-8: below fp16's smallest subnormal (6e-8)

    (plain,) = gradients(loss(), [x])
    with loss_scaling(LossScaler()):
        (scaled,) = gradients(loss(), [x])
    assert torch.equal(plain, torch.zeros(3))
    torch.testing.assert_close(scaled, torch.full((3,), 1e-8), rtol=1e-3, atol=0)
