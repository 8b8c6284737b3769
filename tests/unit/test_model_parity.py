"""Our model against transformers with the same random weights (fp32, eval, padding in the batch)."""

from __future__ import annotations

import pytest
import torch
import transformers

from bertforge.config import ModelConfig
from bertforge.model.bert import (
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    pretraining_loss,
)

TOL = 1e-5


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=96, max_position_embeddings=64, hidden_dropout_prob=0.1,
                attention_probs_dropout_prob=0.1)
    base.update(kw)
    return ModelConfig(**base)


def hf_twin(ours, hf_cls, **kw):
    """An HF model holding exactly our weights (strict load both ways)."""
    hf = hf_cls(transformers.BertConfig(**ours.config.to_hf_dict(), **kw)).eval()
    hf.load_state_dict(ours.state_dict(), strict=True)
    return hf


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    B, L = 4, 24
    ids = torch.randint(1, 101, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 17:] = 0
    mask[2, 5:] = 0
    mask[3, 23:] = 0
    ids = ids * mask  # [PAD] = 0 at padding
    tt = torch.zeros(B, L, dtype=torch.long)
    tt[:, 9:] = 1
    tt = tt * mask
    return ids, tt, mask


def max_diff(a, b, mask=None):
    d = (a - b).abs()
    if mask is not None:
        d = d[mask.bool()]
    return d.max().item()


@pytest.mark.parametrize("unpad", [True, False])
@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
def test_bert_model_parity(batch, unpad, act):
    torch.manual_seed(1)
    ours = BertModel(tiny_config(hidden_act=act)).eval()
    ours.set_unpad(unpad)
    hf = hf_twin(ours, transformers.BertModel)
    ids, tt, mask = batch
    with torch.no_grad():
        seq, pooled = ours(ids, tt, mask)
        ref = hf(input_ids=ids, token_type_ids=tt, attention_mask=mask)
    # Padding positions carry no meaning: unpadded runs return zeros there, HF garbage.
    assert max_diff(seq, ref.last_hidden_state, mask if unpad else None) <= TOL
    assert max_diff(pooled, ref.pooler_output) <= TOL
    if unpad:
        assert seq[~mask.bool()].abs().max() == 0


@pytest.mark.parametrize("unpad", [True, False])
def test_pretraining_heads_parity_full_and_masked_only(batch, unpad):
    torch.manual_seed(2)
    ours = BertForPreTraining(tiny_config()).eval()
    ours.set_unpad(unpad)
    hf = hf_twin(ours, transformers.BertForPreTraining)
    ids, tt, mask = batch
    labels = torch.full_like(ids, -1)
    labels[0, [1, 4, 7]] = ids[0, [1, 4, 7]]
    labels[2, [2, 3]] = ids[2, [2, 3]]
    labels[3, 20] = 5
    with torch.no_grad():
        full, nsp = ours(ids, tt, mask)
        masked, nsp2 = ours(ids, tt, mask, masked_lm_labels=labels)
        positions = torch.tensor([[1, 4, 7], [0, 0, 0], [2, 3, 0], [20, 0, 0]])
        at_pos, _ = ours(ids, tt, mask, masked_lm_positions=positions)
        ref = hf(input_ids=ids, token_type_ids=tt, attention_mask=mask)
    assert max_diff(full, ref.prediction_logits, mask) <= TOL
    assert max_diff(nsp, ref.seq_relationship_logits) <= TOL
    assert max_diff(nsp2, ref.seq_relationship_logits) <= TOL
    sel = labels != -1
    assert masked.shape == (int(sel.sum()), 101)
    assert max_diff(masked, ref.prediction_logits[sel]) <= TOL
    gathered = ref.prediction_logits[torch.arange(4)[:, None], positions]
    pos_mask = torch.zeros(4, 3, dtype=torch.bool)
    pos_mask[0] = True
    pos_mask[2, :2] = True
    pos_mask[3, 0] = True
    assert max_diff(at_pos, gathered, pos_mask) <= TOL

    # The loss on the masked-only scores equals HF's loss on full scores with -100 labels.
    nsl = torch.tensor([0, 1, 0, 1])
    total, mlm, nspl = pretraining_loss(masked, nsp2, labels, nsl)
    hf_labels = labels.masked_fill(labels == -1, -100)
    with torch.no_grad():
        ref_loss = hf(input_ids=ids, token_type_ids=tt, attention_mask=mask, labels=hf_labels,
                      next_sentence_label=nsl).loss
    assert abs(total.item() - ref_loss.item()) <= 1e-5


def test_qa_and_classification_parity(batch):
    ids, tt, mask = batch
    torch.manual_seed(3)
    qa = BertForQuestionAnswering(tiny_config()).eval()
    hf_qa = hf_twin(qa, transformers.BertForQuestionAnswering)
    with torch.no_grad():
        s, e = qa(ids, tt, mask)
        ref = hf_qa(input_ids=ids, token_type_ids=tt, attention_mask=mask)
    assert max_diff(s, ref.start_logits, mask) <= TOL
    assert max_diff(e, ref.end_logits, mask) <= TOL

    torch.manual_seed(4)
    clf = BertForSequenceClassification(tiny_config(), num_labels=3).eval()
    hf_clf = hf_twin(clf, transformers.BertForSequenceClassification, num_labels=3)
    with torch.no_grad():
        logits = clf(ids, tt, mask)
        ref = hf_clf(input_ids=ids, token_type_ids=tt, attention_mask=mask).logits
    assert logits.shape == (4, 3)
    assert max_diff(logits, ref) <= TOL


@pytest.mark.parametrize("unpad", [True, False])
def test_cls_only_last_layer_matches_full_computation(batch, unpad):
    """Classification computes the last layer at [CLS] only: same logits, loss and gradients as
    the full last layer (dropout off: the last layer's masks have other shapes on the two paths)."""
    ids, tt, mask = batch
    torch.manual_seed(11)
    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    fast = BertForSequenceClassification(cfg, num_labels=3)
    plain = BertForSequenceClassification(cfg, num_labels=3)
    plain.load_state_dict(fast.state_dict())
    plain.cls_only_last_layer = False
    rows = []
    for m in (fast, plain):
        m.set_unpad(unpad)
        m.bert.encoder.layer[-1].output.LayerNorm.register_forward_hook(lambda mod, i, o: rows.append(i[0].shape[0]))
    labels = torch.tensor([0, 2, 1, 2])
    out = []
    for m in (fast, plain):
        m.train()
        m.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(m(ids, tt, mask), labels)
        loss.backward()
        with torch.no_grad():
            logits = m.eval()(ids, tt, mask)
        out.append((loss.item(), logits, {k: p.grad for k, p in m.named_parameters()}))
    assert rows[0] == 4 and rows[2] == (int(mask.sum()) if unpad else mask.numel())  # fast: [CLS] rows only
    assert abs(out[0][0] - out[1][0]) <= 1e-6
    assert torch.allclose(out[0][1], out[1][1], atol=1e-6)
    for k, g in out[1][2].items():
        assert torch.allclose(out[0][2][k], g, atol=1e-6), k


def test_masked_lm_parity(batch):
    ids, tt, mask = batch
    torch.manual_seed(5)
    mlm = BertForMaskedLM(tiny_config()).eval()
    hf = hf_twin(mlm, transformers.BertForMaskedLM)
    with torch.no_grad():
        assert max_diff(mlm(ids, tt, mask), hf(input_ids=ids, token_type_ids=tt, attention_mask=mask).logits,
                        mask) <= TOL


def test_weights_are_tied_and_gradients_flow():
    torch.manual_seed(6)
    m = BertForPreTraining(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    assert m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight
    ids = torch.randint(1, 101, (8, 16))
    labels = torch.full_like(ids, -1)
    labels[:, 3] = ids[:, 3]
    labels[:, 9] = ids[:, 9]
    inputs = ids.clone()
    inputs[:, [3, 9]] = 100
    nsl = torch.randint(0, 2, (8,))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        scores, nsp = m(inputs, masked_lm_labels=labels)
        total, mlm, _ = pretraining_loss(scores, nsp, labels, nsl)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(mlm.item())
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    assert losses[-1] < 0.5 * losses[0], losses


def test_gradient_checkpointing_same_gradients(batch):
    ids, tt, mask = batch
    torch.manual_seed(7)
    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    a = BertForPreTraining(cfg)
    b = BertForPreTraining(cfg)
    b.load_state_dict(a.state_dict())
    b.bert.encoder.gradient_checkpointing = True
    for m in (a, b):
        m.train()
        s, n = m(ids, tt, mask)
        (s.square().mean() + n.square().mean()).backward()
    for (k, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), k


def test_unpadded_training_matches_padded_gradients(batch):
    """The unpadded fast path gives the same gradients as the padded computation."""
    ids, tt, mask = batch
    torch.manual_seed(8)
    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    a = BertForPreTraining(cfg)
    b = BertForPreTraining(cfg)
    b.load_state_dict(a.state_dict())
    b.set_unpad(False)
    labels = torch.full_like(ids, -1)
    labels[0, 2] = 7
    labels[1, 10] = 9
    nsl = torch.tensor([0, 1, 1, 0])
    for m in (a, b):
        s, n = m(ids, tt, mask, masked_lm_labels=labels)
        pretraining_loss(s, n, labels, nsl)[0].backward()
    for (k, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), k


def test_sequence_too_long_is_refused():
    m = BertModel(tiny_config(max_position_embeddings=16))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m(torch.ones(1, 17, dtype=torch.long))


def test_varlen_attention_runs_of_equal_lengths(monkeypatch):
    """Consecutive sequences of equal length are attended as one batch (a 'run')."""
    from bertforge.model.bert import _Packing

    monkeypatch.setattr(_Packing, "RUN_OVERHEAD", 0)  # force varlen on this small batch
    torch.manual_seed(9)
    ours = BertForQuestionAnswering(tiny_config()).eval()
    hf = hf_twin(ours, transformers.BertForQuestionAnswering)
    lengths = [20, 20, 20, 7, 7, 24, 3]
    ids = torch.randint(1, 101, (len(lengths), 24))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    assert _Packing(mask, *ids.shape, unpad=True).runs == [(3, 20), (2, 7), (1, 24), (1, 3)]
    with torch.no_grad():
        s, e = ours(ids, attention_mask=mask)
        ref = hf(input_ids=ids, attention_mask=mask)
    assert max_diff(s, ref.start_logits, mask) <= TOL
    assert max_diff(e, ref.end_logits, mask) <= TOL


def test_varlen_only_where_it_pays():
    from bertforge.model.bert import _Packing

    mask = torch.ones(16, 128, dtype=torch.long)
    mask[::3, 100:] = 0  # phase-1-like: most sequences full, many short runs
    assert _Packing(mask, 16, 128, unpad=True).runs is None
    assert _Packing(mask, 16, 128, unpad=True).indices is not None  # still unpadded elsewhere
    mask = torch.ones(4, 512, dtype=torch.long)
    mask[0, 160:] = 0
    mask[1, 400:] = 0  # phase-2-like: long padding
    assert _Packing(mask, 4, 512, unpad=True).runs == [(1, 160), (1, 400), (2, 512)]


@pytest.mark.parametrize("unpad", [True, False])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_masked_last_layer_and_sparse_embedding_grad_match_full_computation(batch, unpad, checkpointing):
    """The last layer at [CLS] + masked positions only, and the sparse word-embedding gradient,
    give the loss and gradients of the full computation (labels and positions inputs)."""
    ids, tt, mask = batch
    torch.manual_seed(10)
    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    fast, plain = BertForPreTraining(cfg), BertForPreTraining(cfg)
    plain.load_state_dict(fast.state_dict())
    plain.masked_last_layer = False
    plain.bert.embeddings.sparse_word_grad = False
    assert fast.masked_last_layer and fast.bert.embeddings.sparse_word_grad
    for m in (fast, plain):
        m.set_unpad(unpad)
        m.bert.encoder.gradient_checkpointing = checkpointing
    labels = torch.full_like(ids, -1)
    labels[0, [1, 4, 7]] = ids[0, [1, 4, 7]]
    labels[2, [2, 3]] = ids[2, [2, 3]]
    labels[3, 20] = 5  # row 1 has no masked token
    positions = torch.tensor([[1, 4, 7], [0, 0, 0], [2, 3, 0], [20, 0, 0]])
    pos_labels = torch.tensor([[ids[0, 1], ids[0, 4], ids[0, 7]], [-1, -1, -1],
                               [ids[2, 2], ids[2, 3], -1], [5, -1, -1]])
    nsl = torch.tensor([0, 1, 1, 0])
    rows_seen = []  # rows through the last layer's output LayerNorm: proves which path ran
    for m in (fast, plain):
        m.bert.encoder.layer[-1].output.LayerNorm.register_forward_hook(
            lambda mod, inp, out: rows_seen.append(inp[0].shape[0]))
    for kw, lab in (({"masked_lm_labels": labels}, labels), ({"masked_lm_positions": positions}, pos_labels)):
        grads, losses = [], []
        for m in (fast, plain):
            rows_seen.clear()
            m.zero_grad(set_to_none=True)
            s, n = m(ids, tt, mask, **kw)
            # fast: [CLS] + up to 3 masked per sequence (4 x 4 rows); plain: every real token
            assert rows_seen[-1] == (16 if m is fast else (int(mask.sum()) if unpad else mask.numel()))
            loss = pretraining_loss(s, n, lab, nsl)[0]
            loss.backward()
            losses.append(loss.item())
            grads.append({k: p.grad for k, p in m.named_parameters()})
        assert abs(losses[0] - losses[1]) <= 1e-6
        word = "bert.embeddings.word_embeddings.weight"
        assert not grads[0][word].is_sparse  # the decoder's dense gradient absorbed it
        for k, g in grads[1].items():
            assert torch.allclose(grads[0][k], g, atol=1e-6), (k, kw.keys())


def test_sparse_embedding_gradient_without_decoder_is_made_dense_for_the_optimizer():
    """A loss that leaves the MLM decoder out leaves a sparse embedding gradient; LAMB and the
    training step turn it dense instead of failing."""
    from bertforge.optim.lamb import LAMB

    torch.manual_seed(11)
    m = BertForPreTraining(tiny_config())
    ids = torch.randint(1, 101, (2, 12))
    w = m.bert.embeddings.word_embeddings.weight
    m.zero_grad(set_to_none=True)
    torch.manual_seed(12)  # same dropout masks in both passes
    m(ids)[1].sum().backward()  # fused tied gradient: no decoder in backward -> a dense gradient
    assert not w.grad.is_sparse
    fused = w.grad.clone()
    m.zero_grad(set_to_none=True)
    m.fused_tied_gradient = False
    torch.manual_seed(12)
    m(ids)[1].sum().backward()
    assert w.grad.is_sparse
    dense = w.grad.to_dense()
    assert torch.allclose(fused, dense, atol=1e-7)
    before = w.detach().clone()
    LAMB(m.parameters(), lr=1e-3, max_grad_norm=0.0).step()  # no clipping: grads untouched
    assert not w.grad.is_sparse and torch.equal(w.grad, dense)
    assert not torch.equal(w.detach(), before)


@pytest.mark.parametrize("varlen", [True, False])
@pytest.mark.parametrize("cls", [BertForQuestionAnswering, BertForSequenceClassification])
def test_inference_builds_no_fused_weight_and_agrees_with_the_training_path(batch, monkeypatch, varlen, cls):
    """Without gradients on the CPU, Q, K and V are three products of the stored weights (no
    fused [3H, H] weight per call); the outputs equal the fused path's within float tolerance
    (head size 12: the softmax scale is no power of two, so the two paths round differently)."""
    from bertforge.model.bert import BertSelfAttention, _Packing

    if varlen:
        monkeypatch.setattr(_Packing, "RUN_OVERHEAD", 0)
    torch.manual_seed(5)
    model = cls(tiny_config()).eval()
    ids, tt, mask = batch
    trained = model(ids, tt, mask)  # gradients enabled: the fused path
    built = []
    fused = BertSelfAttention._qkv_weight
    monkeypatch.setattr(BertSelfAttention, "_qkv_weight", lambda self: built.append(1) or fused(self))
    with torch.inference_mode():
        inferred = model(ids, tt, mask)
    assert built == []
    for a, b in zip(trained if isinstance(trained, tuple) else (trained,),
                    inferred if isinstance(inferred, tuple) else (inferred,), strict=True):
        assert max_diff(a.detach(), b, mask if a.dim() == 2 and a.shape == mask.shape else None) <= TOL
    model.train()  # dropout on: the training path, even without gradients
    with torch.no_grad():
        model(ids, tt, mask)
    assert built


@pytest.mark.parametrize("mode", ["bf16 autocast", "inference", "inference, hooked"])
def test_the_intermediate_product_is_the_dense_modules_outside_the_inference_fast_path(batch, mode):
    """BertIntermediate calls its ``dense`` module (forward hooks fire, autocast applies) except in
    unhooked inference, where the GELU may run inside the product; a hook on the module turns
    that off, and the result is the same to float rounding."""
    torch.manual_seed(6)
    model = BertForSequenceClassification(tiny_config()).eval()
    ids, tt, mask = batch
    with torch.inference_mode():
        plain = model(ids, tt, mask)
    dense = model.bert.encoder.layer[0].intermediate.dense
    seen = []
    if mode != "inference":
        dense.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    if mode == "bf16 autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(ids, tt, mask)
        assert seen == [torch.bfloat16]
        return
    with torch.inference_mode():
        out = model(ids, tt, mask)
    assert seen == ([torch.float32] if mode == "inference, hooked" else [])
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
