"""A minimal BERT with the module layout of NVIDIA's modeling.py, written for the tests.

Only what decides the parameter names and the forward math: ``LinearActivation`` (weight and
bias under ``dense_act``) for the intermediate, pooler (tanh) and MLM transform layers; separate
``query``/``key``/``value``; the MLM decoder tied to the word embeddings with no bias of its own
(``cls.predictions.bias``); exact (erf) GELU; the additive -10000 attention mask. Its
``state_dict`` has NVIDIA's keys, in NVIDIA's order, so ``load_state_dict(strict=True)`` here
is what NVIDIA's code would accept.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def gelu(x):
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class LinearActivation(nn.Module):
    def __init__(self, n_in: int, n_out: int, act):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in).normal_(0, 0.02))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.act = act

    def forward(self, x):
        return self.act(F.linear(x, self.weight, self.bias))


class Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=1e-12)

    def forward(self, ids, types):
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings(types)
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x, mask):  # x [B, L, H], mask [B, 1, 1, L] additive
        B, L, H = x.shape
        d = H // self.heads

        def split(t):
            return t.view(B, L, self.heads, d).transpose(1, 2)  # [B, nh, L, d]

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + mask
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, H)


class Sub(nn.Module):  # BertSelfOutput / BertOutput: dense + LayerNorm(residual)
    def __init__(self, n_in, h):
        super().__init__()
        self.dense = nn.Linear(n_in, h)
        self.LayerNorm = nn.LayerNorm(h, eps=1e-12)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = SelfAttention(c)
        self.output = Sub(c["hidden_size"], c["hidden_size"])

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense_act = LinearActivation(c["hidden_size"], c["intermediate_size"], gelu)

    def forward(self, x):
        return self.dense_act(x)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = Sub(c["intermediate_size"], c["hidden_size"])

    def forward(self, x, mask):
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList([Layer(c) for _ in range(c["num_hidden_layers"])])

    def forward(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class Pooler(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense_act = LinearActivation(c["hidden_size"], c["hidden_size"], torch.tanh)

    def forward(self, x):
        return self.dense_act(x[:, 0])


class BertModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)
        self.pooler = Pooler(c)

    def forward(self, ids, types, attention_mask):
        mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        seq = self.encoder(self.embeddings(ids, types), mask)
        return seq, self.pooler(seq)


class Transform(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense_act = LinearActivation(c["hidden_size"], c["hidden_size"], gelu)
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=1e-12)

    def forward(self, x):
        return self.LayerNorm(self.dense_act(x))


class LMPredictionHead(nn.Module):
    def __init__(self, c, embedding_weight):
        super().__init__()
        self.transform = Transform(c)
        self.decoder = nn.Linear(embedding_weight.shape[1], embedding_weight.shape[0], bias=False)
        self.decoder.weight = embedding_weight
        self.bias = nn.Parameter(torch.zeros(embedding_weight.shape[0]))

    def forward(self, x):
        return self.decoder(self.transform(x)) + self.bias


class PreTrainingHeads(nn.Module):
    def __init__(self, c, embedding_weight):
        super().__init__()
        self.predictions = LMPredictionHead(c, embedding_weight)
        self.seq_relationship = nn.Linear(c["hidden_size"], 2)


class BertForPreTraining(nn.Module):
    """NVIDIA's BertForPreTraining layout; ``c`` is a bert_config dict whose vocab_size is
    already padded to a multiple of 8, as NVIDIA's run_pretraining.py pads it."""

    def __init__(self, c):
        super().__init__()
        self.bert = BertModel(c)
        self.cls = PreTrainingHeads(c, self.bert.embeddings.word_embeddings.weight)

    def forward(self, ids, types, attention_mask):
        seq, pooled = self.bert(ids, types, attention_mask)
        return self.cls.predictions(seq), self.cls.seq_relationship(pooled)


def no_decay_groups(model: nn.Module) -> list[dict]:
    """NVIDIA's optimizer groups (run_pretraining.py's name list)."""
    no_decay = ["bias", "gamma", "beta", "LayerNorm"]
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
            {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0}]
