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
    assert FD_C[torch.float32] == 1e-3 and FD_C[torch.bfloat16] > FD_C[torch.float32]


@pytest.mark.skipif(not (DATA / "glue" / "SST-2").is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("algorithm", ["pf2lora", "hetlora"])
def test_a_bf16_run_keeps_everything_trainable_in_fp32(tiny_config: Path, tmp_path: Path, algorithm: str):
    out = tmp_path / "bf16"
    args = ["run", str(tiny_config), "--out", str(out), "--algorithm", algorithm]
    args += ["--set", "federation.rounds=2", "--set", "federation.precision=bf16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    state = checkpoint.load(out)
    tensors = list(state["global"].values())
    for client in state["clients"].values():
        tensors += list(client["state"]["private"].values())
        tensors += [t for s in client["state"]["optimizer"]["state"].values() for t in s.values() if t.dim()]
    assert tensors and all(t.dtype == torch.float32 for t in tensors)
