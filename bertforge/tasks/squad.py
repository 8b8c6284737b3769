"""SQuAD v1.1 / v2.0: examples, sliding-window features, n-best decoding, inference.

Pipeline (names are the public API; the Triton client reuses the last three)::

    read_squad_examples(path)            -> list[SquadExample]
    features_from(examples, tokenizer)   -> SquadFeatures   (arrays [N, L], N windows)
    <model>(input_ids, token_type_ids, attention_mask) -> start/end logits [N, L]
    decode(examples, features, start_logits, end_logits) -> list[SquadPrediction]
    answer_questions(model, tokenizer, questions, contexts) -> list[dict]  (all of the above)

Dimension legend: N windows (features), L max_seq_length, Q query tokens, C context tokens.

Windows follow Google's BERT: ``[CLS] query [SEP] context-window [SEP]``; consecutive
windows start ``doc_stride`` context tokens apart (so with C > L they overlap), and a
context token is "max context" in the window where it has the most tokens on its
shorter side (ties go to the earlier window; + 0.01 * window length). Answers may only
start at a max-context token, so each token position is predicted from the window that
sees it best.

Unlike Google's code there is no whitespace tokenization and no ``get_final_text``
alignment heuristic: the fast tokenizer gives each WordPiece its character span in the
original context, answers map to tokens through those spans, and a predicted token span
maps back to the exact substring of the context.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bertforge.data.tokenization import special_ids
from bertforge.errors import ConfigError, DataError
from bertforge.tasks.squad_metrics import load_squad_json

__all__ = [
    "SquadExample",
    "SquadFeatures",
    "SquadPrediction",
    "load_squad_json",
    "read_squad_examples",
    "examples_from_pairs",
    "features_from",
    "decode",
    "qa_loss",
    "qa_logits",
    "answer_questions",
    "predictions_json",
    "nbest_json",
    "null_odds_json",
]


# --------------------------------------------------------------------------- examples


@dataclass
class SquadExample:
    """One question about one context.

    ``answers`` are (text, answer_start) pairs with ``context[start:start+len(text)] ==
    text``; training uses the first. ``is_impossible`` marks SQuAD 2.0 questions with no
    answer in the context.
    """

    qas_id: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)
    is_impossible: bool = False


def _need(obj, key, kind, where):
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: missing '{key}'")
    value = obj[key]
    if not isinstance(value, kind):
        raise DataError(f"{where}: '{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def read_squad_examples(path: str | os.PathLike, *, is_training: bool = False,
                        version_2_with_negative: bool = False) -> list[SquadExample]:
    """Read and validate a SQuAD v1.1/v2.0 JSON file.

    Every answer must lie inside its context and equal the context there, else a
    DataError names the file and the question. For training every question needs an
    answer unless ``version_2_with_negative`` and it is marked ``is_impossible``.
    """
    path = Path(path)
    data = load_squad_json(path)["data"]
    examples: list[SquadExample] = []
    seen: set[str] = set()
    for a_i, article in enumerate(data):
        paragraphs = _need(article, "paragraphs", list, f"{path}: data[{a_i}]")
        for p_i, para in enumerate(paragraphs):
            where = f"{path}: data[{a_i}].paragraphs[{p_i}]"
            context = _need(para, "context", str, where)
            for q_i, qa in enumerate(_need(para, "qas", list, where)):
                qwhere = f"{where}.qas[{q_i}]"
                qid = str(_need(qa, "id", (str, int), qwhere))
                qwhere = f"{path}: question {qid}"
                if qid in seen:
                    raise DataError(f"{qwhere}: duplicate question id")
                seen.add(qid)
                question = _need(qa, "question", str, qwhere)
                impossible = bool(qa.get("is_impossible", False))
                answers = []
                for ans in qa.get("answers", []) or []:
                    text = _need(ans, "text", str, qwhere + " answer")
                    start = _need(ans, "answer_start", int, qwhere + " answer")
                    if start < 0 or start + len(text) > len(context):
                        raise DataError(
                            f"{qwhere}: answer_start {start} + {len(text)} characters is outside its "
                            f"context ({len(context)} characters)")
                    if context[start:start + len(text)] != text:
                        raise DataError(
                            f"{qwhere}: answer {text[:40]!r} does not match the context at "
                            f"answer_start {start} ({context[start:start + len(text)][:40]!r})")
                    answers.append((text, start))
                if impossible and not version_2_with_negative and is_training:
                    raise DataError(f"{qwhere}: is_impossible is true; pass --version_2_with_negative "
                                    "for SQuAD 2.0 data")
                if is_training and not impossible and not answers:
                    raise DataError(f"{qwhere}: no answer for training (SQuAD 2.0 questions without "
                                    "an answer need is_impossible and --version_2_with_negative)")
                examples.append(SquadExample(qid, question, context, answers,
                                             impossible and version_2_with_negative))
    return examples


def examples_from_pairs(questions: Sequence[str], contexts: Sequence[str],
                        ids: Sequence[str] | None = None) -> list[SquadExample]:
    """Examples for free-form question/context pairs (inference)."""
    if len(questions) != len(contexts):
        raise ConfigError(f"{len(questions)} questions but {len(contexts)} contexts")
    ids = ids if ids is not None else [str(i) for i in range(len(questions))]
    return [SquadExample(str(i), q, c) for i, q, c in zip(ids, questions, contexts, strict=True)]


# --------------------------------------------------------------------------- features


@dataclass
class SquadFeatures:
    """Model inputs for every window of every example, plus what decoding needs.

    input_ids, token_type_ids, attention_mask: int32 [N, L], padded with [PAD]/0/0.
    example_index: int64 [N], the example each window belongs to.
    offsets: int32 [N, L, 2], character span [start, end) in the context of each context
        token; -1 for [CLS], query, [SEP] and padding positions.
    max_context: bool [N, L], True where the context token is max-context in this window.
    start_positions, end_positions: int64 [N] token positions of the training answer,
        0 ([CLS]) when it is impossible or not inside this window; None for prediction.
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    attention_mask: np.ndarray
    example_index: np.ndarray
    offsets: np.ndarray
    max_context: np.ndarray
    start_positions: np.ndarray | None = None
    end_positions: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def arrays(self, with_labels: bool = False) -> dict[str, np.ndarray]:
        """The model inputs (and labels) as a dict of arrays sharing dim 0."""
        out = {"input_ids": self.input_ids, "token_type_ids": self.token_type_ids,
               "attention_mask": self.attention_mask}
        if with_labels:
            if self.start_positions is None:
                raise ConfigError("features were built without answers (is_training=False)")
            out["start_positions"] = self.start_positions
            out["end_positions"] = self.end_positions
        return out


def _window_starts(n_ctx: int, max_ctx: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over ``n_ctx`` context tokens (Google's doc spans)."""
    spans = []
    start = 0
    while True:
        length = min(n_ctx - start, max_ctx)
        spans.append((start, length))
        if start + length >= n_ctx:
            return spans
        start += min(length, doc_stride)


def _max_context_owner(n_ctx: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """For each context token the index of the window where it has the most context [C]."""
    best = np.full(n_ctx, -np.inf)
    owner = np.zeros(n_ctx, dtype=np.int64)
    for s_i, (start, length) in enumerate(spans):
        j = np.arange(start, start + length)
        score = np.minimum(j - start, start + length - 1 - j) + 0.01 * length
        better = score > best[j]  # strict: ties stay with the earlier window
        best[j[better]] = score[better]
        owner[j[better]] = s_i
    return owner


def _answer_token_span(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int] | None:
    """First/last context token overlapping [start_char, end_char); None if none does."""
    if len(offsets) == 0:
        return None
    first = int(np.searchsorted(offsets[:, 1], start_char, side="right"))  # first token ending after start
    last = int(np.searchsorted(offsets[:, 0], end_char, side="left")) - 1   # last token starting before end
    if first >= len(offsets) or last < first:
        return None
    return first, last


def _encode_unique(tokenizer, texts: Sequence[str]):
    """Encode each distinct text once (many questions share a context)."""
    uniq = list(dict.fromkeys(texts))
    enc = tokenizer.encode_batch(uniq, add_special_tokens=False)
    table = dict(zip(uniq, enc, strict=True))
    return [table[t] for t in texts]


def features_from(examples: Sequence[SquadExample], tokenizer, *, max_seq_length: int = 384,
                  doc_stride: int = 128, max_query_length: int = 64,
                  is_training: bool = False) -> SquadFeatures:
    """Tokenize ``examples`` into sliding windows of ``max_seq_length`` tokens.

    ``tokenizer`` is a ``tokenizers`` BERT WordPiece tokenizer (see ``data.tokenization``).
    With ``is_training`` each window carries the token positions of the example's first
    answer (0/0 when the answer is impossible or not wholly inside the window).
    """
    if max_seq_length < 8 or max_seq_length > 100_000:
        raise ConfigError(f"--max_seq_length must be >= 8, got {max_seq_length}")
    if doc_stride < 1:
        raise ConfigError(f"--doc_stride must be >= 1, got {doc_stride}")
    if max_query_length < 1:
        raise ConfigError(f"--max_query_length must be >= 1, got {max_query_length}")
    cls_id, sep_id, pad_id = special_ids(tokenizer)
    q_enc = _encode_unique(tokenizer, [ex.question for ex in examples])
    c_enc = _encode_unique(tokenizer, [ex.context for ex in examples])

    rows_ids, rows_len, rows_types, rows_off, rows_maxc = [], [], [], [], []
    rows_ex, rows_sp, rows_ep = [], [], []
    for ex_i, (ex, q, c) in enumerate(zip(examples, q_enc, c_enc, strict=True)):
        q_ids = q.ids[:max_query_length]
        c_ids = np.asarray(c.ids, dtype=np.int64)
        c_off = np.asarray(c.offsets, dtype=np.int64).reshape(-1, 2)
        max_ctx = max_seq_length - len(q_ids) - 3  # [CLS] q [SEP] ctx [SEP]
        if max_ctx < 1:
            raise ConfigError(f"question {ex.qas_id}: {len(q_ids)} query tokens leave no room for the "
                              f"context in --max_seq_length {max_seq_length}; lower --max_query_length")
        spans = _window_starts(len(c_ids), max_ctx, doc_stride)
        owner = _max_context_owner(len(c_ids), spans)

        tok_span = None
        if is_training and not ex.is_impossible and ex.answers:
            text, start = ex.answers[0]
            stripped = text.strip()
            start += len(text) - len(text.lstrip())
            tok_span = _answer_token_span(c_off, start, start + len(stripped))

        prefix = [cls_id, *q_ids, sep_id]
        ctx0 = len(prefix)  # position of the first context token in every window
        for s_i, (start, length) in enumerate(spans):
            n = ctx0 + length + 1
            ids = np.full(max_seq_length, pad_id, dtype=np.int32)
            ids[:ctx0] = prefix
            ids[ctx0:ctx0 + length] = c_ids[start:start + length]
            ids[ctx0 + length] = sep_id
            types = np.zeros(max_seq_length, dtype=np.int8)
            types[ctx0:n] = 1
            off = np.full((max_seq_length, 2), -1, dtype=np.int32)
            off[ctx0:ctx0 + length] = c_off[start:start + length]
            maxc = np.zeros(max_seq_length, dtype=bool)
            maxc[ctx0:ctx0 + length] = owner[start:start + length] == s_i
            rows_ids.append(ids)
            rows_len.append(n)
            rows_types.append(types)
            rows_off.append(off)
            rows_maxc.append(maxc)
            rows_ex.append(ex_i)
            if is_training:
                sp = ep = 0
                if tok_span is not None and start <= tok_span[0] and tok_span[1] < start + length:
                    sp, ep = tok_span[0] - start + ctx0, tok_span[1] - start + ctx0
                rows_sp.append(sp)
                rows_ep.append(ep)

    n_feat = len(rows_ids)
    L = max_seq_length
    input_ids = np.stack(rows_ids) if n_feat else np.zeros((0, L), np.int32)
    token_type_ids = np.stack(rows_types) if n_feat else np.zeros((0, L), np.int8)
    # From the lengths, not `ids != pad`: a literal "[PAD]" in the text is a real token.
    attention_mask = (np.arange(L)[None, :] < np.asarray(rows_len, dtype=np.int64)[:, None]).astype(np.int8)
    return SquadFeatures(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        attention_mask=attention_mask,
        example_index=np.asarray(rows_ex, dtype=np.int64),
        offsets=np.stack(rows_off) if n_feat else np.zeros((0, L, 2), np.int32),
        max_context=np.stack(rows_maxc) if n_feat else np.zeros((0, L), bool),
        start_positions=np.asarray(rows_sp, dtype=np.int64) if is_training else None,
        end_positions=np.asarray(rows_ep, dtype=np.int64) if is_training else None,
    )


# --------------------------------------------------------------------------- decoding


@dataclass
class SquadPrediction:
    """The decoded answer of one example.

    ``text`` is the prediction ("" = no answer, SQuAD 2.0); ``probability`` its softmax
    probability among the n-best; ``start_char``/``end_char`` its span in the context
    (-1 for ""); ``null_odds`` = null score - best span score (None for v1.1);
    ``nbest`` the n-best list in the format of NVIDIA's nbest_predictions.json.
    """

    qas_id: str
    text: str
    probability: float
    start_char: int
    end_char: int
    null_odds: float | None
    nbest: list[dict]


def _softmax(scores: list[float]) -> list[float]:
    if not scores:
        return []
    m = max(scores)
    exps = [math.exp(s - m) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _top(values: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    idx = np.nonzero(mask)[0]
    if len(idx) > k:
        order = np.argsort(-values[idx], kind="stable")[:k]
        idx = idx[order]
    return idx


def decode(examples: Sequence[SquadExample], features: SquadFeatures, start_logits, end_logits, *,
           n_best_size: int = 20, max_answer_length: int = 30, version_2_with_negative: bool = False,
           null_score_diff_threshold: float = 0.0) -> list[SquadPrediction]:
    """Turn start/end logits [N, L] of ``features`` into one prediction per example.

    For every window the max(``n_best_size``, 20) best starts (context tokens that are max
    context there) and ends (context tokens) are paired; spans with end < start or longer than
    ``max_answer_length`` tokens are dropped. Spans of all windows of an example are
    ranked by start + end logit and de-duplicated by text. With
    ``version_2_with_negative`` the null answer scores the smallest [CLS] start + end
    logit over the windows, and "" is predicted when null - best span score exceeds
    ``null_score_diff_threshold``.
    """
    if n_best_size < 1:
        raise ConfigError(f"--n_best_size must be >= 1, got {n_best_size}")
    if max_answer_length < 1:
        raise ConfigError(f"--max_answer_length must be >= 1, got {max_answer_length}")
    start_logits = np.asarray(start_logits, dtype=np.float64)
    end_logits = np.asarray(end_logits, dtype=np.float64)
    if start_logits.shape[0] != len(features) or end_logits.shape[0] != len(features):
        raise ValueError(f"{start_logits.shape[0]} rows of logits for {len(features)} features")
    k = max(n_best_size, 20)
    by_example: list[list[int]] = [[] for _ in examples]
    for f_i, ex_i in enumerate(features.example_index):
        by_example[int(ex_i)].append(f_i)

    results = []
    for ex, f_ids in zip(examples, by_example, strict=True):
        cands = []  # (score, start_logit, end_logit, char_start, char_end)
        null = None  # (score, start_logit, end_logit) of the window with the smallest null score
        for f_i in f_ids:
            s, e = start_logits[f_i], end_logits[f_i]
            L = min(len(s), features.offsets.shape[1])
            off = features.offsets[f_i, :L]
            is_ctx = off[:, 0] >= 0
            if version_2_with_negative:
                score = float(s[0] + e[0])
                if null is None or score < null[0]:
                    null = (score, float(s[0]), float(e[0]))
            # Search at least 20 starts x 20 ends even for a 1-best answer: the single best
            # start and end may not form a valid span.
            starts = _top(s[:L], is_ctx & features.max_context[f_i, :L], k)
            ends = _top(e[:L], is_ctx, k)
            if len(starts) == 0 or len(ends) == 0:
                continue
            length = ends[None, :] - starts[:, None] + 1  # [S, E]
            ok = (length >= 1) & (length <= max_answer_length)
            for a, b in zip(*np.nonzero(ok), strict=True):
                i, j = int(starts[a]), int(ends[b])
                cands.append((float(s[i] + e[j]), float(s[i]), float(e[j]), int(off[i, 0]), int(off[j, 1])))
        if null is not None:
            cands.append((null[0], null[1], null[2], -1, -1))
        cands.sort(key=lambda c: -c[0])

        nbest, seen = [], set()
        for _score, sl, el, cs, ce in cands:
            if len(nbest) >= n_best_size:
                break
            text = ex.context[cs:ce] if cs >= 0 else ""
            if text in seen:
                continue
            seen.add(text)
            nbest.append((text, sl, el, cs, ce))
        if null is not None and "" not in seen:
            nbest.append(("", null[1], null[2], -1, -1))
        if not nbest:
            nbest.append(("", 0.0, 0.0, -1, -1))
        probs = _softmax([sl + el for _, sl, el, _, _ in nbest])
        nbest_out = [{"text": t, "probability": p, "start_logit": sl, "end_logit": el}
                     for (t, sl, el, _, _), p in zip(nbest, probs, strict=True)]

        best_i = next((i for i, n in enumerate(nbest) if n[0]), None)  # best non-null entry
        null_odds = None
        if version_2_with_negative:
            if best_i is None:  # no span at all (empty context): the answer is ""
                null_odds = 1e4
                pick = next(i for i, n in enumerate(nbest) if not n[0])
            else:
                null_odds = null[0] - (nbest[best_i][1] + nbest[best_i][2])
                pick = best_i
                if null_odds > null_score_diff_threshold:
                    pick = next(i for i, n in enumerate(nbest) if not n[0])
        else:
            pick = best_i if best_i is not None else 0
        text, _, _, cs, ce = nbest[pick]
        results.append(SquadPrediction(ex.qas_id, text, probs[pick], cs, ce, null_odds, nbest_out))
    return results


def predictions_json(preds: Sequence[SquadPrediction]) -> dict[str, str]:
    """``predictions.json``: id -> answer text."""
    return {p.qas_id: p.text for p in preds}


def nbest_json(preds: Sequence[SquadPrediction]) -> dict[str, list[dict]]:
    """``nbest_predictions.json``: id -> [{text, probability, start_logit, end_logit}]."""
    return {p.qas_id: p.nbest for p in preds}


def null_odds_json(preds: Sequence[SquadPrediction]) -> dict[str, float]:
    """``null_odds.json`` (SQuAD 2.0): id -> null score - best span score (na_prob_file)."""
    return {p.qas_id: p.null_odds for p in preds if p.null_odds is not None}


# --------------------------------------------------------------------------- model glue


def qa_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
            end_positions: torch.Tensor) -> torch.Tensor:
    """Mean of the start and end cross-entropies (logits [B, L], positions [B]).

    Positions outside [0, L) are ignored (Google clamps them to L, the ignore index).
    """
    ignored = start_logits.size(1)
    sp = start_positions.clamp(0, ignored)
    ep = end_positions.clamp(0, ignored)
    ce = torch.nn.functional.cross_entropy
    return (ce(start_logits.float(), sp, ignore_index=ignored)
            + ce(end_logits.float(), ep, ignore_index=ignored)) / 2


@torch.inference_mode()
def qa_logits(model, features: SquadFeatures, *, batch_size: int = 8,
              device: torch.device | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run a BertForQuestionAnswering-style model over ``features``.

    Returns start and end logits as float32 arrays [N, L]. Each batch is cut to its
    longest window (padding never changes the outputs at real positions); the cut-off
    positions get -1e4.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    n, L = features.input_ids.shape
    start = np.full((n, L), -1e4, dtype=np.float32)
    end = np.full((n, L), -1e4, dtype=np.float32)
    lengths = features.attention_mask.sum(axis=1)
    try:
        for i in range(0, n, batch_size):
            w = int(lengths[i:i + batch_size].max())
            ids = torch.as_tensor(features.input_ids[i:i + batch_size, :w], dtype=torch.long, device=device)
            tt = torch.as_tensor(features.token_type_ids[i:i + batch_size, :w], dtype=torch.long, device=device)
            am = torch.as_tensor(features.attention_mask[i:i + batch_size, :w], dtype=torch.long, device=device)
            s, e = model(ids, tt, am)
            start[i:i + batch_size, :w] = s.float().cpu().numpy()
            end[i:i + batch_size, :w] = e.float().cpu().numpy()
    finally:
        model.train(was_training)
    return start, end


def answer_questions(model, tokenizer, questions: Sequence[str], contexts: Sequence[str], *,
                     max_seq_length: int = 384, doc_stride: int = 128, max_query_length: int = 64,
                     n_best_size: int = 20, max_answer_length: int = 30,
                     version_2_with_negative: bool = False, null_score_diff_threshold: float = 0.0,
                     batch_size: int = 8, device=None) -> list[dict]:
    """Answer each question from its context with a QA model.

    Long contexts are split into the same sliding windows as training. Returns, per
    question, ``{"answer", "probability", "start", "end", "null_odds", "nbest"}`` where
    start/end are character offsets of the answer in the context (-1 for "").
    """
    examples = examples_from_pairs(questions, contexts)
    feats = features_from(examples, tokenizer, max_seq_length=max_seq_length, doc_stride=doc_stride,
                          max_query_length=max_query_length)
    s, e = qa_logits(model, feats, batch_size=batch_size, device=device)
    preds = decode(examples, feats, s, e, n_best_size=n_best_size, max_answer_length=max_answer_length,
                   version_2_with_negative=version_2_with_negative,
                   null_score_diff_threshold=null_score_diff_threshold)
    return [{"answer": p.text, "probability": p.probability, "start": p.start_char, "end": p.end_char,
             "null_odds": p.null_odds, "nbest": p.nbest} for p in preds]
