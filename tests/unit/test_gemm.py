"""oneDNN GEMM path (bertforge.model.gemm) against PyTorch's own fp32 products, and the
per-machine choice between them (forced, measured, cached, through the CLI flag, agreed by
every rank, kept on resume)."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

from bertforge.cli.environment import Environment, cpu_gemm_policy, read_environment
from bertforge.config import ModelConfig
from bertforge.errors import ConfigError
from bertforge.model import gemm
from bertforge.model.bert import BertForPreTraining, BertForQuestionAnswering, pretraining_loss
from tests.conftest import REPO
from tests.unit.test_model_parity import tiny_config

needs_onednn = pytest.mark.skipif(gemm._ONEDNN is None, reason="this torch build has no oneDNN")


@pytest.fixture
def calls(monkeypatch):
    """Count the oneDNN products a block of code runs (oneDNN forced for the test)."""
    monkeypatch.setitem(gemm._state, "backend", "onednn")
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
    assert read_environment({}) == Environment(None, None)
    # the policy: --cpu_gemm, else the variable, else auto
    assert cpu_gemm_policy("onednn", read_environment({"BERTFORGE_CPU_GEMM": "aten"})) == "onednn"
    assert cpu_gemm_policy(None, read_environment({"BERTFORGE_CPU_GEMM": "aten"})) == "aten"
    assert cpu_gemm_policy(None, read_environment({})) == "auto"
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

    def onednn():  # oneDNN even where this machine's choice is MKL
        return gemm.backend("onednn") if gemm._ONEDNN is not None else contextlib.nullcontext()

    with onednn():
        ref_onednn = gemm.linear_nt(x, w)
    ref = {"onednn": ref_onednn, "aten": F.linear(x, w), "gt_x": g.t().mm(x),
           "gemv": gemm.column_sums(g), "dot": torch.dot(v, v)}
    for off in range(1, 16):
        xo, wo, go, vo = (_at_offset(t, off) for t in (x, w, g, v))
        with onednn():
            got_onednn = gemm.linear_nt(xo, wo)
        got = {"onednn": got_onednn, "aten": F.linear(xo, wo), "gt_x": go.t().mm(xo),
               "gemv": gemm.column_sums(go), "dot": torch.dot(vo, vo)}
        for k in ref:
            assert torch.equal(got[k], ref[k]), f"{k} differs at an offset of {off} floats"


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No backend chosen yet, no policy set, BERTFORGE_CPU_GEMM unset, an empty cache."""
    monkeypatch.setattr(gemm, "_state", {**gemm._state, "backend": None, "choice": None, "policy": None,
                                            "log": None})
    monkeypatch.delenv("BERTFORGE_CPU_GEMM", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "bertforge" / "cpu_gemm.json"


def _never(*_):
    raise AssertionError("measured although the choice is forced or cached")


@needs_onednn
@pytest.mark.parametrize("name", ["onednn", "aten"])
def test_forced_choice_measures_nothing(name, tmp_path):
    c = gemm.choose_backend(name, cache_dir=tmp_path, measure=_never)
    assert (c.backend, c.reason) == (name, "forced") and not list(tmp_path.iterdir())


@needs_onednn
@pytest.mark.parametrize("faster", ["onednn", "aten"])
def test_auto_takes_the_faster_backend_and_caches_it(faster, tmp_path):
    slower = "aten" if faster == "onednn" else "onednn"
    seen = []

    def fake():
        seen.append(1)
        return {faster: 150.0, slower: 100.0}

    c = gemm.choose_backend("auto", cache_dir=tmp_path, measure=fake)
    assert (c.backend, c.reason, len(seen)) == (faster, "measured", 1)
    assert f"backend {faster} (auto, measured" in c.message()
    # every later process on this machine (any model, any thread count) reads the cache
    again = gemm.choose_backend("auto", cache_dir=tmp_path, measure=_never)
    assert (again.backend, again.reason) == (faster, "cached")
    entry = json.loads((tmp_path / "cpu_gemm.json").read_text())
    (key, value), = entry.items()
    assert key == gemm.cache_key() and torch.__version__ in key and gemm.cpu_model() in key
    assert value["backend"] == faster and value["gflops"] == {faster: 150.0, slower: 100.0}
    # another torch version (or CPU) is measured for itself, beside the first
    entry["other CPU | torch 0.0"] = entry.pop(key)
    (tmp_path / "cpu_gemm.json").write_text(json.dumps(entry))
    gemm.choose_backend("auto", cache_dir=tmp_path, measure=fake)
    assert len(seen) == 2 and len(json.loads((tmp_path / "cpu_gemm.json").read_text())) == 2


@needs_onednn
def test_a_cpu_of_the_same_name_with_other_features_measures_for_itself(tmp_path, monkeypatch):
    """VMs name different CPUs alike ("Intel(R) Xeon(R) Processor"): the cached choice of one
    with AVX-512 must not serve one without."""
    seen = []
    fake = lambda: seen.append(1) or {"onednn": 150.0, "aten": 100.0}  # noqa: E731
    gemm.choose_backend("auto", cache_dir=tmp_path, measure=fake)
    monkeypatch.setattr(gemm, "cpu_features", lambda: "0000beef")
    assert gemm.choose_backend("auto", cache_dir=tmp_path, measure=fake).reason == "measured"
    assert len(seen) == 2 and len(json.loads((tmp_path / "cpu_gemm.json").read_text())) == 2


@needs_onednn
def test_auto_without_a_writable_cache_does_not_measure(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the cache directory should be
    c = gemm.choose_backend("auto", cache_dir=blocker / "bertforge", measure=_never)
    assert (c.backend, c.reason) == ("onednn", "no cache") and "not measured" in c.message()


@needs_onednn
def test_real_measurement_leaves_the_random_streams_alone():
    state = torch.get_rng_state()
    rates = gemm.measure_backends(32, 64, rows=64, repeats=1)  # small shapes: a quick test
    assert set(rates) == {"onednn", "aten"} and all(0 < r < float("inf") for r in rates.values())
    assert torch.equal(torch.get_rng_state(), state)


@needs_onednn
def test_first_product_chooses_once_and_logs_once(fresh, capsys, monkeypatch):
    seen = []

    def fake():
        seen.append(1)
        return {"onednn": 90.0, "aten": 120.0}

    monkeypatch.setattr(gemm, "measure_backends", fake)
    BertForQuestionAnswering(tiny_config())  # building a model chooses nothing yet
    assert seen == [] and gemm._state["backend"] is None
    x, w = torch.randn(4, 6), torch.randn(8, 6)
    gemm.linear(x, w)
    gemm.linear(x, w)
    assert seen == [1] and gemm.get_backend() == "aten"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("bertforge: fp32 CPU GEMM backend aten (auto, measured")
    assert fresh.is_file()


@needs_onednn
def test_configure_sets_the_policy_and_drops_a_choice_made_under_another(fresh, monkeypatch):
    gemm.configure("aten")
    assert gemm.get_backend() == "aten" and gemm._state["choice"].reason == "forced"
    gemm.configure("onednn")
    assert gemm.get_backend() == "onednn"
    monkeypatch.setattr(gemm, "measure_backends", lambda: {"onednn": 1.0, "aten": 2.0})
    gemm.configure("auto")
    assert gemm.get_backend() == "aten" and gemm._state["choice"].reason == "measured"
    gemm.configure("auto")  # the same policy keeps its choice (nothing measured again)
    monkeypatch.setattr(gemm, "measure_backends", _never)
    assert gemm.get_backend() == "aten"
    with pytest.raises(ConfigError, match="cpu_gemm 'mkl'"):
        gemm.configure("mkl")


@needs_onednn
@pytest.mark.parametrize("flag", ["onednn", "aten", "auto"])
def test_cli_flag_forces_each_choice(flag, fresh, tmp_path, capsys, monkeypatch, real_data):
    """inference.py --cpu_gemm: the products of the answer run on the backend asked for (auto
    here reads a cache that says aten), the choice is logged once, and the answer is the same."""
    from bertforge.cli.inference import main as inference_main
    from bertforge.model.convert import save_bertforge

    monkeypatch.setenv("BERTFORGE_CPU_GEMM", "onednn")  # the flag overrides it
    fresh.parent.mkdir(parents=True)
    fresh.write_text(json.dumps({gemm.cache_key(): {"backend": "aten", "gflops": {"onednn": 1, "aten": 2}}}))
    seen = []
    real = gemm._ONEDNN
    monkeypatch.setattr(gemm, "_ONEDNN", lambda *a: seen.append(1) or real(*a))
    torch.manual_seed(0)
    cfg = ModelConfig.from_json_file(REPO / "bert_configs/tiny.json")
    save_bertforge(BertForQuestionAnswering(cfg), tmp_path / "qa.pt")
    out = inference_main(["--init_checkpoint", str(tmp_path / "qa.pt"), "--vocab_file",
                          str(real_data("vocab/bert-base-uncased-vocab.txt")), "--do_lower_case",
                          "--question", "Who?", "--context", "Rollo led the Normans.", "--cpu_gemm", flag])
    err = [line for line in capsys.readouterr().err.splitlines() if "CPU GEMM" in line]
    want = "aten" if flag == "auto" else flag
    assert len(err) == 1 and f"backend {want} (" in err[0], err
    assert ("cached" in err[0]) == (flag == "auto")
    assert bool(seen) == (want == "onednn")
    assert out[0]["answer"]


_RANK_PROBE = """
import json, sys
from bertforge.errors import UserError
from bertforge.model import gemm
from bertforge.train import finetune

def never():
    raise AssertionError("measured on rank %s" % sys.argv[1])

gemm.measure_backends = never if sys.argv[1] != "0" else (lambda: {"onednn": 1.0, "aten": 2.0})
try:
    from bertforge.cli.environment import cpu_gemm_policy, read_environment
    from bertforge.config import LaunchConfig, PrecisionConfig
    policy = cpu_gemm_policy(None, read_environment())  # as run_squad/run_glue take it
    finetune.setup_runtime(seed=0, precision=PrecisionConfig(cpu_gemm=policy), launch=LaunchConfig(device="cpu"))
    import torch
    x = torch.randn(4, 6)
    gemm.linear(x, torch.randn(3, 6))  # a product: nothing is chosen again
    print(json.dumps({"backend": gemm.get_backend(), "reason": gemm._state["choice"].reason}))
except UserError as e:
    print(json.dumps({"error": str(e)}))
import torch.distributed as dist
dist.barrier()  # no rank tears the group down while the other still uses it
dist.destroy_process_group()
"""


def _two_ranks(tmp_path, caches: list[str | None], policies: list[str | None]) -> list[dict]:
    """Start 2 gloo ranks of ``finetune.setup_runtime`` (what run_squad/run_glue run first), each
    with its own cache (a backend name: a cache entry naming it; None: an empty cache) and its own
    BERTFORGE_CPU_GEMM; return what each rank then computes with."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank, (cached, policy) in enumerate(zip(caches, policies, strict=True)):
        cache = tmp_path / f"rank{rank}"
        (cache / "bertforge").mkdir(parents=True)
        if cached is not None:
            (cache / "bertforge" / "cpu_gemm.json").write_text(json.dumps(
                {gemm.cache_key(): {"backend": cached, "gflops": {cached: 2.0}}}))
        env = {k: v for k, v in os.environ.items() if k not in ("BERTFORGE_CPU_GEMM", "LOCAL_RANK")}
        env.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   XDG_CACHE_HOME=str(cache), OMP_NUM_THREADS="1", BERTFORGE_DIST_TIMEOUT="120")
        if policy is not None:
            env["BERTFORGE_CPU_GEMM"] = policy
        procs.append(subprocess.Popen([sys.executable, "-c", _RANK_PROBE, str(rank)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


@needs_onednn
def test_every_rank_computes_with_rank_0s_choice(tmp_path):
    """2 gloo ranks whose own caches disagree (as on nodes of different CPU models): both use
    rank 0's backend, and only rank 0 would measure; with rank 0's cache empty, rank 0 measures
    and rank 1 still measures nothing."""
    assert [r["backend"] for r in _two_ranks(tmp_path / "a", ["aten", "onednn"], [None, None])] == ["aten"] * 2
    ranks = _two_ranks(tmp_path / "b", [None, "onednn"], [None, None])
    assert ranks == [{"backend": "aten", "reason": "measured"}] * 2


@needs_onednn
def test_ranks_started_with_different_policies_all_stop(tmp_path):
    ranks = _two_ranks(tmp_path, [None, None], ["aten", None])
    for r in ranks:
        assert r["error"] == ("the ranks were started with different --cpu_gemm/BERTFORGE_CPU_GEMM "
                              "(rank 0 aten, rank 1 auto): give every rank the same"), r


@needs_onednn
@pytest.mark.parametrize("recorded", ["onednn", "aten"])
def test_a_resume_under_auto_keeps_the_recorded_backend(recorded, fresh, monkeypatch, capsys):
    """settle(recorded=...) under auto adopts the checkpoint's backend whatever the cache or a
    measurement says (nothing is measured); an explicit policy wins over the record."""
    other = "aten" if recorded == "onednn" else "onednn"
    fresh.parent.mkdir(parents=True)
    fresh.write_text(json.dumps({gemm.cache_key(): {"backend": other, "gflops": {other: 2.0}}}))
    monkeypatch.setattr(gemm, "measure_backends", _never)
    c = gemm.settle(recorded=recorded, source="out/ckpt_4.pt")
    assert (c.backend, c.reason, gemm.get_backend()) == (recorded, "checkpoint", recorded)
    assert capsys.readouterr().err == ""  # printed at the first product, after the run's own checks
    gemm.linear(torch.randn(2, 3), torch.randn(4, 3))
    gemm.linear(torch.randn(2, 3), torch.randn(4, 3))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"backend {recorded} (auto: the backend out/ckpt_4.pt was computed with" in err[0]
    gemm.configure(other)  # --cpu_gemm or BERTFORGE_CPU_GEMM wins
    assert gemm.settle(recorded=recorded, source="out/ckpt_4.pt").backend == other
    gemm.configure("auto")
    assert gemm.settle().backend == other  # no record: the cache decides


@needs_onednn
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_inference_runs_the_gelu_inside_the_onednn_product(monkeypatch, approximate):
    """BertIntermediate without gradients: one oneDNN product with a GELU post-op (no F.gelu
    pass), equal to the two-pass result to float rounding; with gradients the two passes, bit
    for bit as before."""
    torch.manual_seed(3)
    x, w, b = torch.randn(118, 96), torch.randn(200, 96) * 0.1, torch.randn(200)
    with gemm.backend("onednn"):
        two_pass = F.gelu(gemm.linear(x, w, b), approximate=approximate)
        assert torch.equal(gemm.linear_gelu(x, w, b, approximate), two_pass)  # gradients enabled
        calls = []
        gelu = F.gelu
        monkeypatch.setattr(F, "gelu", lambda *a, **k: calls.append(1) or gelu(*a, **k))
        with torch.inference_mode():
            fused = gemm.linear_gelu(x, w, b, approximate)
    assert calls == []
    torch.testing.assert_close(fused, two_pass, rtol=1e-6, atol=1e-6)
