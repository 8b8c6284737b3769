"""Acceptance 2: gold answers -> token positions in windows -> one-hot logits -> n-best
decoder -> text gives exact match 100 on every answerable question of the real sample.
Plus the window/max-context rule, null answers (v2.0) and bad-input errors (acceptance 5).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertforge.data.tokenization import load_tokenizer
from bertforge.errors import ConfigError, DataError
from bertforge.tasks import squad
from bertforge.tasks.squad_metrics import evaluate_v1, evaluate_v2


@pytest.fixture(scope="module")
def tokenizer():
    from tests.conftest import real_data_path

    return load_tokenizer(real_data_path("vocab/bert-base-uncased-vocab.txt"), do_lower_case=True)


def _one_hot(feats):
    n, L = feats.input_ids.shape
    s = np.zeros((n, L), np.float32)
    e = np.zeros((n, L), np.float32)
    s[np.arange(n), feats.start_positions] = 1.0
    e[np.arange(n), feats.end_positions] = 1.0
    return s, e


@pytest.mark.parametrize("max_seq_length,doc_stride", [(384, 128), (96, 32)])
def test_round_trip_exact_match_100(real_data, tokenizer, max_seq_length, doc_stride):
    path = real_data("squad/dev-v1.1-sample.json")
    examples = squad.read_squad_examples(path, is_training=True)
    assert len(examples) == 473
    feats = squad.features_from(examples, tokenizer, max_seq_length=max_seq_length,
                                doc_stride=doc_stride, is_training=True)
    if max_seq_length == 96:
        assert len(feats) > 2.5 * len(examples)  # really many overlapping windows
    # every answer is labelled in at least one window
    labelled = np.zeros(len(examples), bool)
    labelled[feats.example_index[feats.start_positions > 0]] = True
    assert labelled.all()
    s, e = _one_hot(feats)
    preds = squad.decode(examples, feats, s, e, n_best_size=5, max_answer_length=200)
    data = json.loads(path.read_text())["data"]
    result = evaluate_v1(data, squad.predictions_json(preds))
    assert result == {"exact_match": 100.0, "f1": 100.0}
    # character spans point at the text
    for p, ex in zip(preds, examples, strict=True):
        assert ex.context[p.start_char:p.end_char] == p.text


def test_v2_null_answers_round_trip(real_data, tokenizer):
    path = real_data("squad/dev-v2.0-sample.json")
    examples = squad.read_squad_examples(path, is_training=True, version_2_with_negative=True)
    assert sum(ex.is_impossible for ex in examples) == 477
    feats = squad.features_from(examples, tokenizer, max_seq_length=256, doc_stride=128, is_training=True)
    s, e = _one_hot(feats)
    # one-hot at [CLS] for impossible ones gives null score 2 > any span score (<= 1)
    preds = squad.decode(examples, feats, s, e, version_2_with_negative=True, max_answer_length=200)
    res = evaluate_v2(json.loads(path.read_text())["data"], squad.predictions_json(preds),
                      squad.null_odds_json(preds))
    assert res["exact"] == 100.0 and res["HasAns_total"] == 473 and res["NoAns_total"] == 477
    assert all(p.text == "" for p, ex in zip(preds, examples, strict=True) if ex.is_impossible)
    nb = squad.nbest_json(preds)[examples[0].qas_id]
    assert set(nb[0]) == {"text", "probability", "start_logit", "end_logit"}
    assert abs(sum(x["probability"] for x in nb) - 1) < 1e-6


def test_windows_and_max_context(tokenizer):
    context = " ".join(f"w{i}" for i in range(300))  # "w0" -> w, ##0: 2 tokens each... check below
    ex = squad.SquadExample("q", "which word?", context, [("w150", context.index("w150 "))])
    feats = squad.features_from([ex], tokenizer, max_seq_length=64, doc_stride=20, is_training=True)
    n_ctx = len(tokenizer.encode(context, add_special_tokens=False).ids)
    q_len = len(tokenizer.encode("which word?", add_special_tokens=False).ids)
    win = 64 - q_len - 3
    assert len(feats) == -(-(n_ctx - win) // 20) + 1
    # every context token is max-context in exactly one window
    spans = feats.offsets[..., 0]
    owner_counts = {}
    for f in range(len(feats)):
        for pos in np.nonzero(feats.max_context[f])[0]:
            owner_counts[int(spans[f, pos])] = owner_counts.get(int(spans[f, pos]), 0) + 1
    assert len(owner_counts) == n_ctx and set(owner_counts.values()) == {1}
    # inputs: [CLS] q [SEP] ctx [SEP], segment ids 1 on the context part, mask = length
    row = feats.input_ids[0]
    assert row[0] == tokenizer.token_to_id("[CLS]") and row[q_len + 1] == tokenizer.token_to_id("[SEP]")
    assert feats.token_type_ids[0, : q_len + 2].sum() == 0 and feats.token_type_ids[0, q_len + 2] == 1
    assert feats.attention_mask.sum(1).max() == 64
    # the answer is labelled only in windows that contain it, and decodes back
    s, e = _one_hot(feats)
    assert (feats.start_positions > 0).sum() >= 2
    pred = squad.decode([ex], feats, s, e)[0]
    assert pred.text == "w150"


def test_long_question_is_truncated_and_literal_pad_is_a_token(tokenizer):
    q = "why " * 200
    ex = squad.SquadExample("q", q, "[PAD] is a token here, not padding.", [])
    f = squad.features_from([ex], tokenizer, max_seq_length=128, max_query_length=64)
    assert f.attention_mask[0].sum() == 1 + 64 + 1 + len(
        tokenizer.encode(ex.context, add_special_tokens=False).ids) + 1


def _write(tmp_path, obj, name="d.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def _doc(context, answers, **qa):
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": [{"id": "q1", "question": "what?", "answers": answers, **qa}]}]}]}


@pytest.mark.parametrize("obj,msg", [
    ('{"data": [', "not valid JSON"),
    ({"nodata": 1}, "not a SQuAD file"),
    ({"data": [{"paragraphs": [{"qas": []}]}]}, "missing 'context'"),
    (_doc("short context", [{"text": "context", "answer_start": 40}]), "outside its context"),
    (_doc("short context", [{"text": "context", "answer_start": -1}]), "outside its context"),
    (_doc("short context", [{"text": "short", "answer_start": 6}]), "does not match the context"),
    (_doc("short context", [{"text": "short", "answer_start": "0"}]), "'answer_start' must be a int"),
    (_doc("short context", []), "no answer for training"),
    (_doc("short context", [], is_impossible=True), "--version_2_with_negative"),
])
def test_bad_squad_files_give_one_line_errors(tmp_path, obj, msg):
    p = _write(tmp_path, obj)
    with pytest.raises(DataError) as ei:
        squad.read_squad_examples(p, is_training=True)
    assert msg in str(ei.value) and "\n" not in str(ei.value) and str(p) in str(ei.value)


def test_bad_window_config(tokenizer):
    ex = [squad.SquadExample("q", "why " * 70, "c")]
    with pytest.raises(ConfigError, match="max_query_length"):
        squad.features_from(ex, tokenizer, max_seq_length=64, max_query_length=64)
    with pytest.raises(ConfigError, match="doc_stride"):
        squad.features_from(ex, tokenizer, doc_stride=0)
