"""oneDNN GEMM path (bertforge.model.gemm) against PyTorch's own fp32 products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bertforge.cli.environment import Environment, read_environment
from bertforge.errors import ConfigError
from bertforge.model import gemm
from bertforge.model.bert import BertForPreTraining, BertForQuestionAnswering, pretraining_loss
from tests.unit.test_model_parity import tiny_config

needs_onednn = pytest.mark.skipif(gemm._ONEDNN is None, reason="this torch build has no oneDNN")


@pytest.fixture
def calls(monkeypatch):
    """Count the oneDNN products a block of code runs."""
    seen = []
    real = gemm._ONEDNN

    def counting(*args):
        seen.append(tuple(args[0].shape))
        return real(*args)

    monkeypatch.setattr(gemm, "_ONEDNN", counting)
    return seen


def _fp64_reference(x, w, b, gy):
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    y = F.linear(x64, w64, b64)
    grads = torch.autograd.grad(y, [t for t in (x64, w64, b64) if t is not None], gy.double())
    return y, grads


@needs_onednn
@pytest.mark.parametrize("shape", [(37, 48), (3, 5, 48), (0, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_fp64_reference(shape, bias, calls):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).requires_grad_()
    w = torch.randn(24, 48, generator=g).requires_grad_()
    b = torch.randn(24, generator=g).requires_grad_() if bias else None
    gy = torch.randn(*shape[:-1], 24, generator=g)
    y = gemm.linear(x, w, b)
    assert calls, "oneDNN did not run"
    ref_y, ref_grads = _fp64_reference(x, w, b, gy)
    assert y.shape == ref_y.shape and y.dtype == torch.float32
    assert torch.allclose(y.double(), ref_y, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], gy)
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got.double(), want, atol=1e-4, rtol=1e-5)


@needs_onednn
def test_linear_of_strided_input_and_no_grad(calls):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 30, generator=g).t()  # [30, 48], not contiguous
    w = torch.randn(16, 48, generator=g)
    with torch.no_grad():
        y = gemm.linear(x, w)
    assert calls and y.grad_fn is None
    assert torch.allclose(y, F.linear(x, w), atol=1e-5)


def test_plain_path_where_onednn_does_not_apply(calls):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(8, 6, generator=g)
    gemm.linear(torch.randn(4, 6, generator=g, dtype=torch.float64), w.double())  # fp64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gemm.linear(torch.randn(4, 6, generator=g), w)
    assert y.dtype == torch.bfloat16  # autocast's F.linear, not an fp32 oneDNN product
    with gemm.backend("aten"):
        gemm.linear(torch.randn(4, 6, generator=g), w)
    assert calls == []


@needs_onednn
def test_backend_switch(monkeypatch, calls):
    x, w = torch.randn(4, 6), torch.randn(8, 6)
    with gemm.backend("aten"):
        assert gemm.get_backend() == "aten"
        gemm.linear(x, w)
        assert calls == []
    gemm.linear(x, w)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="unknown CPU GEMM backend 'mkl'"):
        gemm.set_backend("mkl")
    # the library reads no environment variable: the command lines pass the setting on
    monkeypatch.setenv("BERTFORGE_CPU_GEMM", "aten")
    gemm.linear(x, w)
    assert gemm.get_backend() == "onednn" and len(calls) == 2


@needs_onednn
def test_model_trains_the_same_on_onednn_and_aten(calls):
    """Whole pretraining step in fp32, dropout on: loss and every gradient agree between the
    oneDNN products and PyTorch's, and oneDNN ran in every layer's products."""
    torch.manual_seed(4)
    model = BertForPreTraining(tiny_config()).train()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 101, (3, 20), generator=g)
    labels = torch.full_like(ids, -1)
    labels[:, [2, 7]] = 5
    nsl = torch.tensor([0, 1, 1])
    results = []
    for name in ("onednn", "aten"):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(6)
        with gemm.backend(name):
            before = len(calls)
            s, n = model(ids, None, None, masked_lm_labels=labels)
            loss = pretraining_loss(s, n, labels, nsl)[0]
            loss.backward()
            ran = len(calls) - before
        results.append((loss.item(), {k: p.grad.to_dense().clone() for k, p in model.named_parameters()}, ran))
    (la, ga, ran_a), (lb, gb, ran_b) = results
    assert ran_b == 0 and ran_a >= 2 * 3 * 2  # layers x (qkv, out proj, 2 feed-forward) forward + dL/dx
    assert la == pytest.approx(lb, rel=1e-6)
    # Float reassociation alone leaves every gradient within ~1e-7 (relative L2); a product
    # off by 1e-4 (dL/dx x 1.0001) moves the gradients below it by ~1e-4.
    for k in ga:
        if ".attention.self.key.bias" in k:
            # softmax is invariant to a per-query shift: this gradient is 0 up to float noise
            assert ga[k].abs().max() < 1e-6 and gb[k].abs().max() < 1e-6, k
            continue
        rel = float((ga[k] - gb[k]).norm() / gb[k].norm())
        assert rel <= 2e-6, (k, rel)


@needs_onednn
def test_traced_model_holds_no_onednn_op(calls):
    """Export traces the model: the graph must hold portable ATen ops (ONNX, TorchScript, Triton)."""
    model = BertForQuestionAnswering(tiny_config()).eval()
    ids = torch.randint(1, 101, (2, 9))
    with torch.no_grad():
        eager = model(ids)  # eager inference does use oneDNN
        assert calls
        calls.clear()
        traced = torch.jit.trace(model, (ids,), check_trace=False)
    assert calls == []
    graph = str(traced.inlined_graph)
    assert "mkldnn" not in graph and "aten::linear" in graph
    with torch.no_grad():
        out = traced(ids)
    for a, b in zip(eager, out, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_environment_is_read_at_the_command_line(monkeypatch):
    """BERTFORGE_CPU_GEMM is validated by bertforge.cli.environment (a bad value: one line);
    building a model reads no environment."""
    monkeypatch.setenv("BERTFORGE_CPU_GEMM", "mkl")
    BertForQuestionAnswering(tiny_config())
    with pytest.raises(ConfigError, match="BERTFORGE_CPU_GEMM='mkl'"):
        read_environment()
    assert read_environment({"BERTFORGE_CPU_GEMM": " ATEN "}).cpu_gemm == "aten"
    assert read_environment({}) == Environment("onednn", None)
    assert read_environment({"BERTFORGE_DIST_TIMEOUT": "90"}).dist_timeout == 90.0
    for bad in ("0", "-5", "soon"):
        with pytest.raises(ConfigError, match=f"BERTFORGE_DIST_TIMEOUT='{bad}'"):
            read_environment({"BERTFORGE_DIST_TIMEOUT": bad})


def _at_offset(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A copy of ``t`` whose data starts ``offset`` floats into a fresh buffer (an address
    that is 4-byte but not 64-byte aligned for offsets that are not multiples of 16)."""
    buf = torch.empty(t.numel() + 16, dtype=t.dtype)
    v = buf[offset:offset + t.numel()].view_as(t)
    v.copy_(t)
    return v


@pytest.mark.exact_resume
def test_products_do_not_depend_on_where_operands_lie_in_memory():
    """MKL and oneDNN may pick code paths by pointer alignment; the bits of every product a
    training step runs (x W^T on oneDNN and MKL, g^T x, the bias gemv, the norms' dot) must
    not change with the operands' addresses, or two processes would differ run to run."""
    torch.manual_seed(0)
    x, w, g = torch.randn(203, 96), torch.randn(77, 96), torch.randn(203, 77)
    v = torch.randn(100_003)
    ref = {"onednn": gemm.linear_nt(x, w), "aten": F.linear(x, w), "gt_x": g.t().mm(x),
           "gemv": gemm.column_sums(g), "dot": torch.dot(v, v)}
    for off in range(1, 16):
        xo, wo, go, vo = (_at_offset(t, off) for t in (x, w, g, v))
        got = {"onednn": gemm.linear_nt(xo, wo), "aten": F.linear(xo, wo), "gt_x": go.t().mm(xo),
               "gemv": gemm.column_sums(go), "dot": torch.dot(vo, vo)}
        for k in ref:
            assert torch.equal(got[k], ref[k]), f"{k} differs at an offset of {off} floats"
