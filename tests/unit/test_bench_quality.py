"""bench/bench_quality.py and bench/bench_downstream.py: the pieces their figures rest on (the
snapshot at each wall-clock point, time to target, the masks undone for Hugging Face's collator,
one evaluator for both sides, the SQuAD split), and their bad-input errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO, bench_module

sys.path.insert(0, str(REPO / "tests/integration"))
from pretrain_fixtures import write_config, write_nvidia_hdf5  # noqa: E402

bq = bench_module("bench_quality")
bd = bench_module("bench_downstream")


def test_each_point_gets_the_last_state_reached_by_then():
    points = bq.eval_points(100, 4)
    assert points == [25, 50, 75, 100]
    # checkpoints written at 10, 24.9, 25, 61, 130 s
    assert bq.assign([10, 24.9, 25, 61, 130], points) == [2, 2, 3, 3]
    assert bq.assign([30, 40], points) == [None, 1, 1, 1]
    assert bq.assign([], points) == [None] * 4


def test_time_to_target_is_the_first_point_at_or_above_it():
    points = [1, 2, 3, 4]
    assert bq.first_reach([0.1, 0.3, 0.2, 0.5], points, 0.3) == 2
    assert bq.first_reach([None, 0.1, 0.2, 0.25], points, 0.3) is None
    runs = [{"side": "bertforge", "evals": [None, {"mlm_accuracy": 0.1}, {"mlm_accuracy": 0.2}, {"mlm_accuracy": 0.3}]},
            {"side": "hf", "lr": 1e-4, "evals": [{"mlm_accuracy": a} for a in (0.0, 0.05, 0.1, 0.1)]},
            {"side": "hf", "lr": 5e-4, "evals": [{"mlm_accuracy": a} for a in (0.0, 0.1, 0.15, 0.2)]}]
    s = bq.summarize(runs, points)
    assert s["best_hf_lr"] == 5e-4 and s["target_accuracy"] == 0.2
    assert s["hf_time_to_target"] == 4 and s["bertforge_time_to_target"] == 3 and s["ratio"] == 0.75


def test_step_timing_and_steps_for_budget():
    ends = [12.0 + 2.0 * k for k in range(10)]  # 10 s start-up, then 2 s per step
    startup, per_step = bq.step_timing(ends)
    assert per_step == pytest.approx(2.0) and startup == pytest.approx(10.0)
    assert bq.steps_for_budget(startup, per_step, 110, 1.0) == 50
    assert bq.steps_for_budget(startup, per_step, 110, 0.9) == 45


def test_original_tokens_undo_the_static_masks(tmp_path):
    shard = write_nvidia_hdf5(tmp_path / "s.hdf5", 20, seq_len=32, max_pred=5)
    a = bq.read_shards(tmp_path)
    ids = bq.original_tokens(a)
    for i in range(20):  # the fixture's sequences count up by one between [CLS] and [SEP]
        n = int(a["input_mask"][i].sum())
        body = ids[i, 1:n - 1]
        assert ids[i, 0] == 2 and ids[i, n - 1] == 3 and (np.diff(body) % 246 == 1).all(), ids[i, :n]
        assert 4 not in body  # no [MASK] left
    assert (ids[a["input_mask"] == 0] == 0).all()
    assert bq.read_shards(tmp_path, max_rows=7)["input_ids"].shape == (7, 32)
    assert shard.exists()


def test_one_evaluator_for_both_sides_matches_bertforge_own_model(tmp_path):
    """The bench evaluates every snapshot in transformers' BertForPreTraining; on a bertforge
    checkpoint it gives the numbers bertforge's own model gives on the same held-out rows."""
    from bertforge.config import ModelConfig
    from bertforge.model.bert import BertForPreTraining

    cfg = write_config(tmp_path / "c.json", max_position_embeddings=64)
    write_nvidia_hdf5(tmp_path / "h.hdf5", 48, seq_len=32, max_pred=5)
    ev = bq.read_shards(tmp_path)
    torch.manual_seed(0)
    ours = BertForPreTraining(ModelConfig.from_json_file(cfg)).eval()
    labels = ev["masked_lm_ids"][ev["masked_lm_positions"] > 0]
    with torch.no_grad():  # favour the most frequent target, so that some predictions are right
        ours.cls.predictions.bias[np.bincount(labels).argmax()] = 5.0
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": ours.state_dict()}, ckpt)
    hf = bq.hf_model(cfg)
    bq.load_weights(hf, bq.snapshot_state(ckpt), str(ckpt))
    got = bq.evaluate(hf, ev, batch=16)

    correct = masked = nsp_ok = 0
    loss = 0.0
    with torch.no_grad():
        for i in range(48):
            ids = torch.from_numpy(ev["input_ids"][i:i + 1]).long()
            n = int(ev["input_mask"][i].sum())
            scores, nsp = ours(ids[:, :n], torch.from_numpy(ev["segment_ids"][i:i + 1, :n]).long(),
                               torch.ones(1, n, dtype=torch.long), masked_lm_labels=None)
            pos = ev["masked_lm_positions"][i]
            pos = pos[pos > 0]
            target = torch.from_numpy(ev["masked_lm_ids"][i][: len(pos)]).long()
            s = scores.view(n, -1)[torch.from_numpy(pos).long()]
            correct += int((s.argmax(-1) == target).sum())
            loss += float(torch.nn.functional.cross_entropy(s, target, reduction="sum"))
            masked += len(pos)
            nsp_ok += int(nsp.argmax(-1).item() == int(ev["next_sentence_labels"][i]))
    assert got["masked_tokens"] == masked and got["sequences"] == 48
    assert got["mlm_accuracy"] == pytest.approx(correct / masked, abs=1e-9)
    assert got["mlm_loss"] == pytest.approx(loss / masked, rel=1e-4)
    assert got["nsp_accuracy"] == pytest.approx(nsp_ok / 48, abs=1e-9)
    assert 0 < got["mlm_accuracy"] < 1  # not a degenerate comparison


def test_weights_that_do_not_fit_are_one_line_errors(tmp_path):
    cfg = write_config(tmp_path / "c.json", max_position_embeddings=64)
    hf = bq.hf_model(cfg)
    with pytest.raises(SystemExit, match=r"^error: x.pt: weights do not fit the model"):
        bq.load_weights(hf, {"bert.nope": torch.zeros(1)}, "x.pt")


@pytest.mark.parametrize("bench,argv,message", [
    ("q", [], "--data is required"),
    ("q", ["--data", "/nonexistent"], "no phase1_hdf5/"),
    ("q", ["--data", "DATA", "--vocab_file", "/none.txt"], "--vocab_file /none.txt: no such file"),
    ("q", ["--data", "DATA", "--vocab_file", "VOCAB", "--hf_lrs", "2e-5,x"], "--hf_lrs must be comma-separated"),
    ("d", ["--data", "DATA", "--budgets", "0.5"], "--budgets"),
    ("d", ["--data", "DATA", "--seeds", "a"], "--seeds must be comma-separated integers"),
    ("d", ["--data", "DATA", "--tasks", "mnli"], "--tasks must name"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, real_data, bench, argv, message):
    for sub in ("phase1_hdf5", "phase1_holdout_hdf5"):
        (tmp_path / sub).mkdir()
    vocab = str(real_data("vocab/bert-base-uncased-vocab.txt"))
    argv = [str(tmp_path) if a == "DATA" else vocab if a == "VOCAB" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        (bq if bench == "q" else bd).main(argv + ["--out", str(tmp_path / "out")])
    assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)


def test_squad_split_holds_out_whole_paragraphs(tmp_path, real_data):
    root = real_data("squad/dev-v1.1-sample.json").parents[1]
    train, dev, n_train, n_dev = bd.squad_files(root, tmp_path)
    t, d = json.loads(train.read_text()), json.loads(dev.read_text())
    contexts = lambda x: {p["context"] for a in x["data"] for p in a["paragraphs"]}  # noqa: E731
    assert not contexts(t) & contexts(d)
    total = sum(len(p["qas"]) for a in json.loads(real_data("squad/dev-v1.1-sample.json").read_text())["data"]
                for p in a["paragraphs"])
    assert n_train + n_dev == total and n_train > 2 * n_dev * 0.9


def test_downstream_budgets_keep_the_right_checkpoints():
    assert bd.kept_steps(800, [0.125, 0.25, 0.5, 1]) == [100, 200, 400, 800]
    assert bd.kept_steps(10, [0.3, 1]) == [3, 10]
    s = bd.summarize([{"task": "sst-2", "init": "random", "metrics": {"acc": 70.0}},
                      {"task": "sst-2", "init": "random", "metrics": {"acc": 72.0}},
                      {"task": "sst-2", "init": "pretrained_8", "metrics": {"acc": 75.0}},
                      {"task": "sst-2", "init": "pretrained_8", "metrics": {"acc": 77.0}}],
                     [{"name": "random", "kind": "random"}, {"name": "pretrained_8", "kind": "pretrained"}])
    assert s["gain"] == {"sst-2:acc": pytest.approx(5.0)}
    assert s["table"]["random"]["sst-2:acc"]["std"] == pytest.approx(2 ** 0.5)
