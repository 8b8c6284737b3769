"""The fused training blocks (bertforge.model.fused) against plain autograd compositions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bertforge.model.bert import BertForPreTraining, pretraining_loss
from bertforge.model.fused import (
    TiedGradient,
    attention,
    cross_entropy,
    embedding_lookup,
    feed_forward,
    tied_decoder,
)
from tests.unit.test_model_parity import tiny_config


def _leaves(*shapes, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _grads(out, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(out.shape, generator=g, dtype=out.dtype)
    return torch.autograd.grad(out, inputs, gy)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_feed_forward_matches_autograd(approximate):
    T, H, inter = 7, 5, 11
    x, w1, b1, w2, b2 = _leaves((T, H), (inter, H), (inter,), (H, inter), (H,))
    fused = feed_forward(x, w1, b1, w2, b2, approximate)
    plain = F.linear(F.gelu(F.linear(x, w1, b1), approximate=approximate), w2, b2)
    assert torch.allclose(fused, plain, rtol=0, atol=1e-12)
    for a, b in zip(_grads(fused, [x, w1, b1, w2, b2]), _grads(plain, [x, w1, b1, w2, b2]), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: feed_forward(*t, approximate), (x, w1, b1, w2, b2))
    (gx,) = torch.autograd.grad(feed_forward(x, w1, b1, w2, b2, approximate).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice|does not require grad"):
        gx.sum().backward()  # double backward is refused, not silently wrong


@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_matches_autograd(with_mask):
    B, nh, L, hd = 2, 3, 6, 4
    # q, k, v as strided views of one [B, L, 3, nh, hd] tensor, as the model passes them
    (qkv,) = _leaves((B, L, 3, nh, hd))
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    key_mask = None
    if with_mask:
        key_mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
        key_mask[1, ..., 4:] = False
    g = torch.Generator().manual_seed(3)
    drop = (torch.rand(B, nh, L, L, generator=g) >= 0.25).double() / 0.75

    fused = attention(q, k, v, key_mask, drop)
    scores = q @ k.transpose(-1, -2)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
    plain = (torch.softmax(scores, -1) * drop) @ v
    assert torch.allclose(fused, plain, rtol=0, atol=1e-12)
    (gb,) = _grads(plain, [qkv])
    (ga,) = _grads(fused, [qkv])
    assert torch.allclose(ga, gb, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: attention(*t.permute(2, 0, 3, 1, 4).unbind(0), key_mask, drop),
                                    (qkv,))


@pytest.mark.parametrize("decoder_calls", [0, 1, 2])
def test_tied_embedding_gradient_matches_autograd(decoder_calls):
    """Lookup and decoder sharing one weight: the lookup's rows (padding index skipped) and
    every decoder call's gradient end up in the one gradient autograd would sum."""
    V, H = 13, 4
    w, b = _leaves((V, H), (V,))
    ids = torch.tensor([[3, 0, 7, 3], [12, 5, 0, 1]])

    def run(fused):
        tied = TiedGradient()
        e = embedding_lookup(ids, w, 0, tied) if fused else F.embedding(ids, w, 0)
        h = e.reshape(-1, H)[:5] * 2
        out = e.sum() * 0.5
        for i in range(decoder_calls):
            hi = h * (i + 1)
            out = out + (tied_decoder(hi, w, b, tied) if fused else F.linear(hi, w, b)).tanh().sum()
        return torch.autograd.grad(out, [w, b], allow_unused=True)

    (gw, gb), (rw, rb) = run(True), run(False)
    assert torch.allclose(gw, rw, rtol=0, atol=1e-12)
    assert (gb is None) == (rb is None) and (gb is None or torch.allclose(gb, rb, rtol=0, atol=1e-12))


def test_cross_entropy_matches_torch_and_refuses_a_second_backward():
    (logits,) = _leaves((6, 9))
    labels = torch.tensor([3, -1, 0, 8, -1, 2])
    fused = cross_entropy(logits, labels, ignore_index=-1)
    plain = F.cross_entropy(logits, labels, ignore_index=-1)
    assert torch.allclose(fused, plain, rtol=0, atol=1e-12)
    (ga,) = torch.autograd.grad(fused * 3, logits, retain_graph=True)
    (gb,) = torch.autograd.grad(plain * 3, logits)
    assert torch.allclose(ga, gb, rtol=0, atol=1e-12)
    assert ga[1].abs().max() == 0 and ga[4].abs().max() == 0  # ignored rows
    with pytest.raises(RuntimeError, match="inplace"):  # its saved buffer became the gradient
        torch.autograd.grad(fused, logits)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
def test_model_trains_the_same_with_and_without_fused_blocks(act):
    """Dropout on, padding in the batch, masked-only last layer: the fused blocks draw the same
    masks (same RNG order) and give the same loss and gradients as the plain modules."""
    torch.manual_seed(4)
    a = BertForPreTraining(tiny_config(hidden_act=act))
    b = BertForPreTraining(tiny_config(hidden_act=act))
    b.load_state_dict(a.state_dict())
    b.set_fused(False)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 101, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    ids = ids * mask
    tt = torch.zeros_like(ids)
    labels = torch.full_like(ids, -1)
    labels[0, [2, 5]] = 7
    labels[1, 3] = 9
    labels[2, 19] = 4
    nsl = torch.tensor([0, 1, 1])
    losses = []
    for m in (a, b):
        torch.manual_seed(6)
        s, n = m.train()(ids, tt, mask, masked_lm_labels=labels)
        loss = pretraining_loss(s, n, labels, nsl)[0]
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for (k, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        ga, gb = pa.grad.to_dense(), pb.grad.to_dense()
        assert torch.allclose(ga, gb, atol=1e-6), k
    # and the fused path really ran: turning it off changes which autograd nodes exist
    s, n = a(ids, tt, mask, masked_lm_labels=labels)
    names, seen = set(), {}  # id -> node, kept alive so ids are not reused
    todo = [pretraining_loss(s, n, labels, nsl)[0].grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and id(fn) not in seen:
            seen[id(fn)] = fn
            names.add(type(fn).__name__)
            todo.extend(f for f, _ in fn.next_functions)
    assert {"_FeedForwardBackward", "_AttentionBackward", "_TiedDecoderBackward", "_EmbeddingLookupBackward",
            "_CrossEntropyBackward"} <= names
