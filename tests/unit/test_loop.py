"""TrainStep: accumulation math, clipping, fp16 skipped steps, scheduler order."""

from __future__ import annotations

import pytest
import torch

from bertforge.errors import ConfigError
from bertforge.optim import PolyWarmUpScheduler, build_optimizer
from bertforge.precision import Precision
from bertforge.train.loop import StepResult, SummedLoss, TrainStep


def _toy(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.LayerNorm(16),
                               torch.nn.Linear(16, 1))


class _MSE(SummedLoss):
    """Squared error summed over the rows whose ``w`` is 1 (all rows without ``w``)."""

    def _w(self, batch):
        return batch.get("w", torch.ones_like(batch["y"]))

    def counts(self, batch):
        return self._w(batch).sum().reshape(1)

    def sums(self, model, batch):
        return ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2 * self._w(batch)).sum().reshape(1)


_loss = _MSE()


def _data(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 8, generator=g), "y": torch.randn(n, generator=g) * 3}


@pytest.mark.parametrize("norm", ["global_batch", "micro_batch"])
@pytest.mark.parametrize("opt_name", ["lamb", "adamw", "bertadam"])
def test_accumulation_equals_one_big_batch(opt_name, norm):
    data = _data(8)
    results = []
    for accum in (1, 4):
        model = _toy()
        opt = build_optimizer(model, opt_name, lr=0.05)
        sched = PolyWarmUpScheduler(opt, warmup=0.0, total_steps=10)
        ts = TrainStep(model, opt, sched, Precision.from_flags(False, False, "cpu"),
                       accumulation_steps=accum, max_grad_norm=1.0, loss_normalization=norm)
        micro = [{k: v[i * (8 // accum):(i + 1) * (8 // accum)]
                  for k, v in data.items()} for i in range(accum)]
        for _ in range(3):
            r = ts.step(micro, _loss)
        results.append((r.loss, [p.detach().clone() for p in model.parameters()]))
    (l1, p1), (l4, p4) = results
    assert abs(l1 - l4) < 1e-5 * max(1.0, abs(l1))
    # Adam-type updates magnify float reassociation of near-zero gradients: lr 0.05 x 3 steps
    for a, b in zip(p1, p4, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=2e-5), (a - b).abs().max()


def _grads_after(micro, norm, loss_fn=_loss):
    model = _toy()
    opt = build_optimizer(model, "adamw", lr=0.0)
    seen = {}
    orig = opt.step

    def spy(*a, **k):
        seen["g"] = [p.grad.clone() for p in model.parameters()]
        return orig(*a, **k)

    opt.step = spy
    ts = TrainStep(model, opt, None, Precision.from_flags(False, False, "cpu"),
                   accumulation_steps=len(micro), max_grad_norm=0.0, loss_normalization=norm)
    r = ts.step(micro, loss_fn)
    return r, seen["g"]


def test_global_normalisation_weighs_every_item_alike_however_split():
    """Micro-batches with different numbers of counted items (like masked tokens): the global
    normalisation gives the one-batch gradient, the micro-batch mean does not."""
    data = _data(8)
    data["w"] = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1])  # 1 counted item, then 4
    halves = [{k: v[:4] for k, v in data.items()}, {k: v[4:] for k, v in data.items()}]
    r1, g1 = _grads_after([data], "global_batch")
    r2, g2 = _grads_after(halves, "global_batch")
    assert r2.loss == pytest.approx(r1.loss, rel=1e-6)
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    _, gm = _grads_after(halves, "micro_batch")
    assert max(float((a - b).norm() / a.norm()) for a, b in zip(g1, gm, strict=True)) > 0.1
    with pytest.raises(TypeError, match="needs a SummedLoss"):
        _grads_after([data], "global_batch", loss_fn=lambda m, b: _loss(m, b))


def test_clipping_caps_the_update_and_reports_the_unclipped_norm():
    model = _toy()
    opt = build_optimizer(model, "adamw", lr=0.0)  # lr 0: only look at the grads
    ts = TrainStep(model, opt, None, Precision.from_flags(False, False, "cpu"), max_grad_norm=0.5)
    seen = {}
    orig = opt.step

    def spy(*a, **k):
        seen["norm"] = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in model.parameters()])).item()
        return orig(*a, **k)

    opt.step = spy
    big = {"x": torch.randn(4, 8) * 100, "y": torch.full((4,), 1e3)}
    r = ts.step([big], _loss)
    assert r.grad_norm > 0.5
    assert seen["norm"] == pytest.approx(0.5, rel=1e-5)
    assert isinstance(r, StepResult) and r.skipped is False and r.loss_scale is None


def test_lamb_threshold_must_match():
    model = _toy()
    opt = build_optimizer(model, "lamb", lr=0.01, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="clips at"):
        TrainStep(model, opt, None, Precision.from_flags(False, False, "cpu"), max_grad_norm=2.0)


def test_fp16_overflow_skips_step_and_schedule():
    model = _toy()
    opt = build_optimizer(model, "lamb", lr=0.01)
    sched = PolyWarmUpScheduler(opt, warmup=0.5, total_steps=10)
    # fp16 is CUDA-only for users; the loop logic is tested with a CPU GradScaler.
    prec = Precision("fp16", torch.device("cpu"), torch.amp.GradScaler("cpu", init_scale=2.0**8))
    ts = TrainStep(model, opt, sched, prec, accumulation_steps=2)
    good = _data(4)
    bad = {"x": good["x"].clone(), "y": good["y"].clone()}
    bad["y"][0] = float("inf")
    r1 = ts.step([good, good], _loss)
    assert not r1.skipped and sched.last_epoch == 1 and opt.param_groups[0]["step"] == 1
    before = [p.detach().clone() for p in model.parameters()]
    r2 = ts.step([good, bad], _loss)
    assert r2.skipped and ts.skipped_steps == 1
    assert sched.last_epoch == 1 and opt.param_groups[0]["step"] == 1
    assert r2.loss_scale == 2.0**7
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    r3 = ts.step([good, good], _loss)
    assert not r3.skipped and sched.last_epoch == 2


def test_precision_flags():
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Precision.from_flags(True, False, "cpu")
    with pytest.raises(ConfigError, match="mutually exclusive"):
        Precision.from_flags(True, True, "cpu")
    p = Precision.from_flags(False, True, "cpu")
    assert p.name == "bf16" and p.scaler is None
    with p.autocast():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16


def test_poly_schedule_values():
    model = _toy()
    opt = build_optimizer(model, "lamb", lr=1.0)
    s = PolyWarmUpScheduler(opt, warmup=0.2, total_steps=10)
    assert opt.param_groups[0]["lr"] == 0.0
    lrs = []
    for _ in range(10):
        s.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx((1 - 0.2) ** 0.5)
    assert lrs[-1] == 0.0
    s2 = PolyWarmUpScheduler(build_optimizer(_toy(), "lamb", lr=1.0), warmup=0.2, total_steps=10)
    s2.load_state_dict(s.state_dict())
    assert s2.get_last_lr() == s.get_last_lr()


def _micro_bert():
    from bertforge.config import ModelConfig
    from bertforge.model.bert import BertForPreTraining

    cfg = ModelConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return BertForPreTraining(cfg)


def _mlm_batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(5, 64, (3, 16), generator=g)
    am = torch.ones_like(ids)
    am[2, 10:] = 0
    labels = torch.full_like(ids, -1)
    labels[0, 3], labels[1, 7], labels[2, 1], labels[2, 5] = 9, 11, 13, 17
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": am,
            "masked_lm_labels": labels, "next_sentence_labels": torch.tensor([0, 1, 0])}


@pytest.mark.parametrize("variant", ["no_dense_sequence_output", "checkpoint_activations"])
def test_pretraining_loss_variants_give_the_same_gradients(variant):
    """--no_dense_sequence_output and --checkpoint_activations change cost, not results."""
    from bertforge.train.pretrain import PretrainingLoss

    batch = _mlm_batch()
    grads = []
    for on in (False, True):
        model = _micro_bert()
        if variant == "checkpoint_activations":
            model.bert.encoder.gradient_checkpointing = on
            loss_fn = PretrainingLoss()
        else:
            loss_fn = PretrainingLoss(dense_sequence_output=not on)
        loss = loss_fn(model, batch)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = grads
    assert torch.allclose(l0, l1, rtol=1e-6)
    for n in g0:
        assert torch.allclose(g0[n], g1[n], rtol=1e-5, atol=1e-7), n


def test_linear_decay_ends_at_positive_zero():
    """The last fine-tuning step logged ``learning_rate -0.0``; the schedule ends at +0.0."""
    import math

    from bertforge.optim.schedulers import warmup_linear

    assert warmup_linear(0.05, 0.1) == pytest.approx(0.5) and warmup_linear(0.55, 0.1) == pytest.approx(0.5)
    end = warmup_linear(1.0, 0.1)
    assert end == 0.0 and math.copysign(1.0, end) == 1.0
    assert warmup_linear(1.5, 0.1) == 0.0


@pytest.mark.parametrize("dense", [True, False])
def test_pretraining_loss_sums_over_counts_equal_the_mean(dense):
    """counts() from the labels alone, sums() / counts() == NVIDIA's mean, same gradients."""
    from bertforge.train.pretrain import PretrainingLoss

    batch = _mlm_batch()
    loss_fn = PretrainingLoss(dense_sequence_output=dense)
    assert loss_fn.counts(batch).tolist() == [4.0, 3.0]  # masked tokens, sequences
    grads = []
    for how in ("mean", "sums"):
        model = _micro_bert()
        if how == "mean":
            loss = loss_fn(model, batch)
        else:
            loss = (loss_fn.sums(model, batch) / loss_fn.counts(batch)).sum()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = grads
    assert torch.allclose(l0, l1, rtol=1e-6)
    assert torch.allclose(loss_fn.last_parts.sum(), l0, rtol=1e-6)
    for a, b in zip(g0, g1, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
