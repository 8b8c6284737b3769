"""LAMB (multi-tensor) against a plain per-tensor reference of the published algorithm."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from bertforge.optim import LAMB, build_optimizer, param_groups
from bertforge.optim.lamb import global_grad_norm


class RefLAMB:
    """You et al. 2019, Algorithm 2 (LAMB) as apex implements it, one tensor at a time, in
    float64 Python-level arithmetic where it matters: global clip, Adam moments with bias
    correction, decoupled weight decay, trust ratio ||p||/||u|| only where decay is on."""

    def __init__(self, params, decays, lr, betas=(0.9, 0.999), eps=1e-6, max_grad_norm=1.0):
        self.p = [p.detach().clone().double() for p in params]
        self.decays = decays
        self.lr, self.b1, self.b2, self.eps, self.max_norm = lr, betas[0], betas[1], eps, max_grad_norm
        self.m = [torch.zeros_like(p) for p in self.p]
        self.v = [torch.zeros_like(p) for p in self.p]
        self.t = 0

    def step(self, grads):
        grads = [g.double() for g in grads]
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        if not math.isfinite(norm):
            return  # skipped step: nothing moves, t does not advance
        self.t += 1
        div = max(norm / self.max_norm, 1.0)
        for i, (p, g) in enumerate(zip(self.p, grads, strict=True)):
            g = g / div
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            m_hat = self.m[i] / (1 - self.b1**self.t)
            v_hat = self.v[i] / (1 - self.b2**self.t)
            u = m_hat / (v_hat.sqrt() + self.eps)
            wd = self.decays[i]
            if wd != 0:
                u = u + wd * p
                pn, un = float(p.norm()), float(u.norm())
                ratio = pn / un if pn > 0 and un > 0 else 1.0
            else:
                ratio = 1.0
            self.p[i] = p - self.lr * ratio * u


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8))


@pytest.mark.parametrize("grad_scale", [0.01, 10.0])  # below and above the clip threshold
def test_lamb_matches_reference_20_steps(grad_scale):
    model = _model()
    params = list(model.parameters())
    groups = param_groups(model, 0.01)
    decays = [0.01 if p.dim() >= 2 else 0.0 for p in params]
    assert decays.count(0.0) == 4  # 2 biases + LayerNorm weight and bias are not decayed
    opt = LAMB(groups, lr=0.05, weight_decay=0.01, max_grad_norm=1.0)
    ref = RefLAMB(params, decays, lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    scaler.scale(torch.ones(()))  # the scaler initialises its scale lazily
    gen = torch.Generator().manual_seed(1)
    skipped = 0
    for step in range(20):
        grads = [torch.randn(p.shape, generator=gen) * grad_scale for p in params]
        if step == 7:
            grads[2][0] = float("inf")  # overflow: GradScaler skips this step
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone() * scaler.get_scale()
        scale_before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if scaler.get_scale() < scale_before:
            skipped += 1
        ref.step(grads)
    assert skipped == 1
    assert opt.param_groups[0]["step"] == 19 and ref.t == 19
    for p, r in zip(params, ref.p, strict=True):
        rel = (p.detach().double() - r).norm() / r.norm()
        assert rel <= 1e-6, rel
    # the reference moved away from the start: the comparison is not vacuous
    start = _model()
    assert all((p - s).abs().max() > 1e-3 for p, s in zip(params, start.parameters(), strict=True))


def test_lamb_precomputed_norm_equals_internal():
    a, b = _model(), _model()
    oa = build_optimizer(a, "lamb", lr=0.01)
    ob = build_optimizer(b, "lamb", lr=0.01)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) * 5 for p in a.parameters()]
        for pa, pb, g in zip(a.parameters(), b.parameters(), grads, strict=True):
            pa.grad, pb.grad = g.clone(), g.clone()
        oa.step()
        # in the optimizer's order: the same summation order, so bit-identical
        ob.step(grad_norm=global_grad_norm([p.grad for g in ob.param_groups for p in g["params"]]))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.exact_resume
def test_lamb_state_dict_roundtrip_is_exact():
    a = _model()
    oa = build_optimizer(a, "lamb", lr=0.01)
    gen = torch.Generator().manual_seed(4)
    grads = [[torch.randn(p.shape, generator=gen) for p in a.parameters()] for _ in range(4)]
    for gs in grads[:2]:
        for p, g in zip(a.parameters(), gs, strict=True):
            p.grad = g.clone()
        oa.step()
    b = _model()
    b.load_state_dict(a.state_dict())
    ob = build_optimizer(b, "lamb", lr=0.01)
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # as from a file: no shared tensors
    for gs in grads[2:]:
        for m, o in ((a, oa), (b, ob)):
            for p, g in zip(m.parameters(), gs, strict=True):
                p.grad = g.clone()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_one_no_decay_rule():
    model = _model()
    groups = param_groups(model, 0.01)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert all(p.dim() >= 2 for p in groups[0]["params"])
    assert all(p.dim() < 2 for p in groups[1]["params"])
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "sgd")


@pytest.mark.parametrize("kind", ["fp32", "mixed_layouts", "bf16", "fp64_strided"])
def test_global_grad_norm_matches_the_plain_norm_and_keeps_overflow_visible(kind):
    """The BLAS-dot path (contiguous fp32 CPU tensors) and the norm path give the plain norm."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(300, 70, generator=g), torch.randn(7, generator=g), torch.randn(23, 5, generator=g)]
    if kind == "mixed_layouts":
        grads[2] = grads[2].t()
    if kind == "bf16":
        grads = [t.bfloat16() for t in grads]
    if kind == "fp64_strided":  # the norm path in fp64 (a narrowing dtype= would raise here)
        grads = [t.double() for t in grads]
        grads[0] = grads[0].t()
    ref = torch.linalg.vector_norm(torch.cat([t.float().flatten() for t in grads]))
    assert float(global_grad_norm(grads)) == pytest.approx(float(ref), rel=1e-5)
    grads[1][3] = float("inf")
    assert global_grad_norm(grads).isinf()
    grads[1][3] = float("nan")
    assert global_grad_norm(grads).isnan()


def test_the_norms_do_not_depend_on_where_a_gradient_lies_in_memory():
    """The same values at every 4-byte offset of a buffer (as gradients lie in a DDP bucket) give
    bit for bit the same sum of squares and global norm; BLAS dot alone does not (MKL sums a
    vector whose address is 4 mod 16 bytes in another order)."""
    from bertforge.optim.grads import sum_of_squares

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every rank of the fault tests runs (OMP_NUM_THREADS=1)
    try:
        _norms_at_every_offset(sum_of_squares)
    finally:
        torch.set_num_threads(threads)


def _norms_at_every_offset(sum_of_squares):
    torch.manual_seed(0)
    x = torch.randn(65536)
    aligned = sum_of_squares(x)
    norm = global_grad_norm([x, x[:1000].clone()])
    for off in range(16):
        buf = torch.empty(x.numel() + 1000 + 16)
        v = buf[off:off + x.numel()]
        v.copy_(x)
        w = buf[off + x.numel():off + x.numel() + 1000]
        w.copy_(x[:1000])
        assert v.data_ptr() % 4 == 0 and (off == 0 or v.data_ptr() % 64 != 0)
        assert torch.equal(sum_of_squares(v), aligned), off
        assert torch.equal(global_grad_norm([v, w]), norm), off
