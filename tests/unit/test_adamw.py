"""BertAdam (Google's AdamWeightDecayOptimizer: no bias correction, decoupled decay) against a
plain per-element reference, on both of its paths (PyTorch's fused CPU kernel and _foreach)."""

from __future__ import annotations

import pytest
import torch

from bertforge.optim.adamw import BertAdam


def _reference_step(p, g, m, v, lr, beta1, beta2, eps, wd):
    """Google's update in fp64: m, v without bias correction, decay added to the update."""
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    p.sub_(lr * (m / (v.sqrt() + eps) + wd * p))


@pytest.mark.parametrize("fused", [None, False])
def test_bertadam_matches_the_reference(fused, monkeypatch):
    calls = []
    real = torch._fused_adamw_
    monkeypatch.setattr(torch, "_fused_adamw_", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (300,), (3, 4, 2)]
    params = [torch.randn(*s, generator=g).requires_grad_() for s in shapes]
    ref = [p.detach().double().clone() for p in params]
    moments = [(torch.zeros_like(r), torch.zeros_like(r)) for r in ref]
    groups = [{"params": params[:2], "weight_decay": 0.01}, {"params": params[2:], "weight_decay": 0.0}]
    opt = BertAdam(groups, lr=1e-2, betas=(0.9, 0.999), eps=1e-6, max_grad_norm=0.0, fused=fused)
    for step in range(6):
        lr = 1e-2 * (1 - step / 10)  # a schedule changes the rate between steps
        for group in opt.param_groups:
            group["lr"] = lr
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=g) * (10.0 if i == 2 else 1.0)
            wd = 0.01 if i < 2 else 0.0
            _reference_step(ref[i], p.grad.double(), *moments[i], lr, 0.9, 0.999, 1e-6, wd)
        opt.step()
    assert (len(calls) > 0) == (fused is None)  # the fused kernel ran only where asked
    for p, r in zip(params, ref, strict=True):
        assert torch.allclose(p.detach().double(), r, rtol=1e-5, atol=1e-6), (p - r).abs().max()
    assert all(opt.state[p]["step"] == 6 for p in params)


def test_fused_bertadam_skips_parameters_without_gradients():
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = BertAdam([a, b], lr=0.1, weight_decay=0.0)  # |g| = sqrt(3) > 1: clipped to norm 1
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and not opt.state[b]
    # first step without bias correction on the clipped g = 1/sqrt(3): m = 0.1 g, v = 0.001 g^2,
    # p = 1 - lr * m / (sqrt(v) + eps)
    g = 3**-0.5
    assert torch.allclose(a.detach(), torch.full((3,), 1 - 0.1 * 0.1 * g / (0.001**0.5 * g + 1e-6)), atol=1e-6)


@pytest.mark.parametrize("fused", [None, False])
def test_bertadam_clips_globally_like_a_clipped_gradient(fused):
    """max_grad_norm: the update equals that of gradients scaled to global norm 1 beforehand;
    a norm handed in (TrainStep's, after the all-reduce) is the one used."""
    g = torch.Generator().manual_seed(3)
    shapes = [(6, 4), (4,), (50,)]
    grads = [[torch.randn(s, generator=g) * scale for s in shapes] for scale in (5.0, 0.2, 40.0)]
    runs = {}
    for mode in ("internal", "handed", "reference", "unclipped"):
        params = [torch.ones(s).requires_grad_() for s in shapes]
        opt = BertAdam(params, lr=1e-2, max_grad_norm=1.0 if mode in ("internal", "handed") else 0.0, fused=fused)
        for gs in grads:
            norm = torch.linalg.vector_norm(torch.stack([x.norm() for x in gs]))
            for p, x in zip(params, gs, strict=True):
                p.grad = x / max(float(norm), 1.0) if mode == "reference" else x.clone()
            opt.step(grad_norm=torch.tensor(1e7) if mode == "handed" else None)  # handed: a huge norm
        runs[mode] = torch.cat([p.detach().flatten() for p in params])
    assert torch.allclose(runs["internal"], runs["reference"], atol=1e-6)
    assert not torch.allclose(runs["reference"], runs["unclipped"], atol=1e-4)  # clipping mattered
    assert not torch.allclose(runs["handed"], runs["internal"], atol=1e-4)  # the handed norm was used
