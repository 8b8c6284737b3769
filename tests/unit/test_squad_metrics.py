"""Acceptance 1 (SQuAD half): our EM/F1 and v2.0 metrics equal the official scripts' formulas.

The reference below is the logic of the published ``evaluate-v1.1.py`` and
``evaluate-v2.0.py`` (normalize_answer, f1, exact, max over references, v2.0 thresholds),
written out independently of bertforge. Predictions are built over the real SQuAD
sample: exact answers, answers with case/punctuation/article noise, partial spans, wrong
answers (another question's), empty answers and missing predictions.
"""

from __future__ import annotations

import collections
import json
import random
import re
import string
import subprocess
import sys

import pytest

from bertforge.evaluate_squad import evaluate_files
from bertforge.tasks.squad_metrics import evaluate_v1, evaluate_v2, is_v2_dataset


# ----------------------------------------------------------------- official reference logic
def ref_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def ref_f1_v1(prediction, ground_truth):
    p = ref_normalize(prediction).split()
    g = ref_normalize(ground_truth).split()
    common = collections.Counter(p) & collections.Counter(g)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(p)
    recall = 1.0 * num_same / len(g)
    return (2 * precision * recall) / (precision + recall)


def ref_evaluate_v1(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                gts = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                exact_match += max(ref_normalize(pred) == ref_normalize(g) for g in gts)
                f1 += max(ref_f1_v1(pred, g) for g in gts)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def ref_get_tokens(s):
    if not s:
        return []
    return ref_normalize(s).split()


def ref_compute_f1_v2(a_gold, a_pred):
    gold_toks, pred_toks = ref_get_tokens(a_gold), ref_get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def ref_evaluate_v2(dataset, preds, na_probs=None, na_prob_thresh=1.0):
    qid_to_has_ans = {qa["id"]: bool(qa["answers"]) for a in dataset for p in a["paragraphs"] for qa in p["qas"]}
    has_ans = [k for k, v in qid_to_has_ans.items() if v]
    no_ans = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = {}, {}
    for a in dataset:
        for p in a["paragraphs"]:
            for qa in p["qas"]:
                qid = qa["id"]
                golds = [x["text"] for x in qa["answers"] if ref_normalize(x["text"])] or [""]
                if qid not in preds:
                    continue
                exact_raw[qid] = max(int(ref_normalize(g) == ref_normalize(preds[qid])) for g in golds)
                f1_raw[qid] = max(ref_compute_f1_v2(g, preds[qid]) for g in golds)
    probs = na_probs if na_probs is not None else {k: 0.0 for k in preds}

    def thresh(scores):
        return {q: (float(not qid_to_has_ans[q]) if probs[q] > na_prob_thresh else s) for q, s in scores.items()}

    ex, f1 = thresh(exact_raw), thresh(f1_raw)

    def d(qids):
        return {"exact": 100.0 * sum(ex[k] for k in qids) / len(qids),
                "f1": 100.0 * sum(f1[k] for k in qids) / len(qids), "total": len(qids)}

    out = d(list(ex))
    for prefix, ids in (("HasAns", has_ans), ("NoAns", no_ans)):
        if ids:
            out.update({f"{prefix}_{k}": v for k, v in d(ids).items()})
    if na_probs is not None:
        for name, scores in (("exact", exact_raw), ("f1", f1_raw)):
            cur = best = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
            best_t = 0.0
            for qid in sorted(probs, key=lambda k: probs[k]):
                if qid not in scores:
                    continue
                diff = scores[qid] if qid_to_has_ans[qid] else (-1 if preds[qid] else 0)
                cur += diff
                if cur > best:
                    best, best_t = cur, probs[qid]
            out[f"best_{name}"] = 100.0 * best / len(scores)
            out[f"best_{name}_thresh"] = best_t
    return out


# ----------------------------------------------------------------- predictions with known answers
def _mutate(text: str, rng: random.Random, other: str) -> str:
    words = text.split()
    kind = rng.randrange(7)
    if kind == 0:
        return text                                   # exact
    if kind == 1:
        return "The " + text.upper() + " ."           # case, article, punctuation noise
    if kind == 2 and len(words) > 1:
        return " ".join(words[: max(1, len(words) // 2)])  # partial span
    if kind == 3:
        return other                                  # wrong answer
    if kind == 4:
        return ""                                     # empty answer
    if kind == 5:
        return text + " " + other                     # too long
    return "a " + text.replace(",", "")


def _predictions(dataset, seed=0, missing_every=37):
    rng = random.Random(seed)
    qas = [qa for a in dataset for p in a["paragraphs"] for qa in p["qas"]]
    pool = [a["text"] for qa in qas for a in qa["answers"]] or ["something"]
    preds = {}
    for i, qa in enumerate(qas):
        if missing_every and i % missing_every == 5:
            continue  # missing prediction
        gold = qa["answers"][rng.randrange(len(qa["answers"]))]["text"] if qa["answers"] else ""
        if not qa["answers"]:
            preds[qa["id"]] = "" if rng.random() < 0.5 else rng.choice(pool)
        else:
            preds[qa["id"]] = _mutate(gold, rng, rng.choice(pool))
    return preds


def test_v1_matches_official_formulas_on_real_sample(real_data):
    data = json.loads(real_data("squad/dev-v1.1-sample.json").read_text())
    assert not is_v2_dataset(data)
    for seed in range(3):
        preds = _predictions(data["data"], seed)
        ours = evaluate_v1(data["data"], preds, warn=None)
        ref = ref_evaluate_v1(data["data"], preds)
        assert ours == pytest.approx(ref, abs=1e-9)
        assert 5 < ours["exact_match"] < 95  # the mixture really exercises both sides
    # all gold: 100/100
    gold = {qa["id"]: qa["answers"][0]["text"] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]}
    assert evaluate_v1(data["data"], gold) == {"exact_match": 100.0, "f1": 100.0}


@pytest.mark.parametrize("with_probs", [False, True])
def test_v2_matches_official_formulas_on_real_sample(real_data, with_probs):
    data = json.loads(real_data("squad/dev-v2.0-sample.json").read_text())
    assert is_v2_dataset(data)
    preds = _predictions(data["data"], seed=1, missing_every=0)  # the official v2.0 crashes on missing ones
    rng = random.Random(2)
    na = {k: rng.uniform(-5, 5) for k in preds} if with_probs else None
    for thresh in (-2.5, 0.0, 1.0):
        ours = evaluate_v2(data["data"], preds, na, thresh, warn=None)
        ref = ref_evaluate_v2(data["data"], preds, na, thresh)
        assert list(ours) == list(ref)  # same keys in the official order
        assert ours == pytest.approx(ref, abs=1e-9)
    # (ours is now the default threshold 1.0)
    assert ours["HasAns_total"] + ours["NoAns_total"] == ours["total"]
    assert ("best_f1_thresh" in ours) == with_probs
    assert 5 < ours["HasAns_exact"] < 95 and 5 < ours["NoAns_exact"] < 95


def test_cli_is_drop_in(real_data, tmp_path):
    v1 = real_data("squad/dev-v1.1-sample.json")
    v2 = real_data("squad/dev-v2.0-sample.json")
    p1 = _predictions(json.loads(v1.read_text())["data"], 3, missing_every=0)
    p2 = _predictions(json.loads(v2.read_text())["data"], 4, missing_every=0)
    na = {k: (i % 7) - 3.0 for i, k in enumerate(p2)}
    for name, obj in (("p1.json", p1), ("p2.json", p2), ("na.json", na)):
        (tmp_path / name).write_text(json.dumps(obj))
    run = [sys.executable, "-m", "bertforge.evaluate_squad"]
    out1 = subprocess.run(run + [str(v1), str(tmp_path / "p1.json")], capture_output=True, text=True, check=True)
    res1 = json.loads(out1.stdout)
    assert list(res1) == ["exact_match", "f1"]
    assert res1 == pytest.approx(ref_evaluate_v1(json.loads(v1.read_text())["data"], p1))
    out2 = subprocess.run(run + [str(v2), str(tmp_path / "p2.json"), "--na_prob_file", str(tmp_path / "na.json")],
                          capture_output=True, text=True, check=True)
    res2 = json.loads(out2.stdout)
    assert res2 == pytest.approx(ref_evaluate_v2(json.loads(v2.read_text())["data"], p2, na, 1.0))
    assert {"best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh", "HasAns_f1", "NoAns_exact"} <= set(res2)


def test_cli_bad_input_is_one_line(tmp_path, real_data):
    v1 = real_data("squad/dev-v1.1-sample.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [')
    preds = tmp_path / "p.json"
    preds.write_text("[1, 2]")
    cases = [([str(bad), str(preds)], "bad.json: not valid JSON"),
             ([str(v1), str(preds)], "expected a JSON object"),
             ([str(v1), str(tmp_path / "nope.json")], "no such file")]
    for args, msg in cases:
        r = subprocess.run([sys.executable, "-m", "bertforge.evaluate_squad", *args], capture_output=True, text=True)
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and msg in r.stderr, r.stderr


def test_evaluate_files_v2_without_probs(real_data, tmp_path):
    v2 = real_data("squad/dev-v2.0-sample.json")
    preds = {qa["id"]: "" for a in json.loads(v2.read_text())["data"] for p in a["paragraphs"] for qa in p["qas"]}
    (tmp_path / "p.json").write_text(json.dumps(preds))
    res = evaluate_files(str(v2), str(tmp_path / "p.json"))
    assert res["NoAns_exact"] == 100.0 and res["HasAns_exact"] == 0.0
    assert "best_f1" not in res
