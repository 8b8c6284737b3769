"""bench/bench_loader.py runs end to end on small shards and writes its section."""

from __future__ import annotations

import json

from bertforge.data.hdf5 import write_hdf5_shard
from tests.conftest import bench_module
from tests.unit.test_data_loader import VOCAB, synthetic_set


def test_loader_bench_runs_and_reports_headroom(tmp_path):
    mod = bench_module("bench_loader")
    shards = tmp_path / "data" / "phase1_hdf5"
    shards.mkdir(parents=True)
    for s in range(4):
        write_hdf5_shard(shards / f"training_shard_{s}.hdf5", synthetic_set(100 * s, 200, L=32, P=5))
    (tmp_path / "data" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    md, js = tmp_path / "b.md", tmp_path / "r.json"
    r = mod.main(["--data", str(tmp_path / "data"), "--config", "tiny", "--step_batch", "2",
                  "--step_repeats", "1", "--batches", "5", "--write", str(md), "--json", str(js)])
    assert [(c["world"], c["masking"]) for c in r["loader"]] == [(1, "static"), (8, "static"), (8, "dynamic")]
    assert all(c["batches_per_s"] > 0 and c["headroom"] > 0 for c in r["loader"])
    assert r["loader"][1]["lanes"] == 4 and r["step_s"] > 0
    assert all(0 < c["batches"] <= 5 for c in r["loader"])
    text = md.read_text()
    assert "<!-- bench_loader:start -->" in text and "headroom" in text
    assert "Command: `python bench/bench_loader.py --data" in text and f"Commit `{r['commit']}`" in text
    assert json.loads(js.read_text())["commit"] == r["commit"]
