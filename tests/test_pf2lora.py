"""PF2LoRA's hypergradient: exact vs autograd through the lookahead, fd vs exact, and α = 0."""

from __future__ import annotations

import torch
from conftest import FixedBatches, regression_batches

from pf2lora.algorithms import make_algorithm
from pf2lora.algorithms.base import ClientState, leaves


def flat(d: dict) -> torch.Tensor:
    return torch.cat([d[k].reshape(-1) for k in sorted(d)])


def lookahead_gradient(model, x0, y0, alpha, pi, xi):
    """∇x f(x, y − α∇y f(x, y; π); ξ) by plain autograd: the definition the hypergradient must match."""
    x, y = leaves(x0), leaves(y0)
    g_y = torch.autograd.grad(model.loss({**x, **y}, pi), list(y.values()), create_graph=True)
    y_plus = {k: y[k] - alpha * g for k, g in zip(y, g_y, strict=True)}
    grads = torch.autograd.grad(model.loss({**x, **y_plus}, xi), list(x.values()))
    return dict(zip(x, grads, strict=True))


def hypergrad(model, cfg, batches, dtype=torch.float64):
    alg = make_algorithm("pf2lora", cfg)
    x0, y0 = model.current(model.common_names), model.current(model.private_names)
    return alg.hypergradient(model, leaves(x0), leaves(y0), FixedBatches(batches))


def test_exact_equals_autograd_through_lookahead(tiny_model):
    model = tiny_model(head=True)
    pi, xi = regression_batches(2, seed=1)
    x0, y0 = model.current(model.common_names), model.current(model.private_names)
    ref = lookahead_gradient(model, x0, y0, 0.3, pi, xi)
    for batches_mode, batches in (("shared", [pi, xi]), ("independent", [pi, xi, pi])):
        # with ζ = π the paper's formula ∇x f(x,y⁺;ξ) − α∇xy f(x,y;π)∇y f(x,y⁺;ξ) is that gradient exactly
        _, hg, _ = hypergrad(model, {"lr_private": 0.3, "hypergradient": "exact", "batches": batches_mode}, batches)
        assert set(hg) == set(ref)
        torch.testing.assert_close(flat(hg), flat(ref), rtol=1e-6, atol=1e-6)


def test_mixed_term_is_not_negligible(tiny_model):
    """Guard against vacuous comparisons: the second-order term changes the gradient by far more than 1e-3."""
    model = tiny_model()
    pi, xi = regression_batches(2, seed=2)
    y_plus, exact, _ = hypergrad(model, {"lr_private": 0.3, "hypergradient": "exact", "batches": "shared"}, [pi, xi])
    x = leaves(model.current(model.common_names))
    first = dict(zip(x, torch.autograd.grad(model.loss({**x, **y_plus}, xi), list(x.values())), strict=True))
    assert (flat(exact) - flat(first)).norm() > 0.05 * flat(exact).norm()


def test_fd_matches_exact(tiny_model):
    for dtype in (torch.float64, torch.float32):
        model = tiny_model(dtype=dtype, head=True)
        pi, xi, zeta = regression_batches(3, seed=3, dtype=dtype)
        for mode, batches in (("independent", [pi, xi, zeta]), ("shared", [pi, xi])):
            cfg = {"lr_private": 0.3, "batches": mode}
            _, exact, _ = hypergrad(model, {**cfg, "hypergradient": "exact"}, batches)
            _, fd, _ = hypergrad(model, {**cfg, "hypergradient": "fd"}, batches)
            rel = float((flat(fd) - flat(exact)).norm() / flat(exact).norm())
            assert rel < 1e-3, (dtype, mode, rel)


def test_independent_exact_uses_zeta_for_the_mixed_term(tiny_model):
    """With ζ ≠ π the result is ∇x f(x,y⁺;ξ) − α ∇x[∇y f(x,y;ζ)·v], v = ∇y f(x,y⁺;ξ), term by term."""
    model = tiny_model()
    pi, xi, zeta = regression_batches(3, seed=4)
    alpha = 0.2
    y_plus, hg, _ = hypergrad(model, {"lr_private": alpha, "hypergradient": "exact"}, [pi, xi, zeta])
    x0, y0 = model.current(model.common_names), model.current(model.private_names)
    x, y = leaves(x0), leaves(y0)
    yp = leaves(y_plus)
    g = torch.autograd.grad(model.loss({**x, **yp}, xi), [*x.values(), *yp.values()])
    g_x, v = g[: len(x)], g[len(x) :]
    g_y_zeta = torch.autograd.grad(model.loss({**x, **y}, zeta), list(y.values()), create_graph=True)
    hvp = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g_y_zeta, v, strict=True)), list(x.values()))
    ref = {k: gx - alpha * h for k, gx, h in zip(x, g_x, hvp, strict=True)}
    torch.testing.assert_close(flat(hg), flat(ref), rtol=1e-10, atol=1e-12)
    # y⁺ is the lower-level SGD step on π
    g_y_pi = torch.autograd.grad(model.loss({**x, **y}, pi), list(y.values()))
    torch.testing.assert_close(flat(y_plus), flat({k: y0[k] - alpha * g for k, g in zip(y, g_y_pi, strict=True)}))


def test_alpha_zero_is_first_order_training_of_the_common_adapter(tiny_model):
    model = tiny_model()
    batches = regression_batches(10, seed=5)
    x0, y0 = model.current(model.common_names), model.current(model.private_names)
    alg = make_algorithm("pf2lora", {"lr": 0.05, "lr_private": 0.0})
    state = ClientState(private=dict(y0))
    upload, _ = alg.local_update(model, dict(x0), state, FixedBatches(batches), steps=5)
    # reference: AdamW on ∇x f(x, y0; ξ_t); each step draws π then ξ, and α = 0 needs no ζ
    x = leaves(x0)
    opt = torch.optim.AdamW(list(x.values()), lr=0.05, weight_decay=0.0)
    for t in range(5):
        xi = batches[2 * t + 1]
        grads = torch.autograd.grad(model.loss({**x, **y0}, xi), list(x.values()))
        for p, g in zip(x.values(), grads, strict=True):
            p.grad = g
        opt.step()
    torch.testing.assert_close(flat(upload), flat({k: v.detach() for k, v in x.items()}), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flat(state.private), flat(y0))


def test_dropout_masks_are_shared_within_an_fd_pair():
    """With dropout on, fd must still approximate the exact mixed term computed with one mask."""
    from conftest import bert_batch, tiny_bert

    model = tiny_bert(dropout=0.2)
    model.net.double()
    g = torch.Generator().manual_seed(0)
    batch = bert_batch(g)
    x0, y0 = model.current(model.common_names), model.current(model.private_names)
    with torch.no_grad():
        for k in y0:
            if k.endswith("lora_D"):
                y0[k].normal_(0, 0.1)
    results = {}
    model.net.train()
    for mode in ("exact", "fd"):
        torch.manual_seed(123)
        alg = make_algorithm("pf2lora", {"lr_private": 0.5, "hypergradient": mode, "batches": "shared"})
        # exact ("shared") draws masks for π then ξ; fd draws π, ξ and replays π's masks for the pair
        results[mode] = alg.hypergradient(model, leaves(x0), leaves(y0), FixedBatches([batch, batch]))[1]
    rel = float((flat(results["fd"]) - flat(results["exact"])).norm() / flat(results["exact"]).norm())
    assert rel < 1e-3, rel
