"""The fine-tuning driver: loader sharding (N ranks x b == 1 rank x N*b), step counts,
dynamic padding, latency percentiles, strict task-model loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertforge.config import ModelConfig
from bertforge.errors import CheckpointError, ConfigError
from bertforge.model.bert import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
)
from bertforge.model.convert import load_task_model, save_bertforge
from bertforge.train import finetune
from tests.conftest import REPO


def _arrays(n=37, L=16):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, L + 1, n)
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int8)
    return {"input_ids": np.arange(n)[:, None].repeat(L, 1).astype(np.int32) * mask,
            "attention_mask": mask, "labels": np.arange(n)}


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_union_is_the_single_process_batch(world):
    a = _arrays()
    one = finetune.BatchLoader(a, 4 * world, seed=5)
    ranks = [finetune.BatchLoader(a, 4, seed=5, rank=r, world_size=world) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1  # every rank takes the same number of steps
    for epoch in (0, 1):
        single = [b["labels"] for b in one.epoch(epoch)]
        sharded = list(zip(*[[b["labels"] for b in r.epoch(epoch)] for r in ranks], strict=True))
        n_full = len(a["labels"]) // (4 * world)
        for s, parts in list(zip(single, sharded, strict=False))[:n_full]:
            assert sorted(s.tolist()) == sorted(np.concatenate(parts).tolist())
    # a new permutation every epoch, the same for the same seed
    e0 = np.concatenate([b["labels"] for b in one.epoch(0)])
    e1 = np.concatenate([b["labels"] for b in one.epoch(1)])
    assert sorted(e0.tolist()) == list(range(37)) and not np.array_equal(e0, e1)
    again = finetune.BatchLoader(a, 4 * world, seed=5).epoch(0)
    assert np.array_equal(e0, np.concatenate([b["labels"] for b in again]))


def test_total_steps_and_config_checks():
    cfg = finetune.FinetuneConfig(train_batch_size=32, num_train_epochs=2.5)
    assert cfg.total_steps(1000) == 80  # ceil(1000/32) = 32 steps per epoch, x 2.5
    assert cfg.total_steps(1000, world_size=4) == 20
    assert finetune.FinetuneConfig(max_steps=7).total_steps(10**6) == 7
    assert finetune.FinetuneConfig(train_batch_size=32, gradient_accumulation_steps=4).micro_batch_size() == 8
    for bad in ({"learning_rate": 0}, {"gradient_accumulation_steps": 0}, {"warmup_proportion": 1.0},
                {"train_batch_size": 2, "gradient_accumulation_steps": 4}, {"num_train_epochs": 0}):
        with pytest.raises(ConfigError):
            finetune.FinetuneConfig(**bad)


def test_trim_cuts_to_longest_sequence():
    a = _arrays()
    b = finetune.trim_batch({k: v[:5] for k, v in a.items()})
    w = int(a["attention_mask"][:5].sum(1).max())
    assert b["input_ids"].shape == (5, w) and b["labels"].shape == (5,)
    parts = finetune._split({k: v[:10] for k, v in a.items()}, 3)
    assert [len(p["labels"]) for p in parts] == [3, 3, 4]


def test_latency_stats_follow_nvidia():
    lat = [float(x) for x in range(1, 101)]
    s = finetune.latency_stats(lat[::-1], batch_size=8)
    assert s["infer:latency(ms):50%"] == 50 and s["infer:latency(ms):99%"] == 99
    assert s["infer:latency(ms):100%"] == 100 and s["infer:latency(ms):sum"] == 5050
    assert s["infer:throughput(samples/s):avg"] == pytest.approx(8 / 0.0505)


def test_dynamic_padding_does_not_change_predictions():
    cfg = ModelConfig.from_json_file(REPO / "bert_configs/tiny.json")
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg, num_labels=3).eval()
    a = _arrays(n=9, L=24)
    a["input_ids"] = (a["input_ids"] % 100 + 1000) * a["attention_mask"]
    a["token_type_ids"] = np.zeros_like(a["attention_mask"])
    inputs = {k: a[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    prec = finetune.Precision.from_flags(False, False, "cpu")

    def fwd(m, b):
        return m(b["input_ids"], b["token_type_ids"], b["attention_mask"])

    (trimmed,), lat = finetune.predict(model, inputs, 4, fwd, precision=prec)
    with torch.no_grad():
        full = model(*(torch.from_numpy(inputs[k]).long() for k in inputs)).numpy()
    assert np.allclose(trimmed, full, atol=1e-5) and len(lat) == 3


def test_load_task_model_is_strict(tmp_path):
    cfg = ModelConfig.from_json_file(REPO / "bert_configs/tiny.json")
    save_bertforge(BertForPreTraining(cfg), tmp_path / "pre.pt")
    model, report = load_task_model(tmp_path / "pre.pt", BertForQuestionAnswering, head=("qa_outputs.*",),
                                             training=True, drop=("bert.pooler.*",))
    assert "qa_outputs.weight" in report.missing_allowed and "cls.predictions.bias" in report.unexpected_allowed
    with pytest.raises(CheckpointError, match="no fine-tuned BertForQuestionAnswering head"):
        load_task_model(tmp_path / "pre.pt", BertForQuestionAnswering, head=("qa_outputs.*",),
                                 training=False, drop=("bert.pooler.*",))
    # an encoder without its embeddings is not silently accepted
    sd = {k: v for k, v in BertForPreTraining(cfg).state_dict().items() if "word_embeddings" not in k}
    torch.save({"model": sd, "config": cfg.to_dict()}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="missing keys: bert.embeddings.word_embeddings.weight"):
        load_task_model(tmp_path / "broken.pt", BertForSequenceClassification, head=("classifier.*",),
                                 training=True, num_labels=2)
    with pytest.raises(ConfigError, match="no such file"):
        load_task_model(tmp_path / "nope.pt", BertForQuestionAnswering, head=("qa_outputs.*",),
                                 training=True)
