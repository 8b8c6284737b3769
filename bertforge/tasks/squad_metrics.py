"""The official SQuAD evaluation, v1.1 (EM/F1) and v2.0 (HasAns/NoAns, best thresholds).

The numbers are those of the published scripts ``evaluate-v1.1.py`` and
``evaluate-v2.0.py``; this module re-implements their definitions so that fine-tuning can
evaluate in-process and ``python -m bertforge.evaluate_squad`` can replace them:

* answers are normalised by lower-casing, dropping ASCII punctuation, the articles
  a/an/the and extra whitespace;
* EM is 1 when the normalised strings are equal; F1 is the token-bag F1 of the
  normalised strings; each question takes the maximum over its reference answers;
* v1.1: a question without a prediction scores 0 and counts in the total;
* v2.0: references that normalise to "" are dropped and a question with none left has
  the single reference "" (no answer); F1 against "" is 1 only for an empty prediction;
  questions without a prediction are left out; with ``na_probs`` a question whose
  no-answer probability exceeds ``na_prob_thresh`` is scored as if "" was predicted, and
  ``best_exact``/``best_f1`` are the scores of the best such threshold.
"""

from __future__ import annotations

import collections
import json
import os
import re
import string
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from bertforge.errors import DataError

__all__ = [
    "load_squad_json",
    "normalize_answer",
    "exact_match_score",
    "f1_score",
    "evaluate_v1",
    "evaluate_v2",
    "is_v2_dataset",
]

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def load_squad_json(path: str | os.PathLike) -> dict:
    """The parsed SQuAD file; DataError naming the file when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise DataError(f"{path}: not a SQuAD file (expected an object with a 'data' list)")
    return obj


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def exact_match_score(prediction: str, ground_truth: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str, *, v2: bool = False) -> float:
    """Token-bag F1 of the normalised strings.

    ``v2=True`` applies the v2.0 rule for empty answers: when either side has no tokens
    the score is 1 if both are empty, else 0 (v1.1 scores such a pair 0).
    """
    pred_toks = _tokens(prediction)
    gold_toks = _tokens(ground_truth)
    if v2 and (not pred_toks or not gold_toks):
        return float(pred_toks == gold_toks)
    common = collections.Counter(pred_toks) & collections.Counter(gold_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _questions(dataset: Iterable[Mapping]) -> Iterable[Mapping]:
    for article in dataset:
        for paragraph in article["paragraphs"]:
            yield from paragraph["qas"]


def is_v2_dataset(dataset_json: Mapping) -> bool:
    """True for SQuAD 2.0 data: version 2.x, or any question marked impossible / without answers."""
    version = str(dataset_json.get("version", ""))
    if version.startswith("2"):
        return True
    if version.startswith("1"):
        return False
    return any(qa.get("is_impossible") or not qa.get("answers")
               for qa in _questions(dataset_json.get("data", [])))


def evaluate_v1(dataset: Iterable[Mapping], predictions: Mapping[str, str],
                *, warn=sys.stderr) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in percent, as ``evaluate-v1.1.py`` prints them.

    ``dataset`` is the ``data`` list of a SQuAD file; ``predictions`` maps id -> text.
    """
    em = f1 = 0.0
    total = 0
    for qa in _questions(dataset):
        total += 1
        if qa["id"] not in predictions:
            if warn is not None:
                print(f"Unanswered question {qa['id']} will receive score 0.", file=warn)
            continue
        pred = predictions[qa["id"]]
        golds = [a["text"] for a in qa["answers"]]
        if not golds:  # v2.0 data evaluated with v1.1 rules: nothing can match
            continue
        em += max(exact_match_score(pred, g) for g in golds)
        f1 += max(f1_score(pred, g) for g in golds)
    total = max(total, 1)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def _raw_scores_v2(dataset, predictions, warn):
    exact, f1 = {}, {}
    for qa in _questions(dataset):
        qid = qa["id"]
        golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])]
        if not golds:
            golds = [""]  # the only right answer to an unanswerable question is ""
        if qid not in predictions:
            if warn is not None:
                print(f"Missing prediction for {qid}", file=warn)
            continue
        pred = predictions[qid]
        exact[qid] = max(exact_match_score(pred, g) for g in golds)
        f1[qid] = max(f1_score(pred, g, v2=True) for g in golds)
    return exact, f1


def _apply_threshold(scores, na_probs, has_ans, thresh):
    return {qid: (float(not has_ans[qid]) if na_probs[qid] > thresh else s)
            for qid, s in scores.items()}


def _eval_dict(exact, f1, qids=None):
    qids = list(exact) if qids is None else qids
    total = len(qids)
    if total == 0:
        return {"exact": 0.0, "f1": 0.0, "total": 0}
    return {
        "exact": 100.0 * sum(exact[k] for k in qids) / total,
        "f1": 100.0 * sum(f1[k] for k in qids) / total,
        "total": total,
    }


def _best_thresh(predictions, scores, na_probs, has_ans):
    """Sweep the no-answer threshold over the sorted na_probs; return (best score %, thresh)."""
    cur = best = sum(1 for k in has_ans if not has_ans[k])  # threshold below all: all ""
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if predictions[qid] else 0
        cur += diff
        if cur > best:
            best = cur
            best_thresh = na_probs[qid]
    return 100.0 * best / max(len(scores), 1), best_thresh


def evaluate_v2(dataset: Iterable[Mapping], predictions: Mapping[str, str],
                na_probs: Mapping[str, float] | None = None, na_prob_thresh: float = 1.0,
                *, warn=sys.stderr) -> dict[str, float]:
    """The dict ``evaluate-v2.0.py`` prints, keys in its order.

    ``exact, f1, total, HasAns_exact, HasAns_f1, HasAns_total, NoAns_exact, NoAns_f1,
    NoAns_total`` and, when ``na_probs`` is given, ``best_exact, best_exact_thresh,
    best_f1, best_f1_thresh``. Values are percentages except totals and thresholds.
    """
    dataset = list(dataset)
    has_ans = {qa["id"]: bool(qa["answers"]) for qa in _questions(dataset)}
    has_ids = [k for k, v in has_ans.items() if v]
    no_ids = [k for k, v in has_ans.items() if not v]
    exact_raw, f1_raw = _raw_scores_v2(dataset, predictions, warn)
    probs = dict(na_probs) if na_probs is not None else {k: 0.0 for k in predictions}
    missing = [k for k in exact_raw if k not in probs]
    if missing:
        raise KeyError(f"no-answer probability missing for question {missing[0]}")
    exact = _apply_threshold(exact_raw, probs, has_ans, na_prob_thresh)
    f1 = _apply_threshold(f1_raw, probs, has_ans, na_prob_thresh)
    out = _eval_dict(exact, f1)
    # The official script raises KeyError here when a prediction is missing; we leave
    # such questions out of the HasAns/NoAns groups as they are left out of the total.
    has_ids = [k for k in has_ids if k in exact]
    no_ids = [k for k in no_ids if k in exact]
    if has_ids:
        for k, v in _eval_dict(exact, f1, has_ids).items():
            out[f"HasAns_{k}"] = v
    if no_ids:
        for k, v in _eval_dict(exact, f1, no_ids).items():
            out[f"NoAns_{k}"] = v
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = _best_thresh(predictions, exact_raw, probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = _best_thresh(predictions, f1_raw, probs, has_ans)
    return out
