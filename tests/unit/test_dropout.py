"""The fast CPU dropout keeps F.dropout's semantics."""

from __future__ import annotations

import torch

from bertforge.config import ModelConfig
from bertforge.model.bert import BertForPreTraining
from bertforge.model.dropout import fast_dropout


def test_rate_scale_and_gradient():
    torch.manual_seed(0)
    x = torch.ones(400, 1000, requires_grad=True)
    y = fast_dropout(x, 0.1, True)
    kept = y != 0
    rate = 1 - kept.float().mean().item()
    assert abs(rate - 0.1) < 0.003, rate  # 400k draws: sd ~ 0.0005
    assert torch.allclose(y[kept], torch.tensor(65536 / (65536 - 6554)))
    assert abs(y.mean().item() - 1.0) < 0.005  # expectation preserved
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(sum y)/dx = keep * scale
    # eval mode and p=0 are the identity
    assert fast_dropout(x, 0.1, False) is x and fast_dropout(x, 0.0, True) is x


def test_masks_follow_torch_seed_and_differ_between_calls():
    x = torch.ones(64, 64)
    torch.manual_seed(1)
    a1, a2 = fast_dropout(x, 0.5, True), fast_dropout(x, 0.5, True)
    torch.manual_seed(1)
    b1 = fast_dropout(x, 0.5, True)
    assert torch.equal(a1, b1)
    assert not torch.equal(a1, a2)
    # rows are not correlated with each other (a stream, not a repeated pattern)
    assert not torch.equal(a1[0], a1[1])


def test_training_forward_is_reproducible_and_uses_dropout():
    cfg = ModelConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=32)
    m = BertForPreTraining(cfg).train()
    ids = torch.randint(1, 50, (2, 16))
    torch.manual_seed(3)
    a = m(ids)[0]
    torch.manual_seed(3)
    b = m(ids)[0]
    c = m(ids)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    m.eval()
    assert torch.equal(m(ids)[0], m(ids)[0])


def test_dropout_add_is_residual_plus_dropout_with_same_mask():
    from bertforge.model.dropout import dropout_add

    x = torch.randn(300, 70, requires_grad=True)
    r = torch.randn(300, 70, requires_grad=True)
    torch.manual_seed(5)
    y = dropout_add(x, r, 0.1, True)
    torch.manual_seed(5)
    ref = r + fast_dropout(x, 0.1, True)  # same seed -> same mask
    assert torch.allclose(y, ref, atol=1e-6)
    assert 0.08 < ((y - r).detach() == 0).float().mean().item() < 0.12
    g = torch.randn(300, 70)
    y.backward(g)
    assert torch.equal(r.grad, g)
    assert torch.allclose(x.grad, g * ((ref - r) / x).detach().nan_to_num(), atol=1e-4)
    # eval / p=0: a plain add
    assert torch.equal(dropout_add(x, r, 0.1, False), x + r)


def test_masks_longer_than_one_chunk_stay_one_stream_at_the_right_rate():
    from bertforge.model.dropout import CHUNK, dropout_mask, scaled_mask

    torch.manual_seed(7)
    n = 2 * CHUNK + 1234  # two full chunks and a partial one
    keep, scale = dropout_mask((n,), 0.1)
    torch.manual_seed(7)
    scaled = scaled_mask((n,), 0.1, torch.float32)
    assert keep.dtype == torch.uint8 and scaled.dtype == torch.float32
    assert torch.equal(scaled, keep.float() * torch.tensor(scale, dtype=torch.float32))  # same draws
    for part in keep[:2 * CHUNK].split(CHUNK):  # every full chunk drops ~10 %, and no chunk repeats another
        assert abs(1 - part.float().mean().item() - 0.1) < 0.005
    assert not torch.equal(keep[:CHUNK], keep[CHUNK:2 * CHUNK])
    torch.manual_seed(7)
    bf16 = scaled_mask((n,), 0.1, torch.bfloat16)  # the non-numpy dtype path: same mask
    assert torch.equal(bf16 != 0, keep.bool())
