"""bench/bench_train.py runs end to end (tiny batch) and refuses impossible device settings."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "bench" / "bench_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_small_case_runs_and_reports_paired_ratios(tmp_path):
    bt = _bench()
    out = tmp_path / "r.json"
    md = tmp_path / "b.md"
    bt.main(["--cases", "small-p1", "--batch_size", "2", "--repeats", "2", "--warmup", "0",
             "--distinct_batches", "2", "--no_memory", "--json", str(out), "--write", str(md)])
    r = json.loads(out.read_text())
    case = r["cases"][0]
    assert case["batch"] == 2 and r["device"] == "cpu" and r["precision"] == "fp32"
    for side in ("bertforge", "transformers"):
        assert len(case[side]["times"]) == 2 and all(t > 0 for t in case[side]["times"])
    ratios = [h / o for h, o in zip(case["transformers"]["times"], case["bertforge"]["times"], strict=True)]
    assert case["speedup_median"] == pytest.approx(sorted(ratios)[0] / 2 + sorted(ratios)[1] / 2)
    text = md.read_text()
    assert "<!-- bench_train:start -->" in text and "small-p1" in text and "precision fp32" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_a_clean_error():
    bt = _bench()
    with pytest.raises(SystemExit, match="no CUDA device"):
        bt.main(["--device", "cuda", "--cases", "small-p1"])
    with pytest.raises(SystemExit, match="--precision fp16 needs --device cuda"):
        bt.main(["--precision", "fp16", "--cases", "small-p1"])


def test_useful_flops_credit_only_what_the_heads_read():
    """One sequence, every position real: the last layer is credited with K/V for all tokens
    and the rest only for [CLS] + the masked tokens."""
    bt = _bench()
    cfg = bt.model_config("small")
    b = bt.synthetic_batches(cfg, 1, 128, 20, 1)[0]
    counted = bt.flops_per_step(cfg, b)
    H, inter = cfg.hidden_size, cfg.intermediate_size
    m = int((b["masked_lm_labels"] != -1).sum())
    skipped = 3 * (2 * (128 - m - 1) * (2 * H * H + 2 * H * inter) + 4 * H * 128 * (128 - m - 1))
    per_layer = 3 * (2 * 128 * (4 * H * H + 2 * H * inter) + 4 * 128 * 128 * H)
    head = 3 * (2 * m * (H * H + H * cfg.padded_vocab_size) + 2 * (H * H + 2 * H))
    assert counted == pytest.approx(cfg.num_hidden_layers * per_layer - skipped + head)
