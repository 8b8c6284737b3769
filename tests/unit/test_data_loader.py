"""PretrainingDataLoader: resume exactness, rank split, bins, LDDL Parquet, bad shards."""

from __future__ import annotations

import io
import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bertforge.data.hdf5 import write_hdf5_shard
from bertforge.data.instances import InstanceSet
from bertforge.data.loader import LoaderStateMismatch, PretrainingDataLoader, discover_shards
from bertforge.errors import DataError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(995)]
CLS, SEP, MASK = 2, 3, 4


def synthetic_set(ids0: int, n: int, L: int = 32, P: int = 5, seed: int = 0) -> InstanceSet:
    """n instances; token 1 of each holds a unique sample id (ids0 + i) so rows are traceable."""
    rng = np.random.default_rng(seed)
    nt = rng.integers(8, L + 1, size=n).astype(np.int32)
    la = (nt - 3) // 2
    ids = np.zeros((n, L), np.int32)
    pos = np.zeros((n, P), np.int32)
    mid = np.zeros((n, P), np.int32)
    for i in range(n):
        row = rng.integers(5, 1000, size=nt[i]).astype(np.int32)
        row[0], row[la[i] + 1], row[nt[i] - 1] = CLS, SEP, SEP
        row[1] = 5 + ids0 + i  # the sample id
        cand = [j for j in range(2, nt[i] - 1) if j != la[i] + 1]
        p = np.sort(rng.choice(cand, size=3, replace=False))
        pos[i, :3], mid[i, :3] = p, row[p]
        row[p] = MASK
        ids[i, : nt[i]] = row
    return InstanceSet(ids, la, nt, pos, mid, rng.integers(0, 2, n).astype(np.int8))


@pytest.fixture
def h5dir(tmp_path):
    d = tmp_path / "h5"
    d.mkdir()
    for s in range(4):
        write_hdf5_shard(d / f"training_shard_{s:05d}.hdf5", synthetic_set(100 * s, 50 - s % 2))
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return d


def sample_ids(batch) -> list[int]:
    tok = batch["input_ids"][:, 1]
    lab = batch["masked_lm_labels"][:, 1]  # dynamic masking may have masked the id itself
    return (torch.where(lab != -1, lab, tok) - 5).tolist()


def take(loader, k):
    return list(itertools.islice(iter(loader), k))


def same(a, b):
    return all(all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True))


def test_discover_and_batch_layout(h5dir):
    files = discover_shards(h5dir)
    assert [f.rsplit("/", 1)[1] for f in files] == [f"training_shard_0000{i}.hdf5" for i in range(4)]
    ld = PretrainingDataLoader(h5dir, batch_size=8, pad_to_multiple=8)
    assert ld.samples_per_epoch == 192  # 4 x 49 (smallest), cut to whole batches
    b = take(ld, 1)[0]
    B, Lp = b["input_ids"].shape
    assert B == 8 and Lp % 8 == 0 and Lp <= 32
    assert all(t.dtype == torch.long for t in b.values())
    n = b["attention_mask"].sum(1)
    assert Lp == min(32, -(-int(n.max()) // 8) * 8)
    lab = b["masked_lm_labels"]
    assert ((lab != -1).sum(1) == 3).all()
    assert (b["input_ids"][lab != -1] == MASK).all()
    with pytest.raises(DataError, match="no shards"):
        discover_shards(h5dir.parent)


@pytest.mark.parametrize("masking, workers", [("static", 0), ("dynamic", 0), ("static", 1)])
@pytest.mark.exact_resume
def test_resume_is_exact(h5dir, masking, workers):
    kw = dict(batch_size=7, vocab_file=str(h5dir.parent / "vocab.txt"), masking=masking,
              seed=3)
    ref = take(PretrainingDataLoader(h5dir, **kw), 70)  # > 1 epoch (27 batches each)
    for k in (0, 5, 27, 40):
        ld = PretrainingDataLoader(h5dir, num_workers=workers, **kw)
        head = take(ld, k)
        state = json.loads(json.dumps(ld.state_dict()))
        fresh = PretrainingDataLoader(h5dir, num_workers=workers, **kw)
        fresh.load_state_dict(state)
        assert same(head + take(fresh, 70 - k), ref), k


def test_epochs_cover_every_sample_once_and_reshuffle(h5dir):
    ld = PretrainingDataLoader(h5dir, batch_size=8, seed=1)
    per_epoch = ld.samples_per_epoch // 8
    batches = take(ld, 2 * per_epoch)
    e0 = [i for b in batches[:per_epoch] for i in sample_ids(b)]
    e1 = [i for b in batches[per_epoch:] for i in sample_ids(b)]
    assert len(set(e0)) == len(e0) and len(set(e1)) == len(e1)
    assert e0 != e1


@pytest.mark.parametrize("world, n_files", [(2, 4), (3, 4), (4, 2)])
def test_ranks_are_disjoint(tmp_path, world, n_files):
    d = tmp_path / "d"
    d.mkdir()
    for s in range(n_files):
        write_hdf5_shard(d / f"training_shard_{s}.hdf5", synthetic_set(100 * s, 40))
    seen = []
    steps = set()
    for r in range(world):
        ld = PretrainingDataLoader(d, batch_size=4, rank=r, world_size=world, seed=5)
        steps.add(ld.samples_per_epoch)
        ids = [i for b in take(ld, ld.samples_per_epoch // 4) for i in sample_ids(b)]
        assert len(set(ids)) == len(ids)
        seen.append(set(ids))
    assert len(steps) == 1  # every rank makes the same number of steps
    for a, b in itertools.combinations(seen, 2):
        assert not a & b


def lddl_table(rows, binned_bin=None):
    """A table exactly as LDDL's writer makes it (its schema, np.save'd positions)."""
    cols = {"A": [], "B": [], "is_random_next": [], "num_tokens": [],
            "masked_lm_positions": [], "masked_lm_labels": []}
    for a, b, rnd, pos, labels in rows:
        cols["A"].append(" ".join(a))
        cols["B"].append(" ".join(b))
        cols["is_random_next"].append(rnd)
        cols["num_tokens"].append(len(a) + len(b) + 3)
        buf = io.BytesIO()
        np.save(buf, np.asarray(pos, dtype=np.uint16))
        cols["masked_lm_positions"].append(buf.getvalue())
        cols["masked_lm_labels"].append(" ".join(labels))
    schema = [("A", pa.string()), ("B", pa.string()), ("is_random_next", pa.bool_()),
              ("num_tokens", pa.uint16()), ("masked_lm_positions", pa.binary()),
              ("masked_lm_labels", pa.string())]
    if binned_bin is not None:
        cols["bin_id"] = [binned_bin] * len(rows)
        schema.append(("bin_id", pa.int64()))
    return pa.table(cols, schema=pa.schema(schema))


def test_reads_lddl_parquet(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    d = tmp_path / "lddl"
    d.mkdir()
    rows = [(["w1", "[MASK]", "w3"], ["w4", "w5"], True, [2, 5], ["w2", "w9"]),
            (["w7"], ["[MASK]", "w8", "zzz"], False, [3], ["w6"])]
    for s in range(2):
        pq.write_table(lddl_table(rows), d / f"shard-{s}.parquet")
    (d / ".num_samples.json").write_text(json.dumps({"shard-0.parquet": 2, "shard-1.parquet": 2}))
    ld = PretrainingDataLoader(d, batch_size=2, vocab_file=str(vocab), pad_to_multiple=8)
    b = take(ld, 1)[0]
    v = {t: i for i, t in enumerate(VOCAB)}
    want = {
        (True,): [CLS, v["w1"], MASK, v["w3"], SEP, v["w4"], v["w5"], SEP],
        (False,): [CLS, v["w7"], SEP, MASK, v["w8"], 1, SEP, 0],  # zzz -> [UNK]
    }
    for i in range(2):
        key = (bool(b["next_sentence_labels"][i]),)
        assert b["input_ids"][i].tolist() == want[key]
        lab = b["masked_lm_labels"][i]
        if key == (True,):
            assert lab[2] == v["w2"] and lab[5] == v["w9"] and (lab != -1).sum() == 2
            assert b["token_type_ids"][i].tolist() == [0] * 5 + [1] * 3
        else:
            assert lab[3] == v["w6"] and (lab != -1).sum() == 1
            assert b["attention_mask"][i].tolist() == [1] * 7 + [0]
    # without masks in the file: dynamic masking with the vocab
    t = lddl_table(rows).drop(["masked_lm_positions", "masked_lm_labels"])
    pq.write_table(t, d / "shard-0.parquet")
    pq.write_table(t, d / "shard-1.parquet")
    b = take(PretrainingDataLoader(d, batch_size=2, vocab_file=str(vocab)), 1)[0]
    assert ((b["masked_lm_labels"] != -1).sum(1) >= 1).all()


@pytest.mark.exact_resume
def test_binned_parquet_one_bin_per_batch_and_resume(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    d = tmp_path / "bins"
    d.mkdir()
    rng = np.random.default_rng(0)
    for bin_id, length in ((0, 3), (1, 20)):
        for s in range(2):
            rows = [([f"w{rng.integers(5, 900)}" for _ in range(length)], ["w1"] * length,
                     bool(i % 2), [1], ["w2"]) for i in range(30 + 10 * bin_id)]
            pq.write_table(lddl_table(rows, bin_id), d / f"shard-{s}.parquet_{bin_id}")
    kw = dict(batch_size=4, vocab_file=str(vocab), seed=2, world_size=2)
    lens = set()
    for r in range(2):
        ld = PretrainingDataLoader(d, rank=r, **kw)
        for b in take(ld, 20):
            n = b["attention_mask"].sum(1)
            assert len(set(n.tolist())) == 1  # one bin per batch
            lens.add(int(n[0]))
    assert lens == {9, 43}
    # every rank draws the same bin at the same step
    seq = [[int(b["attention_mask"].sum(1)[0]) for b in take(PretrainingDataLoader(d, rank=r, **kw), 30)]
           for r in range(2)]
    assert seq[0] == seq[1]
    ref = take(PretrainingDataLoader(d, rank=1, **kw), 40)
    ld = PretrainingDataLoader(d, rank=1, **kw)
    head = take(ld, 13)
    again = PretrainingDataLoader(d, rank=1, **kw)
    again.load_state_dict(ld.state_dict())
    assert same(head + take(again, 27), ref)


def test_corrupt_shard_names_the_file(h5dir):
    bad = h5dir / "training_shard_00002.hdf5"
    bad.write_bytes(bad.read_bytes()[:3000])
    with pytest.raises(DataError, match="training_shard_00002.hdf5"):
        ld = PretrainingDataLoader(h5dir, batch_size=8)
        take(ld, 100)
    with pytest.raises(DataError, match="vocab_file"):
        PretrainingDataLoader(h5dir, batch_size=8, masking="dynamic")
    with pytest.raises(DataError, match="does not exist"):
        PretrainingDataLoader([str(h5dir / "nope.hdf5")], batch_size=8)


# -- one global order, however it is split (issue 20) ------------------------------------------
def _global_steps(d, world: int, accum: int, steps: int, **kw) -> list[dict[int, tuple]]:
    """For each optimizer step: {sample id: (input_ids, labels)} over every rank and micro-batch."""
    G = 16
    out = [dict() for _ in range(steps)]
    for r in range(world):
        ld = PretrainingDataLoader(d, batch_size=G // world // accum, accumulation_steps=accum,
                                   rank=r, world_size=world, **kw)
        batches = take(ld, steps * accum)
        for s in range(steps):
            for b in batches[s * accum:(s + 1) * accum]:
                for i, sid in enumerate(sample_ids(b)):
                    n = int(b["attention_mask"][i].sum())
                    assert sid not in out[s]
                    out[s][sid] = (tuple(b["input_ids"][i, :n].tolist()),
                                   tuple(b["masked_lm_labels"][i, :n].tolist()))
    return out


@pytest.mark.parametrize("masking", ["static", "dynamic"])
def test_every_global_batch_is_the_same_whatever_the_split(h5dir, masking):
    kw = dict(seed=4, masking=masking, vocab_file=str(h5dir.parent / "vocab.txt"))
    ref = _global_steps(h5dir, 1, 4, 30, **kw)  # > 1 epoch (24 steps of 16)
    assert all(len(s) == 16 for s in ref)
    for world, accum in ((2, 2), (4, 1), (8, 2), (2, 1)):
        assert _global_steps(h5dir, world, accum, 30, **kw) == ref, (world, accum)


def test_each_rank_reads_only_its_share_of_the_shards(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for s in range(8):
        write_hdf5_shard(d / f"training_shard_{s}.hdf5", synthetic_set(100 * s, 40))
    total = 8 * 40
    for world in (1, 2, 4, 8):
        for r in range(world):
            ld = PretrainingDataLoader(d, batch_size=16 // world, rank=r, world_size=world, seed=1)
            assert ld.lanes == 8
            take(ld, 40 // 2)  # one epoch: 40 rows per lane, 2 per step
            assert ld.rows_read == total // world, (world, r)
            assert len(ld._files) <= 8 // world  # one shard per lane in memory


def test_position_resumes_with_another_split(h5dir):
    kw = dict(seed=6, masking="dynamic", vocab_file=str(h5dir.parent / "vocab.txt"))
    ref = _global_steps(h5dir, 1, 1, 12, **kw)
    ld = PretrainingDataLoader(h5dir, batch_size=4, accumulation_steps=2, rank=1, world_size=2, **kw)
    take(ld, 5 * 2)
    state = json.loads(json.dumps(ld.state_dict()))
    assert state["version"] == 2 and state["step"] == 5 and state["lanes"] == 4
    rest = [dict() for _ in range(7)]
    for r in range(4):  # 4 ranks x 1 micro-batch of 4 continue the same global batches
        fresh = PretrainingDataLoader(h5dir, batch_size=4, rank=r, world_size=4, **kw)
        fresh.load_state_dict(state)
        for s, b in enumerate(take(fresh, 7)):
            for i, sid in enumerate(sample_ids(b)):
                n = int(b["attention_mask"][i].sum())
                rest[s][sid] = (tuple(b["input_ids"][i, :n].tolist()),
                                tuple(b["masked_lm_labels"][i, :n].tolist()))
    assert rest == ref[5:]
    other = PretrainingDataLoader(h5dir, batch_size=4, world_size=2, **kw)  # global batch 8
    with pytest.raises(LoaderStateMismatch, match="global_batch_size"):
        other.load_state_dict(state)


def test_per_rank_positions_of_older_checkpoints_continue_in_their_order(h5dir):
    """Version-1 states (one per rank, rank-sharded order) load as K = their ranks, for any W."""
    kw = dict(seed=2)
    lanes2 = [PretrainingDataLoader(h5dir, batch_size=4, rank=r, world_size=2, lanes=2, **kw)
              for r in range(2)]
    ref = [take(ld, 9) for ld in lanes2]
    names = [p.rsplit("/", 1)[1] for p in discover_shards(h5dir)]
    v1 = [{"version": 1, "epoch": 0, "step": 4, "taken": [16], "seed": 2, "rank": r, "world_size": 2,
           "batch_size": 4, "num_files": 4, "bins": [{"bin": None, "taken": 16, "order": names}]}
          for r in range(2)]
    for world in (2, 1):
        got = []
        for r in range(world):
            ld = PretrainingDataLoader(h5dir, batch_size=8 // world, rank=r, world_size=world, **kw)
            ld.load_state_dict(v1)
            assert ld.lanes == 2 and ld.state_dict()["step"] == 4
            got.append(take(ld, 5))
        if world == 2:
            assert all(same(got[r], ref[r][4:]) for r in range(2))
        else:  # one process: its batch is rank 0's rows then rank 1's
            want = [torch.cat([ref[0][s]["input_ids"][:, :8], ref[1][s]["input_ids"][:, :8]])
                    for s in range(4, 9)]
            assert all(torch.equal(g["input_ids"][:, :8], w) for g, w in zip(got[0], want, strict=True))


def test_a_batch_across_shards_of_different_widths(tmp_path):
    """Shards of one bin hold sequences of different longest lengths (each shard's arrays are
    as wide as its own longest): a micro-batch made of rows of several shards pads them to one
    width instead of failing to stack them (run_pretraining.sh's phase 2 did, with accumulation)."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    d = tmp_path / "bins"
    d.mkdir()
    for s, length in enumerate((20, 21, 7)):
        rows = [([f"w{5 + i}"] * length, ["w1"] * length, bool(i % 2), [1], ["w2"]) for i in range(5)]
        pq.write_table(lddl_table(rows, 0), d / f"shard-{s}.parquet_0")
    seen = set()
    for accum in (1, 2):
        ld = PretrainingDataLoader(d, batch_size=4, vocab_file=str(vocab), seed=1, accumulation_steps=accum)
        for b in take(ld, 6):
            n = b["attention_mask"].sum(1)
            assert b["input_ids"].shape[1] >= int(n.max())
            for i, k in enumerate(n.tolist()):  # every row whole: [CLS] ... [SEP], padding after
                assert b["input_ids"][i, k - 1] == SEP and (b["input_ids"][i, k:] == 0).all()
            seen.update(n.tolist())
    assert seen == {2 * 20 + 3, 2 * 21 + 3, 2 * 7 + 3}
