"""BERT in one readable file, with Hugging Face module and parameter names.

Checkpoints move freely between this model, ``transformers`` and NVIDIA's BERT because the
module tree is the same (``bert.encoder.layer.0.attention.self.query.weight`` ...).

Dimension legend used in shape comments:
    B batch, L sequence length, H hidden size, nh attention heads, hd head size (H / nh),
    I intermediate (feed-forward) size, V (padded) vocabulary size, T real (non-padding)
    tokens in the batch, M masked positions in the batch, P masked positions per sequence.

Fast paths, all exact up to float reassociation (parity tests in tests/unit):
* Unpadding: when the batch holds padding, every position-wise layer (embeddings, projections,
  feed-forward, LayerNorm) runs on the T real tokens only; only attention sees the padded
  [B, nh, L, hd] layout. Outputs at padding positions are zeros instead of the meaningless
  values a padded computation produces.
* Masked-only MLM head (NVIDIA's dense_sequence_output): with labels or positions the
  768 x V decoder runs on the M masked tokens only.
* Masked-only last layer: with labels or positions, the last encoder layer computes keys and
  values for every token but queries, output projection and feed-forward only at [CLS] and the
  masked positions, the only outputs the heads read. Sequence classification does the same
  with [CLS] alone (the pooler reads nothing else).
* Tied word-embedding gradient summed in place: in BertForPreTraining the decoder's dense
  [V, H] gradient is handed to the embedding lookup's backward (fused.TiedGradient); other
  tied models return the lookup's gradient sparse, which the decoder's dense one absorbs.
* Softmax scale folded into the fused QKV weight; dropout fused with the residual add.
* CPU training blocks that reuse their own backward buffers (fused.py: feed-forward, attention
  with dropout, MLM cross-entropy, the in-place tied gradient); ``set_fused(False)`` turns them
  off. CUDA, whose caching allocator makes fresh buffers cheap, keeps PyTorch's ops.
* fp32 CPU products through oneDNN where it is faster (gemm.py): every Linear (a drop-in
  ``nn.Linear``) and the fused blocks run x W^T and dL/dx on oneDNN's GEMM or MKL's, whichever
  a short measurement of BERT's layer products found faster on this machine (cached per CPU
  model); ``--cpu_gemm``/``BERTFORGE_CPU_GEMM`` (auto, onednn, aten) overrides it.

This module imports only torch (and, through dropout.py and gemm.py, numpy, bertforge.config
and bertforge.errors; bertforge.memory checks a config's size before its weights are allocated).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bertforge.memory import require_model_memory
from bertforge.model.dropout import FastDropout, dropout_add, fast_dropout, scaled_mask
from bertforge.model.fused import (
    GELU_APPROXIMATE,
    TiedGradient,
    attention,
    cross_entropy,
    embedding_lookup,
    feed_forward,
    tied_decoder,
)
from bertforge.model.gemm import Linear, linear, linear_gelu

__all__ = [
    "BertModel",
    "BertForPreTraining",
    "BertForMaskedLM",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertPreTrainedModel",
    "pretraining_loss",
    "masked_rows",
    "masked_lm_count",
    "IGNORE_INDEX",
]

IGNORE_INDEX = -1
"""Label value of positions that are not masked (NVIDIA uses -1; HF's -100 is accepted too)."""


def _activation(name: str):
    if name in GELU_APPROXIMATE:  # "none": exact erf GELU, as in Google's and HF's checkpoints
        approximate = GELU_APPROXIMATE[name]
        return lambda x: F.gelu(x, approximate=approximate)
    if name == "relu":
        return F.relu
    if name == "tanh":
        return torch.tanh
    raise ValueError(f"unknown activation {name!r}")


class _Packing:
    """Index bookkeeping for running position-wise layers on real tokens only.

    ``indices`` [T] are the flat positions (b * L + l) of real tokens in row-major order.
    ``None`` fields mean the batch has no padding and tensors stay in [B, L, ...] layout.
    """

    RUN_OVERHEAD = 128 * 128
    """Cost of one extra attention run, in units of score-matrix elements (measured on CPU)."""
    PAD_OVERHEAD = 64
    """Cost per padded-layout position of padded attention's scatter into [B, L, 3H] and
    gather back (forward and backward), same units. On real phase-1 batches (lengths vary,
    ~10 runs of equal length per batch) this picks varlen attention."""

    def __init__(self, attention_mask: torch.Tensor | None, batch: int, length: int, unpad: bool):
        self.batch, self.length = batch, length
        self.indices: torch.Tensor | None = None
        self.key_mask: torch.Tensor | None = None  # [B, 1, 1, L] bool, True = attend
        self.runs: list[tuple[int, int]] | None = None
        if attention_mask is None:
            return
        mask = attention_mask.bool()
        if bool(mask.all()):  # one host sync per forward; lets full batches skip all masking
            return
        self.key_mask = mask[:, None, None, :]
        if unpad:
            self.indices = mask.flatten().nonzero().squeeze(1)  # [T]
            # Runs of consecutive sequences of equal length, (count, length): each run is one
            # contiguous [count * length, ...] block of the packed layout that attention can
            # process as a [count, length] batch with no mask (varlen attention).
            runs: list[tuple[int, int]] = []
            for n in mask.sum(1).tolist():
                if runs and runs[-1][1] == n:
                    runs[-1] = (runs[-1][0] + 1, n)
                else:
                    runs.append((1, n))
            # Varlen attention pays when the L x L work it saves outweighs the fixed cost of
            # one more (smaller) batch of attention kernels per run; otherwise attention runs
            # padded with a key mask (position-wise layers stay unpadded either way).
            varlen_cost = sum(r * n * n for r, n in runs) + len(runs) * self.RUN_OVERHEAD
            padded_cost = batch * length * (length + self.PAD_OVERHEAD)
            if varlen_cost < padded_cost:
                self.runs = runs

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] -> [T, ...] (or [B*L, ...] when not unpadding)."""
        x = x.reshape(self.batch * self.length, *x.shape[2:])
        return x if self.indices is None else x.index_select(0, self.indices)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [B, L, ...] with zeros at padding positions."""
        if self.indices is not None:
            out = x.new_zeros(self.batch * self.length, *x.shape[1:])
            x = out.index_copy(0, self.indices, x)
        return x.view(self.batch, self.length, *x.shape[1:])

    def rows_of(self, flat_positions: torch.Tensor) -> torch.Tensor:
        """Rows of the packed tensor holding the given flat (b * L + l) positions."""
        if self.indices is None:
            return flat_positions
        lookup = torch.full((self.batch * self.length,), -1, dtype=torch.long,
                            device=flat_positions.device)
        lookup[self.indices] = torch.arange(self.indices.numel(), device=lookup.device)
        return lookup[flat_positions]


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = FastDropout(config.hidden_dropout_prob)
        self.sparse_word_grad = False
        """Return the word-embedding gradient as a sparse [V, H] tensor (set by models whose MLM
        decoder shares the weight: the decoder's dense gradient absorbs it in place, instead of
        a zero-filled [V, H] tensor plus a full [V, H] add per backward)."""

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, packing: _Packing,
                tied: TiedGradient | None = None) -> torch.Tensor:
        """input_ids, token_type_ids [B, L] -> packed embeddings [T, H]. ``tied``: the word
        lookup's weight gradient absorbs the tied MLM decoder's (bertforge.model.fused)."""
        B, L = input_ids.shape
        position_ids = torch.arange(L, device=input_ids.device).expand(B, L)
        ids = packing.pack(input_ids)  # [T]
        we = self.word_embeddings
        if tied is not None:
            words = embedding_lookup(ids, we.weight, we.padding_idx, tied)
        else:
            words = F.embedding(ids, we.weight, we.padding_idx, sparse=self.sparse_word_grad and self.training)
        x = (words
             + self.position_embeddings(packing.pack(position_ids))
             + self.token_type_embeddings(packing.pack(token_type_ids)))  # [T, H]
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head attention; Q, K and V are computed by one fused GEMM (the three weights
    are concatenated on the fly, so the parameters keep HF's separate names). The softmax scale
    1/sqrt(hd) is folded into the query rows of that concatenated weight: an [H, H] multiply
    instead of one over every [n, n] score matrix, forward and backward."""

    def __init__(self, config):
        super().__init__()
        H = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_dim
        self.query = Linear(H, H)
        self.key = Linear(H, H)
        self.value = Linear(H, H)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.fused_attention = True
        """Train through bertforge.model.fused.attention (CPU, dropout on: same values, the
        softmax and its backward in place)."""

    def forward(self, x: torch.Tensor, packing: _Packing) -> torch.Tensor:
        """x [T, H] -> context [T, H]."""
        if self._inference(x):
            return self._forward_inference(x, packing)
        nh, hd = self.num_attention_heads, self.attention_head_size
        w, b = self._qkv_weight()
        qkv = linear(x, w, b)  # [T, 3H]
        if packing.runs is not None:
            # Unpadded: attention per run of equal-length sequences, on real tokens only, so
            # neither the L x L scores nor their dropout are computed for padding.
            outs = []
            for block, (r, n) in zip(qkv.split([r * n for r, n in packing.runs]), packing.runs, strict=True):
                if n == 0:
                    continue
                q, k, v = block.view(r, n, 3, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)  # [r, nh, n, hd]
                outs.append(self._attend(q, k, v, None).transpose(1, 2).reshape(r * n, nh * hd))
            return torch.cat(outs, 0) if outs else qkv.new_zeros(0, nh * hd)
        qkv = packing.unpack(qkv)  # [B, L, 3H]
        B, L = qkv.shape[:2]
        q, k, v = qkv.view(B, L, 3, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, nh, L, hd]
        ctx = self._attend(q, k, v, packing.key_mask)  # [B, nh, L, hd]
        return packing.pack(ctx.transpose(1, 2).reshape(B, L, nh * hd))  # [T, H]

    def _inference(self, x: torch.Tensor) -> bool:
        """No gradient, no dropout, on the CPU: Q, K and V as three products of the stored weights
        and the softmax scale given to SDPA. Building the fused weight (a concatenation and a
        scaling of [3H, H] per layer) costs more than it saves when nothing is trained: BERT-base
        QA inference at batch 1 runs faster this way, larger batches the same (docs/benchmarks.md)."""
        return (x.device.type == "cpu" and not torch.is_grad_enabled()
                and not (self.training and self.dropout_prob > 0.0))

    def _heads(self, t: torch.Tensor, r: int, n: int) -> torch.Tensor:
        """[r * n, H] (rows of r sequences of n tokens) -> [r, heads, n, head_dim]."""
        return t.view(r, n, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def _forward_inference(self, x: torch.Tensor, packing: _Packing) -> torch.Tensor:
        q, k, v = (linear(x, m.weight, m.bias) for m in (self.query, self.key, self.value))  # [T, H]
        scale = 1.0 / math.sqrt(self.attention_head_size)
        if packing.runs is not None:  # per run of equal-length sequences, as in forward
            sizes = [r * n for r, n in packing.runs]
            outs = [F.scaled_dot_product_attention(self._heads(qb, r, n), self._heads(kb, r, n),
                                                   self._heads(vb, r, n), scale=scale)
                    .transpose(1, 2).reshape(r * n, -1)
                    for qb, kb, vb, (r, n) in zip(q.split(sizes), k.split(sizes), v.split(sizes),
                                                  packing.runs, strict=True) if n > 0]
            return torch.cat(outs, 0) if outs else q.new_zeros(0, x.shape[1])
        B, L = packing.batch, packing.length
        q, k, v = (self._heads(packing.unpack(t).view(B * L, -1), B, L) for t in (q, k, v))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=packing.key_mask, scale=scale)
        return packing.pack(ctx.transpose(1, 2).reshape(B, L, -1))

    def _qkv_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused [3H, H] weight and [3H] bias, query rows pre-multiplied by 1/sqrt(hd)."""
        s = 1.0 / math.sqrt(self.attention_head_size)
        w = torch.cat([self.query.weight * s, self.key.weight, self.value.weight], 0)  # [3H, H]
        b = torch.cat([self.query.bias * s, self.key.bias, self.value.bias], 0)  # [3H]
        return w, b

    def forward_rows(self, x: torch.Tensor, xs: torch.Tensor, packing: _Packing, S: int) -> torch.Tensor:
        """Attention for selected query rows only: x [T, H] all tokens (keys and values),
        xs [B * S, H] the S selected tokens of each sequence (queries) -> context [B * S, H]."""
        nh, hd, H = self.num_attention_heads, self.attention_head_size, x.shape[1]
        if self._inference(x):
            B, L = packing.batch, packing.length
            q = self._heads(linear(xs, self.query.weight, self.query.bias), B, S)
            k, v = (self._heads(packing.unpack(linear(x, m.weight, m.bias)).view(B * L, H), B, L)
                    for m in (self.key, self.value))
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=packing.key_mask,
                                                 scale=1.0 / math.sqrt(hd))
            return ctx.transpose(1, 2).reshape(B * S, H)
        w, b = self._qkv_weight()
        q = linear(xs, w[:H], b[:H])  # [B*S, H]
        kv = packing.unpack(linear(x, w[H:], b[H:]))  # [B, L, 2H], zeros at padding
        B, L = kv.shape[:2]
        k, v = kv.view(B, L, 2, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, nh, L, hd]
        q = q.view(B, S, nh, hd).transpose(1, 2)  # [B, nh, S, hd]
        ctx = self._attend(q, k, v, packing.key_mask)  # [B, nh, S, hd]
        return ctx.transpose(1, 2).reshape(B * S, nh * hd)

    def _attend(self, q, k, v, key_mask):
        """Dot-product attention of pre-scaled queries. q [..., m, hd], k, v [..., n, hd];
        key_mask [..., 1, n] bool or None."""
        p = self.dropout_prob if self.training else 0.0
        if p > 0.0 and q.device.type == "cpu":
            # Explicit attention so the probabilities get the fast CPU dropout mask
            # (SDPA's internal dropout draws from the slow scalar generator).
            if self.fused_attention and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
                drop = scaled_mask((*q.shape[:-1], k.shape[-2]), p, q.dtype)
                return attention(q, k, v, key_mask, drop)
            scores = torch.matmul(q, k.transpose(-1, -2))  # [..., m, n]
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
            probs = fast_dropout(torch.softmax(scores, dim=-1), p, True)
            return torch.matmul(probs, v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p, scale=1.0)


class BertSelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = FastDropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(dropout_add(self.dense(hidden), residual, self.dropout.p, self.training))


class BertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, packing: _Packing) -> torch.Tensor:
        return self.output(self.self(x, packing), x)

    def forward_rows(self, x: torch.Tensor, xs: torch.Tensor, packing: _Packing, S: int) -> torch.Tensor:
        return self.output(self.self.forward_rows(x, xs, packing, S), xs)


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = _activation(config.hidden_act)
        self.gelu_approximate = GELU_APPROXIMATE.get(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = self.dense
        if (self.gelu_approximate is not None and not torch.is_grad_enabled() and type(dense) is Linear
                and not (dense._forward_hooks or dense._forward_pre_hooks)):
            # inference: GELU inside the product where the backend can (gemm.linear_gelu); a
            # replaced or hooked dense module is always called as a module
            return linear_gelu(x, dense.weight, dense.bias, self.gelu_approximate)  # [T, I]
        return self.intermediate_act_fn(dense(x))  # [T, I]


class BertOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = FastDropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.add_norm(self.dense(hidden), residual)

    def add_norm(self, y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LayerNorm(residual + dropout(y)), y being this block's projection output."""
        return self.LayerNorm(dropout_add(y, residual, self.dropout.p, self.training))


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)
        self.gelu_approximate = GELU_APPROXIMATE.get(config.hidden_act)
        self.fused_feed_forward = True
        """Train the feed-forward block through bertforge.model.fused.feed_forward (CPU, GELU
        activations; same values, fewer backward allocations)."""

    def forward(self, x: torch.Tensor, packing: _Packing) -> torch.Tensor:
        a = self.attention(x, packing)  # [T, H]
        return self._feed_forward(a)

    def _feed_forward(self, a: torch.Tensor) -> torch.Tensor:
        """a [T, H] (attention block output) -> the layer's output [T, H]."""
        inter, out = self.intermediate, self.output
        if (self.fused_feed_forward and self.gelu_approximate is not None and torch.is_grad_enabled()
                and a.dim() == 2 and a.device.type == "cpu" and not torch.is_autocast_enabled("cpu")):
            y = feed_forward(a, inter.dense.weight, inter.dense.bias, out.dense.weight, out.dense.bias,
                             self.gelu_approximate)
            return out.add_norm(y, a)
        return out(inter(a), a)

    def forward_rows(self, x: torch.Tensor, rows: torch.Tensor, packing: _Packing, S: int) -> torch.Tensor:
        """The layer's output at the packed rows ``rows`` [B * S] only (S per sequence); keys and
        values still come from every token of x [T, H]. -> [B * S, H]"""
        a = self.attention.forward_rows(x, x.index_select(0, rows), packing, S)  # [B*S, H]
        return self._feed_forward(a)


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False
        """Recompute each layer's activations in backward (NVIDIA's --checkpoint_activations)."""

    def forward(self, x: torch.Tensor, packing: _Packing, last_rows: torch.Tensor | None = None,
                S: int = 0) -> torch.Tensor:
        """x [T, H] -> [T, H]; with ``last_rows`` [B * S] the last layer runs for those packed
        rows only and the result is [B * S, H]."""
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layer):
            if last_rows is not None and i == len(self.layer) - 1:
                if ckpt:
                    return checkpoint(layer.forward_rows, x, last_rows, packing, S, use_reentrant=False)
                return layer.forward_rows(x, last_rows, packing, S)
            x = checkpoint(layer, x, packing, use_reentrant=False) if ckpt else layer(x, packing)
        return x


class BertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        """cls_hidden [B, H] (the [CLS] token's state) -> pooled [B, H]."""
        return self.activation(self.dense(cls_hidden))


class BertPreTrainedModel(nn.Module):
    """Weight initialisation as in Google's BERT: N(0, initializer_range), zero biases."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        require_model_memory(config, what="model config")  # before any weight is allocated

    def init_weights(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # biases that are bare parameters
            if isinstance(m, BertLMPredictionHead):
                nn.init.zeros_(m.bias)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the MLM decoder weight with the word embeddings (both [V, H])."""
        head = getattr(self, "cls", None)
        if head is not None and hasattr(self, "bert"):
            head.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
            # Every forward of a model with this head uses the decoder, whose dense gradient
            # then absorbs the embedding's sparse one in place.
            self.bert.embeddings.sparse_word_grad = True

    def set_unpad(self, enabled: bool) -> None:
        """Toggle the unpadded fast path (on by default)."""
        bert = self if isinstance(self, BertModel) else self.bert
        bert.unpad = enabled

    def set_fused(self, enabled: bool) -> None:
        """Toggle the fused training blocks of bertforge.model.fused (on by default)."""
        for m in self.modules():
            if isinstance(m, BertLayer):
                m.fused_feed_forward = enabled
            elif isinstance(m, BertSelfAttention):
                m.fused_attention = enabled
        if isinstance(self, BertForPreTraining):
            self.fused_tied_gradient = enabled


class BertModel(BertPreTrainedModel):
    """The encoder. forward -> (sequence_output [B, L, H], pooled_output [B, H] or None)."""

    def __init__(self, config, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.unpad = True
        if type(self) is BertModel:
            self.init_weights()

    def encode(self, input_ids, token_type_ids=None, attention_mask=None, select=None, tied=None):
        """Run embeddings and encoder; returns (packed hidden [T, H], packing).

        ``select`` [B, S] (positions within each sequence): the last layer is computed at those
        positions only and hidden is [B * S, H] in that order (exact: a layer's output at a
        position depends on all positions only through its keys and values).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        B, L = input_ids.shape
        if L > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {L} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        packing = _Packing(attention_mask, B, L, self.unpad)
        x = self.embeddings(input_ids, token_type_ids, packing, tied)
        if select is None:
            return self.encoder(x, packing), packing
        flat = (select.long() + torch.arange(B, device=select.device)[:, None] * L).flatten()  # [B*S]
        return self.encoder(x, packing, packing.rows_of(flat), select.shape[1]), packing

    def pool(self, hidden: torch.Tensor, packing: _Packing) -> torch.Tensor | None:
        if self.pooler is None:
            return None
        # Row of each sequence's first token ([CLS]) in the packed layout.
        first = torch.arange(packing.batch, device=hidden.device) * packing.length
        return self.pooler(hidden.index_select(0, packing.rows_of(first)))

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        hidden, packing = self.encode(input_ids, token_type_ids, attention_mask)
        return packing.unpack(hidden), self.pool(hidden, packing)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = _activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.padded_vocab_size))
        self.decoder.bias = self.bias  # one parameter under both of HF's names

    def forward(self, x: torch.Tensor, tied: TiedGradient | None = None) -> torch.Tensor:
        h = self.transform(x)
        if tied is not None and h.dim() == 2:
            return tied_decoder(h, self.decoder.weight, self.bias, tied)  # [M, V]
        return self.decoder(h)  # [..., V]


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, x):
        return self.predictions(x)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = Linear(config.hidden_size, 2)

    def forward(self, sequence_output, pooled_output):
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


def _masked_positions(masked_lm_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels [B, L] -> (positions [B, P], valid [B, P]): each sequence's masked positions in
    increasing order, padded with 0 ([CLS]) up to the batch's largest count P."""
    sel = (masked_lm_labels != IGNORE_INDEX) & (masked_lm_labels != -100)  # [B, L]
    counts = sel.sum(1)  # [B]
    P = int(counts.max()) if sel.numel() else 0
    L = sel.shape[1]
    ar = torch.arange(L, device=sel.device)
    positions = torch.where(sel, ar, ar + L).argsort(dim=1)[:, :P]  # masked ones first, in order
    valid = torch.arange(P, device=sel.device)[None, :] < counts[:, None]
    return positions.masked_fill(~valid, 0), valid


def masked_rows(masked_lm_labels: torch.Tensor) -> torch.Tensor:
    """Flat positions (b * L + l) whose label is not ignored, row-major. labels [B, L] -> [M]."""
    labels = masked_lm_labels.flatten()
    return ((labels != IGNORE_INDEX) & (labels != -100)).nonzero().squeeze(1)


class BertForPreTraining(BertPreTrainedModel):
    """BERT with the MLM and NSP heads.

    forward(input_ids [B, L], token_type_ids, attention_mask, masked_lm_labels=None,
    masked_lm_positions=None) -> (prediction_scores, seq_relationship_score [B, 2]) where
    prediction_scores is
      [M, V]    over the masked positions (labels != -1) when masked_lm_labels [B, L] is given,
      [B, P, V] at masked_lm_positions [B, P] when those are given,
      [B, L, V] otherwise.
    """

    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.masked_last_layer = True
        """With labels or positions, compute the last encoder layer only where the heads read
        it ([CLS] and the masked tokens): its queries, output projection and feed-forward skip
        the other positions (~2/3 of a layer's work at 15 % masking). Exact."""
        self.fused_tied_gradient = True
        """Sum the tied word-embedding gradient in place (bertforge.model.fused.TiedGradient)."""
        self.init_weights()

    def _tied_gradient(self) -> TiedGradient | None:
        weight = self.bert.embeddings.word_embeddings.weight
        if (self.fused_tied_gradient and torch.is_grad_enabled() and weight.requires_grad
                and self.cls.predictions.decoder.weight is weight and weight.device.type == "cpu"
                and not torch.is_autocast_enabled("cpu")):
            return TiedGradient()
        return None

    def forward(self, input_ids, token_type_ids=None, attention_mask=None,
                masked_lm_labels=None, masked_lm_positions=None):
        B, L = input_ids.shape
        tied = self._tied_gradient()
        if self.masked_last_layer and (masked_lm_labels is not None or masked_lm_positions is not None):
            if masked_lm_labels is not None:
                positions, valid = _masked_positions(masked_lm_labels)  # [B, P]
            else:
                positions, valid = masked_lm_positions.long(), None
            P = positions.shape[1]
            select = torch.cat([positions.new_zeros(B, 1), positions], 1)  # [B, 1 + P]: [CLS] first
            hidden, _ = self.bert.encode(input_ids, token_type_ids, attention_mask, select=select, tied=tied)
            hidden = hidden.view(B, 1 + P, -1)
            pooled = self.bert.pooler(hidden[:, 0])  # [B, H]
            if valid is not None:
                scores = self.cls.predictions(hidden[:, 1:][valid], tied)  # [M, V], row-major order
            else:
                scores = self.cls.predictions(hidden[:, 1:].reshape(B * P, -1), tied).view(B, P, -1)
            return scores, self.cls.seq_relationship(pooled)
        hidden, packing = self.bert.encode(input_ids, token_type_ids, attention_mask, tied=tied)  # [T, H]
        pooled = self.bert.pool(hidden, packing)  # [B, H]
        if masked_lm_labels is not None:
            rows = packing.rows_of(masked_rows(masked_lm_labels))
            scores = self.cls.predictions(hidden.index_select(0, rows), tied)  # [M, V]
        elif masked_lm_positions is not None:
            P = masked_lm_positions.shape[1]
            flat = (masked_lm_positions.long()
                    + torch.arange(B, device=input_ids.device)[:, None] * L).flatten()  # [B*P]
            # Padding positions (0) point at [CLS], a real token, so rows_of never returns -1.
            scores = self.cls.predictions(hidden.index_select(0, packing.rows_of(flat)), tied)
            scores = scores.view(B, P, -1)  # [B, P, V]
        else:
            scores = self.cls.predictions(packing.unpack(hidden))  # [B, L, V]
        return scores, self.cls.seq_relationship(pooled)


def pretraining_loss(prediction_scores: torch.Tensor, seq_relationship_score: torch.Tensor,
                     masked_lm_labels: torch.Tensor, next_sentence_labels: torch.Tensor | None,
                     fused: bool = True, reduction: str = "mean"):
    """MLM + NSP cross-entropy, as NVIDIA's BertPretrainingCriterion.

    ``fused=False`` uses ``F.cross_entropy`` also where the fused CPU block would run.

    masked_lm_labels: [B, L] with -1 (or -100) where not masked; with [M, V] scores the
    labels are compacted in the same row-major order the model gathered them; with [B, P, V]
    scores pass [B, P] labels (-1 at padding). Returns (total, mlm_loss, nsp_loss): means over
    the masked tokens and the sequences (``reduction="mean"``) or sums (``"sum"``, for a
    normalisation over a larger batch than this one).
    """
    labels = masked_lm_labels.long()
    if prediction_scores.dim() == 2:
        labels = labels.flatten().index_select(0, masked_rows(labels))  # [M]
    else:
        labels = labels.reshape(-1).masked_fill(labels.reshape(-1) == -100, IGNORE_INDEX)
        prediction_scores = prediction_scores.reshape(-1, prediction_scores.shape[-1])
    if (fused and prediction_scores.requires_grad and torch.is_grad_enabled()
            and prediction_scores.device.type == "cpu"):
        mlm = cross_entropy(prediction_scores.float(), labels, ignore_index=IGNORE_INDEX,
                            reduction=reduction)
    else:
        mlm = F.cross_entropy(prediction_scores.float(), labels, ignore_index=IGNORE_INDEX,
                              reduction=reduction)
    if next_sentence_labels is None:
        return mlm, mlm, torch.zeros_like(mlm)
    nsp = F.cross_entropy(seq_relationship_score.float().view(-1, 2), next_sentence_labels.long().view(-1),
                          reduction=reduction)
    return mlm + nsp, mlm, nsp


def masked_lm_count(masked_lm_labels: torch.Tensor) -> torch.Tensor:
    """Masked tokens in ``masked_lm_labels`` (labels >= 0; -1 and -100 mark the others): the
    denominator of the MLM mean, known before the forward pass. A 0-dim long tensor."""
    return (masked_lm_labels >= 0).sum()


class BertForMaskedLM(BertPreTrainedModel):
    """MLM head only (fill-mask). forward -> prediction_scores [B, L, V]."""

    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        hidden, packing = self.bert.encode(input_ids, token_type_ids, attention_mask)
        return self.cls(packing.unpack(hidden))


class BertForQuestionAnswering(BertPreTrainedModel):
    """Span extraction. forward -> (start_logits [B, L], end_logits [B, L]).
    Logits at padding positions carry no meaning; decoders look at context tokens only."""

    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        hidden, packing = self.bert.encode(input_ids, token_type_ids, attention_mask)  # [T, H]
        logits = packing.unpack(self.qa_outputs(hidden))  # [B, L, 2]
        start, end = logits.unbind(-1)
        return start.contiguous(), end.contiguous()


class BertForSequenceClassification(BertPreTrainedModel):
    """[CLS] classification/regression. forward -> logits [B, num_labels]."""

    def __init__(self, config, num_labels: int = 2):
        super().__init__(config)
        self.num_labels = num_labels
        self.bert = BertModel(config)
        self.dropout = FastDropout(config.hidden_dropout_prob)
        self.classifier = Linear(config.hidden_size, num_labels)
        self.cls_only_last_layer = True
        """Compute the last encoder layer only at [CLS], the one position the pooler reads: its
        queries, output projection and feed-forward skip every other token (keys and values still
        come from all of them). Exact, like BertForPreTraining.masked_last_layer."""
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        if self.cls_only_last_layer:
            cls = input_ids.new_zeros(input_ids.shape[0], 1)  # [B, 1]: position 0 of each sequence
            hidden, _ = self.bert.encode(input_ids, token_type_ids, attention_mask, select=cls)  # [B, H]
            pooled = self.bert.pooler(hidden)
        else:
            hidden, packing = self.bert.encode(input_ids, token_type_ids, attention_mask)
            pooled = self.bert.pool(hidden, packing)
        return self.classifier(self.dropout(pooled))
