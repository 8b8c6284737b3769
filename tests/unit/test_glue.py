"""GLUE: metrics equal scipy/sklearn (acceptance 1), processors read the real GLUE layouts,
features follow Google's layout, and bad input gives one-line errors (acceptance 5)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from bertforge.data.tokenization import load_tokenizer
from bertforge.errors import ConfigError, DataError
from bertforge.tasks import glue


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    labels = rng.integers(0, 2, n)
    preds = np.where(rng.random(n) < 0.7, labels, 1 - labels)
    assert glue.matthews_corrcoef(preds, labels) == pytest.approx(sklearn.metrics.matthews_corrcoef(labels, preds), abs=1e-12)
    assert glue.f1_binary(preds, labels) == pytest.approx(sklearn.metrics.f1_score(labels, preds), abs=1e-12)
    assert glue.accuracy(preds, labels) == pytest.approx(sklearn.metrics.accuracy_score(labels, preds), abs=1e-12)
    # 3-class (MNLI) MCC and accuracy
    l3, p3 = rng.integers(0, 3, n), rng.integers(0, 3, n)
    assert glue.matthews_corrcoef(p3, l3) == pytest.approx(sklearn.metrics.matthews_corrcoef(l3, p3), abs=1e-12)
    # degenerate: constant predictions
    assert glue.matthews_corrcoef(np.zeros(n, int), labels) == sklearn.metrics.matthews_corrcoef(labels, np.zeros(n, int))
    assert glue.f1_binary(np.zeros(n, int), labels) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 300))
    y = np.round(rng.uniform(0, 5, n) * 5) / 5  # STS-B-like scores with many ties
    x = y + rng.normal(0, 1.0, n)
    x[: n // 4] = np.round(x[: n // 4])  # ties in predictions too
    assert glue.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)
    assert glue.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0], abs=1e-12)
    m = glue.compute_metrics(glue.get_task("sts-b"), x, y)
    assert set(m) == {"pearson", "spearmanr", "corr"} and m["corr"] == pytest.approx((m["pearson"] + m["spearmanr"]) / 2)


def test_metric_dict_per_task():
    p, l_ = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    assert set(glue.compute_metrics(glue.get_task("CoLA"), p, l_)) == {"mcc"}
    assert set(glue.compute_metrics(glue.get_task("mrpc"), p, l_)) == {"acc", "f1", "acc_and_f1"}
    assert set(glue.compute_metrics(glue.get_task("qqp"), p, l_)) == {"acc", "f1", "acc_and_f1"}
    for t in ("sst-2", "mnli", "mnli-mm", "qnli", "rte", "wnli"):
        assert glue.compute_metrics(glue.get_task(t), p, l_) == {"acc": 0.75}


@pytest.fixture(scope="module")
def tokenizer():
    from tests.conftest import real_data_path

    return load_tokenizer(real_data_path("vocab/bert-base-uncased-vocab.txt"), do_lower_case=True)


@pytest.mark.parametrize("task,fname,n,pair", [
    ("mnli", "MNLI_dev_matched.tsv", 5, True), ("mnli", "MNLI_train.tsv", 6, True),
    ("qnli", "QNLI_dev.tsv", 5, True), ("rte", "RTE_train.tsv", 5, True),
    ("qqp", "Quora_dev.tsv", 2, True), ("sst-2", "SST-2_dev.tsv", 5, False),
])
def test_real_glue_samples(real_data, tokenizer, task, fname, n, pair):
    t = glue.get_task(task)
    ex = glue.read_examples(t, real_data(f"glue/samples/{fname}"))
    assert len(ex) == n and all((e.text_b is not None) == pair for e in ex)
    assert all(e.label in t.labels for e in ex)
    f = glue.glue_features(ex, t, tokenizer, 48)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    for i in range(n):
        k = int(f["attention_mask"][i].sum())
        assert k <= 48 and f["input_ids"][i, 0] == cls_id and f["input_ids"][i, k - 1] == sep_id
        assert (f["input_ids"][i, k:] == 0).all() and (f["token_type_ids"][i, k:] == 0).all()
        seps = np.nonzero(f["input_ids"][i, :k] == sep_id)[0]
        assert len(seps) == (2 if pair else 1)
        assert f["token_type_ids"][i, : seps[0] + 1].sum() == 0 and f["token_type_ids"][i, seps[0] + 1:k].all()
    assert f["labels"].dtype == np.int64


def test_every_task_reads_its_layout(tmp_path):
    """Minimal files in each task's official GLUE layout (header names and positions)."""
    layouts = {
        "cola": ("gj04\t1\t\tOur friends won't buy this analysis.\n", "dev.tsv", "1"),
        "sst-2": ("sentence\tlabel\na gripping film\t1\n", "dev.tsv", "1"),
        "mrpc": ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said.\tHe says.\n", "dev.tsv", "1"),
        "sts-b": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                  "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man plays.\tA man sings.\t2.5\n",
                  "dev.tsv", "2.5"),
        "qqp": ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tWhy?\tHow?\t0\n", "dev.tsv", "0"),
        "mnli": ("index\tsentence1\tsentence2\tgold_label\n0\tA.\tB.\tneutral\n", "dev_matched.tsv", "neutral"),
        "mnli-mm": ("index\tsentence1\tsentence2\tgold_label\n0\tA.\tB.\tentailment\n", "dev_mismatched.tsv",
                    "entailment"),
        "qnli": ("index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tentailment\n", "dev.tsv", "entailment"),
        "rte": ("index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tnot_entailment\n", "dev.tsv", "not_entailment"),
        "wnli": ("index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\t1\n", "dev.tsv", "1"),
    }
    for name, (text, fname, label) in layouts.items():
        t = glue.get_task(name)
        assert t.dev_file == fname
        p = tmp_path / name / fname
        p.parent.mkdir()
        p.write_text(text)
        (ex,) = glue.read_examples(t, p)
        assert ex.label == label, name
        assert (ex.text_b is None) == (name in ("cola", "sst-2")), name
    assert glue.get_task("sts-b").num_labels == 1 and glue.get_task("mnli").num_labels == 3


def test_test_files_without_labels(tmp_path):
    p = tmp_path / "test.tsv"
    p.write_text("index\tsentence\n0\tfine\n1\tbad\n")
    ex = glue.read_examples(glue.get_task("sst-2"), p, "test", with_labels=False)
    assert [e.guid for e in ex] == ["test-0", "test-1"] and ex[0].label is None


def test_bad_input_one_line(tmp_path, real_data):
    with pytest.raises(ConfigError, match="unknown GLUE task.*choose from cola"):
        glue.get_task("squad")
    with pytest.raises(DataError, match="wrong columns for GLUE task rte.*need sentence1, sentence2, label"):
        glue.read_examples(glue.get_task("rte"), real_data("glue/samples/SST-2_dev.tsv"))
    bad = tmp_path / "dev.tsv"
    shutil.copy(real_data("glue/samples/SST-2_dev.tsv"), bad)
    with open(bad, "a") as fh:
        fh.write("great movie\tpositive\n")
    with pytest.raises(DataError, match=r"line 7: label 'positive' is not one of 0, 1"):
        glue.read_examples(glue.get_task("sst-2"), bad)
    short = tmp_path / "short.tsv"
    short.write_text("index\tsentence1\tsentence2\tlabel\n0\tonly one column\n")
    with pytest.raises(DataError, match="line 2: 2 columns"):
        glue.read_examples(glue.get_task("rte"), short)
    with pytest.raises(DataError, match="no such file"):
        glue.read_examples(glue.get_task("rte"), tmp_path / "missing.tsv")
