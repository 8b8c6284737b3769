"""GLUE: TSV readers for every task, sequence-pair features and the standard metrics.

Tasks (``--task_name``, case-insensitive; NVIDIA's names, HF's spellings accepted too):

=========  ============================  ==========================  ================
task       dev file                      text columns                metric
=========  ============================  ==========================  ================
cola       dev.tsv (no header)           sentence (4th column)       mcc
sst-2      dev.tsv                       sentence                    acc
mrpc       dev.tsv                       #1 String, #2 String        acc, f1
sts-b      dev.tsv                       sentence1, sentence2        pearson, spearmanr
qqp        dev.tsv                       question1, question2        acc, f1
mnli       dev_matched.tsv               sentence1, sentence2        acc
mnli-mm    dev_mismatched.tsv            sentence1, sentence2        acc
qnli       dev.tsv                       question, sentence          acc
rte        dev.tsv                       sentence1, sentence2        acc
wnli       dev.tsv                       sentence1, sentence2        acc
=========  ============================  ==========================  ================

Columns are found by their header names, so a file with the wrong layout fails with
one line naming the file and the columns it lacks. Files are read as GLUE writes them:
tab-separated, no quoting. QQP also reads the header-less ``label, q1, q2, id`` layout of
the Quora question-pairs release. Metrics are computed with numpy only (no sklearn).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertforge.data.tokenization import special_ids
from bertforge.errors import ConfigError, DataError

__all__ = [
    "GlueExample",
    "GlueTask",
    "TASKS",
    "get_task",
    "read_examples",
    "glue_features",
    "compute_metrics",
    "matthews_corrcoef",
    "accuracy",
    "f1_binary",
    "pearson",
    "spearman",
]


@dataclass
class GlueExample:
    """One row: ``text_b`` is None for single-sentence tasks; ``label`` None when unlabeled."""

    guid: str
    text_a: str
    text_b: str | None
    label: str | None


@dataclass(frozen=True)
class GlueTask:
    """How to read and score one GLUE task.

    ``labels`` is None for regression (STS-B). ``text_a``/``text_b``/``label`` are header
    names; header-less layouts (CoLA) give column indices in ``positional``.
    """

    name: str
    labels: tuple[str, ...] | None
    text_a: str
    text_b: str | None
    label: str
    dev_file: str = "dev.tsv"
    metric: str = "acc"
    positional: tuple[int, int | None, int] | None = None  # (text_a, text_b, label) w/o header
    min_columns: int = 0

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


_NLI = ("contradiction", "entailment", "neutral")
TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask("cola", ("0", "1"), "sentence", None, "label", metric="mcc",
                 positional=(3, None, 1), min_columns=4),
        GlueTask("sst-2", ("0", "1"), "sentence", None, "label"),
        GlueTask("mrpc", ("0", "1"), "#1 String", "#2 String", "Quality", metric="acc_and_f1"),
        GlueTask("sts-b", None, "sentence1", "sentence2", "score", metric="pearson_and_spearman"),
        GlueTask("qqp", ("0", "1"), "question1", "question2", "is_duplicate", metric="acc_and_f1",
                 positional=(1, 2, 0), min_columns=4),
        GlueTask("mnli", _NLI, "sentence1", "sentence2", "gold_label", dev_file="dev_matched.tsv"),
        GlueTask("mnli-mm", _NLI, "sentence1", "sentence2", "gold_label", dev_file="dev_mismatched.tsv"),
        GlueTask("qnli", ("entailment", "not_entailment"), "question", "sentence", "label"),
        GlueTask("rte", ("entailment", "not_entailment"), "sentence1", "sentence2", "label"),
        GlueTask("wnli", ("0", "1"), "sentence1", "sentence2", "label"),
    )
}
_ALIASES = {"sst2": "sst-2", "stsb": "sts-b", "sts": "sts-b", "mnli-m": "mnli", "mnli_m": "mnli",
            "mnli_mm": "mnli-mm", "mnlimm": "mnli-mm"}


def get_task(name: str) -> GlueTask:
    """The task called ``name``; ConfigError listing the known tasks otherwise."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ConfigError(f"--task_name {name!r}: unknown GLUE task (choose from {', '.join(TASKS)})")
    return TASKS[key]


# --------------------------------------------------------------------------- reading


def _read_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return [row for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read as a TSV file ({e})") from None


def read_examples(task: GlueTask, path: str | os.PathLike, set_type: str = "dev",
                  *, with_labels: bool = True) -> list[GlueExample]:
    """Examples of ``task`` from a GLUE TSV file.

    ``with_labels=False`` reads test files (no label column); otherwise every row needs
    a label of the task (a float for STS-B). Errors name the file and line.
    """
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: empty file")
    header = [c.strip() for c in rows[0]]
    want = [task.text_a] + ([task.text_b] if task.text_b else []) + ([task.label] if with_labels else [])
    if all(w in header for w in want):
        cols = (header.index(task.text_a), header.index(task.text_b) if task.text_b else None,
                header.index(task.label) if with_labels else None)
        # GLUE's test files name the id column "index"/"id"; guids come from it when present.
        id_col = next((header.index(h) for h in ("index", "id", "pairID") if h in header), None)
        body, first_line = rows[1:], 2
    elif task.positional is not None and len(rows[0]) >= task.min_columns and not _looks_like_header(
            task, rows[0], with_labels):
        a, b, lab = task.positional
        cols = (a, b, lab if with_labels else None)
        id_col, body, first_line = None, rows, 1
    else:
        raise DataError(f"{path}: wrong columns for GLUE task {task.name} (need {', '.join(want)}; "
                        f"header has {', '.join(header[:12]) or 'nothing'})")
    need = max(c for c in cols if c is not None) + 1
    examples = []
    seen: dict[str, int] = {}
    for line_no, row in enumerate(body, start=first_line):
        if len(row) < need:
            raise DataError(f"{path}: line {line_no}: {len(row)} columns, task {task.name} needs {need}")
        guid = f"{set_type}-{row[id_col] if id_col is not None else line_no - first_line}"
        if guid in seen:  # predictions.json is keyed by these ids
            raise DataError(f"{path}: line {line_no}: id {guid!r} repeats line {seen[guid]}")
        seen[guid] = line_no
        label = row[cols[2]].strip() if cols[2] is not None else None
        if label is not None:
            if task.is_regression:
                try:
                    float(label)
                except ValueError:
                    raise DataError(f"{path}: line {line_no}: score {label!r} is not a number") from None
            elif label not in task.labels:
                raise DataError(f"{path}: line {line_no}: label {label!r} is not one of "
                                f"{', '.join(task.labels)} (task {task.name})")
        text_b = row[cols[1]] if cols[1] is not None else None
        examples.append(GlueExample(guid, row[cols[0]], text_b, label))
    return examples


def _looks_like_header(task: GlueTask, row: list[str], with_labels: bool) -> bool:
    """A first row of a header-less layout has a valid label in the label column."""
    if not with_labels:
        return False
    return row[task.positional[2]].strip() not in (task.labels or ())


# --------------------------------------------------------------------------- features


def glue_features(examples: Sequence[GlueExample], task: GlueTask, tokenizer, max_seq_length: int = 128,
                  *, with_labels: bool = True) -> dict[str, np.ndarray]:
    """``[CLS] a [SEP] (b [SEP])`` for every example.

    Returns input_ids int32 [N, L], token_type_ids int8 [N, L], attention_mask int8 [N, L]
    and, with labels, ``labels`` [N] (int64 class index, or float32 score for STS-B).
    Pairs longer than L - 3 tokens lose tokens from the end of the longer side first.
    """
    if max_seq_length < 4:
        raise ConfigError(f"--max_seq_length must be >= 4, got {max_seq_length}")
    cls_id, sep_id, pad_id = special_ids(tokenizer)
    enc_a = tokenizer.encode_batch([e.text_a for e in examples], add_special_tokens=False)
    has_b = [e.text_b is not None for e in examples]
    enc_b = tokenizer.encode_batch([e.text_b for e in examples if e.text_b is not None],
                                   add_special_tokens=False)
    it_b = iter(enc_b)
    n, L = len(examples), max_seq_length
    input_ids = np.full((n, L), pad_id, dtype=np.int32)
    token_type_ids = np.zeros((n, L), dtype=np.int8)
    attention_mask = np.zeros((n, L), dtype=np.int8)
    for i, (a, hb) in enumerate(zip(enc_a, has_b, strict=True)):
        ta = list(a.ids)
        tb = list(next(it_b).ids) if hb else None
        if tb is not None:
            while len(ta) + len(tb) > L - 3:  # Google's _truncate_seq_pair
                (ta if len(ta) > len(tb) else tb).pop()
            ids = [cls_id, *ta, sep_id, *tb, sep_id]
            types = [0] * (len(ta) + 2) + [1] * (len(tb) + 1)
        else:
            ta = ta[:L - 2]
            ids = [cls_id, *ta, sep_id]
            types = [0] * len(ids)
        input_ids[i, :len(ids)] = ids
        token_type_ids[i, :len(ids)] = types
        attention_mask[i, :len(ids)] = 1
    out = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
    if with_labels:
        if task.is_regression:
            out["labels"] = np.asarray([float(e.label) for e in examples], dtype=np.float32)
        else:
            index = {lab: i for i, lab in enumerate(task.labels)}
            out["labels"] = np.asarray([index[e.label] for e in examples], dtype=np.int64)
    return out


# --------------------------------------------------------------------------- metrics


def accuracy(preds, labels) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float((preds == labels).mean()) if len(labels) else 0.0


def f1_binary(preds, labels, positive: int = 1) -> float:
    """F1 of the positive class (sklearn's f1_score default); 0 when undefined."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    tp = float(np.sum((preds == positive) & (labels == positive)))
    fp = float(np.sum((preds == positive) & (labels != positive)))
    fn = float(np.sum((preds != positive) & (labels == positive)))
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def matthews_corrcoef(preds, labels) -> float:
    """Matthews correlation of two label vectors (multi-class form; 0 when undefined)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = np.union1d(preds, labels)
    if len(classes) == 0:
        return 0.0
    p = np.searchsorted(classes, preds)
    t = np.searchsorted(classes, labels)
    k = len(classes)
    conf = np.zeros((k, k), dtype=np.float64)
    np.add.at(conf, (t, p), 1)
    t_sum, p_sum = conf.sum(axis=1), conf.sum(axis=0)
    n = conf.sum()
    cov_ytyp = np.trace(conf) * n - t_sum @ p_sum
    cov_ypyp = n * n - p_sum @ p_sum
    cov_ytyt = n * n - t_sum @ t_sum
    denom = np.sqrt(cov_ytyt * cov_ypyp)
    return float(cov_ytyp / denom) if denom else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xm, ym = x - x.mean(), y - y.mean()
    denom = np.sqrt((xm * xm).sum() * (ym * ym).sum())
    return float((xm * ym).sum() / denom) if denom else float("nan")


def _rank(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata 'average')."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # boundaries of runs of equal values
    new_run = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    run_id = np.cumsum(new_run) - 1
    starts = np.nonzero(new_run)[0]
    ends = np.r_[starts[1:], len(a)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return pearson(_rank(x), _rank(y))


def compute_metrics(task: GlueTask, preds, labels) -> dict[str, float]:
    """NVIDIA's/HF's metric dict for ``task``.

    ``preds``/``labels`` are class indices, or float scores for STS-B.
    """
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if task.metric == "mcc":
        return {"mcc": matthews_corrcoef(preds, labels)}
    if task.metric == "acc_and_f1":
        acc, f1 = accuracy(preds, labels), f1_binary(preds, labels)
        return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    if task.metric == "pearson_and_spearman":
        p, s = pearson(preds, labels), spearman(preds, labels)
        return {"pearson": p, "spearmanr": s, "corr": (p + s) / 2}
    return {"acc": accuracy(preds, labels)}
