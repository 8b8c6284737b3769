"""The create step: HDF5/Parquet formats (acceptance 2), determinism (3), bad input (5)."""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from bertforge.cli.create_pretraining_data import main as create_main
from bertforge.data.hdf5 import read_hdf5_shard
from bertforge.data.instances import tokenize_documents
from bertforge.data.parquet import npy_bytes, parquet_to_arrays
from bertforge.data.text import read_text_documents
from bertforge.data.tokenization import BertTokenizer
from bertforge.data.vocab import load_vocab

from .data_fixtures import make_text_dir, make_vocab, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    text = make_text_dir(root, n_files=3, n_docs=20)
    return root, text, make_vocab(root, text)


def run(*argv):
    try:
        return create_main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def shard_arrays(d):
    return {f.name: read_hdf5_shard(f) for f in sorted(d.glob("*.hdf5"))}


def test_hdf5_format(corpus, tmp_path):
    root, text, vocab = corpus
    out = tmp_path / "h5"
    assert run("--input_file", text, "--output_file", out, "--vocab_file", vocab,
               "--max_seq_length", 64, "--max_predictions_per_seq", 10, "--dupe_factor", 3,
               "--num_shards", 3, "--progress", "false") == 0
    v = load_vocab(vocab)
    CLS, SEP, MASK = v["[CLS]"], v["[SEP]"], v["[MASK]"]
    sizes = json.loads((out / ".num_samples.json").read_text())
    assert len(sizes) == 3 and max(sizes.values()) - min(sizes.values()) <= 1
    # every instance's unmasked A and B are contiguous runs of the direct tokenization
    tok = BertTokenizer(vocab)
    stream = {}
    for f in sorted(text.glob("*.txt")):
        docs, _ = read_text_documents(f)
        stream[f.name] = tokenize_documents([d.sentences for d in docs], tok).tokens.tobytes()
    all_tokens = b"|".join(stream.values())
    n_masked = n_cand = n_random = n_total = 0
    for name, a in shard_arrays(out).items():
        assert sizes[name] == len(a["input_ids"])
        with h5py.File(out / name) as f:
            for k, (dt, shape) in {
                "input_ids": ("int32", (64,)), "input_mask": ("int8", (64,)),
                "segment_ids": ("int8", (64,)), "masked_lm_positions": ("int32", (10,)),
                "masked_lm_ids": ("int32", (10,)), "next_sentence_labels": ("int8", ())}.items():
                assert f[k].dtype == np.dtype(dt) and f[k].shape[1:] == shape, k
                assert f[k].compression == "gzip" and f[k].shuffle, k
        for i in range(len(a["input_ids"])):
            ids, mask, seg = a["input_ids"][i], a["input_mask"][i], a["segment_ids"][i]
            pos, mids = a["masked_lm_positions"][i], a["masked_lm_ids"][i]
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any() and not ids[n:].any()
            assert ids[0] == CLS and ids[n - 1] == SEP
            la = int(np.argmax(seg)) - 2  # B starts at la + 2
            assert ids[la + 1] == SEP and seg[: la + 2].sum() == 0 and seg[la + 2 : n].all()
            assert not seg[n:].any()
            k = int((pos > 0).sum())
            p = pos[:k]
            assert (pos[k:] == 0).all() and (mids[k:] == 0).all()
            assert (np.diff(p) > 0).all() and p.min() > 0 and p.max() < n
            assert not np.isin(p, [0, la + 1, n - 1]).any()  # never on [CLS]/[SEP]/padding
            orig = ids.copy()
            orig[p] = mids[:k]
            assert not np.isin(orig[1 : la + 1], [CLS, SEP, MASK]).any()
            assert orig[1 : la + 1].tobytes() in all_tokens
            assert orig[la + 2 : n - 1].tobytes() in all_tokens
            # [MASK], the original or a random token: always an id of the vocab (the mix: below)
            assert ((ids[p] >= 0) & (ids[p] < len(v))).all()
            n_masked += k
            n_cand += n - 3
            n_random += int(a["next_sentence_labels"][i])
            n_total += 1
    assert 0.44 < n_random / n_total < 0.56, n_random / n_total  # NSP balance
    assert 0.14 < n_masked / n_cand < 0.17, n_masked / n_cand  # ~15% of non-special tokens


def test_mask_token_mix(corpus, tmp_path):
    root, text, vocab = corpus
    out = tmp_path / "h5"
    run("--input_file", text, "--output_file", out, "--vocab_file", vocab, "--dupe_factor", 4,
        "--max_seq_length", 64, "--max_predictions_per_seq", 10, "--num_shards", 1)
    a = read_hdf5_shard(out / "training_shard_00000.hdf5")
    MASK = load_vocab(vocab)["[MASK]"]
    valid = a["masked_lm_positions"] > 0
    rows = np.nonzero(valid)[0]
    now = a["input_ids"][rows, a["masked_lm_positions"][valid]]
    orig = a["masked_lm_ids"][valid]
    frac_mask = (now == MASK).mean()
    frac_same = (now == orig).mean()
    assert 0.76 < frac_mask < 0.84 and 0.07 < frac_same < 0.13, (frac_mask, frac_same)


def test_parquet_matches_hdf5_and_lddl_schema(corpus, tmp_path):
    root, text, vocab = corpus
    common = ["--input_file", text, "--vocab_file", vocab, "--max_seq_length", 64,
              "--max_predictions_per_seq", 10, "--dupe_factor", 2, "--num_shards", 2]
    assert run(*common, "--output_file", tmp_path / "h5") == 0
    assert run(*common, "--output_file", tmp_path / "pq", "--output_format", "parquet") == 0
    v = load_vocab(vocab)
    for i in range(2):
        h = read_hdf5_shard(tmp_path / "h5" / f"training_shard_{i:05d}.hdf5")
        t = pq.read_table(tmp_path / "pq" / f"shard-{i}.parquet")
        assert [(f.name, str(f.type)) for f in t.schema] == [
            ("A", "string"), ("B", "string"), ("is_random_next", "bool"),
            ("num_tokens", "uint16"), ("masked_lm_positions", "binary"),
            ("masked_lm_labels", "string")]
        # LDDL's own decoding: np.load of the bytes, tokens split on spaces
        blob = t.column("masked_lm_positions")[0].as_py()
        lddl_pos = np.load(io.BytesIO(blob))
        assert lddl_pos.dtype == np.uint16 and blob == npy_bytes(lddl_pos)
        assert len(lddl_pos) == len(t.column("masked_lm_labels")[0].as_py().split())
        a = parquet_to_arrays(t, v, max_seq_length=64)
        # 670 instances divide evenly into 2 shards: LDDL's format leaves the last one out
        # (its loader needs shard sizes m and m + 1), so the last Parquet shard is one shorter
        n = len(a["input_ids"])
        assert n == len(h["input_ids"]) - (1 if i == 1 else 0)
        h = {k: x[:n] for k, x in h.items()}
        for k in ("input_ids", "input_mask", "segment_ids", "next_sentence_labels"):
            assert np.array_equal(a[k], h[k]), k
        P = a["masked_lm_positions"].shape[1]
        assert np.array_equal(a["masked_lm_positions"], h["masked_lm_positions"][:, :P])
        assert np.array_equal(a["masked_lm_ids"], h["masked_lm_ids"][:, :P])
        assert not h["masked_lm_positions"][:, P:].any()


def test_parquet_unmasked_binned_reads_back_as_tokenization(corpus, tmp_path):
    root, text, vocab = corpus
    out = tmp_path / "pq"
    assert run("--input_file", text, "--output_file", out, "--vocab_file", vocab,
               "--output_format", "parquet", "--masking", "none", "--bin_size", 16,
               "--max_seq_length", 64, "--dupe_factor", 1, "--num_shards", 3) == 0
    sizes = json.loads((out / ".num_samples.json").read_text())
    assert sorted(sizes) == sorted(f"shard-{i}.parquet_{b}" for i in range(3) for b in range(4))
    for b in range(4):
        per_bin = [sizes[f"shard-{i}.parquet_{b}"] for i in range(3)]
        assert max(per_bin) - min(per_bin) <= 1
    tok = BertTokenizer(vocab)
    stream = b"|".join(
        tokenize_documents([d.sentences for d in read_text_documents(f)[0]], tok).tokens.tobytes()
        for f in sorted(text.glob("*.txt")))
    v = load_vocab(vocab)
    for name in sizes:
        t = pq.read_table(out / name)
        assert "masked_lm_positions" not in t.column_names
        b = int(name.rsplit("_", 1)[1])
        assert (np.asarray(t.column("bin_id")) == b).all()
        nt = np.asarray(t.column("num_tokens"))
        assert (np.minimum((nt - 1) // 16, 3) == b).all()
        a = parquet_to_arrays(t, v)
        for i in range(t.num_rows):
            la, n = a["len_a"][i], a["num_tokens"][i]
            assert a["input_ids"][i, 1 : la + 1].tobytes() in stream
            assert a["input_ids"][i, la + 2 : n - 1].tobytes() in stream


def test_same_shards_for_any_workers_and_tasks(corpus, tmp_path, monkeypatch):
    root, text, vocab = corpus
    common = ["--input_file", text, "--vocab_file", vocab, "--max_seq_length", 64,
              "--max_predictions_per_seq", 10, "--dupe_factor", 2, "--num_shards", 2,
              "--random_seed", 7]
    assert run(*common, "--output_file", tmp_path / "w1", "--num_workers", 1) == 0
    assert run(*common, "--output_file", tmp_path / "w2", "--num_workers", 2) == 0
    # two Slurm tasks (from the environment), then the balance step
    for r in range(2):
        monkeypatch.setenv("SLURM_PROCID", str(r))
        monkeypatch.setenv("SLURM_NTASKS", "2")
        assert run(*common, "--output_file", tmp_path / "t2") == 0
    assert not list((tmp_path / "t2").glob("*.hdf5"))
    monkeypatch.delenv("SLURM_PROCID")
    monkeypatch.delenv("SLURM_NTASKS")
    assert run("--balance", "--output_file", tmp_path / "t2", "--vocab_file", vocab,
               "--num_shards", 2) == 0
    assert not (tmp_path / "t2" / ".parts").exists()
    ref = shard_arrays(tmp_path / "w1")
    for other in ("w2", "t2"):
        got = shard_arrays(tmp_path / other)
        assert got.keys() == ref.keys()
        for name in ref:
            for k in ref[name]:
                assert np.array_equal(ref[name][k], got[name][k]), (other, name, k)
    # another seed gives other shards
    assert run(*common[:-1], 8, "--output_file", tmp_path / "s8") == 0
    assert not np.array_equal(shard_arrays(tmp_path / "s8")["training_shard_00000.hdf5"]["input_ids"],
                              ref["training_shard_00000.hdf5"]["input_ids"])


def test_balance_by_two_tasks_swaps_in_the_whole_dataset_once_both_are_done(corpus, tmp_path):
    """A balance step of two tasks: each writes its shards into one work folder beside the
    output; the output changes only when the last task is done, then holds exactly what a
    single task writes; an earlier dataset stays until then (with --overwrite)."""
    root, text, vocab = corpus
    common = ["--input_file", text, "--vocab_file", vocab, "--max_seq_length", 64,
              "--max_predictions_per_seq", 10, "--dupe_factor", 2, "--num_shards", 4, "--random_seed", 7]
    assert run(*common, "--output_file", tmp_path / "one") == 0
    out = tmp_path / "two"
    assert run(*common[:-2], "--random_seed", 8, "--output_file", out) == 0  # an earlier dataset
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    for r in range(2):
        assert run(*common, "--output_file", out, "--rank", r, "--world_size", 2, "--overwrite") == 0
    balance = ["--balance", "--output_file", out, "--vocab_file", vocab, "--num_shards", 4,
               "--world_size", 2, "--overwrite"]
    assert run(*balance, "--rank", 1) == 0  # the first task done: nothing swapped in yet
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".parts"} == earlier
    work = tmp_path / ".two.balance-2"
    assert sorted(p.name for p in work.glob("*.hdf5")) == ["training_shard_00001.hdf5",
                                                           "training_shard_00003.hdf5"]
    assert run(*balance, "--rank", 0) == 0  # the last: the whole new dataset at once
    assert not work.exists() and not (out / ".parts").exists()
    def dataset(d):  # the shards and their counts (the settings record also notes the tasks)
        return {p.name: p.read_bytes() for p in d.iterdir() if p.name != ".bertforge_data.json"}

    assert dataset(out) == dataset(tmp_path / "one") and (out / ".bertforge_data.json").is_file()


def test_balance_refuses_unfinished_tasks(corpus, tmp_path):
    root, text, vocab = corpus
    assert run("--input_file", text, "--output_file", tmp_path / "o", "--vocab_file", vocab,
               "--rank", 1, "--world_size", 3, "--dupe_factor", 1) == 0
    assert run("--balance", "--output_file", tmp_path / "o", "--vocab_file", vocab,
               "--num_shards", 2) == 2


def test_bad_inputs(corpus, tmp_path, capsys):
    root, text, vocab = corpus
    out = tmp_path / "out"
    base = ["--output_file", out, "--vocab_file", vocab, "--max_seq_length", 64,
            "--max_predictions_per_seq", 10, "--dupe_factor", 1]
    # empty file: fatal, no output under the final name
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert run("--input_file", empty, *base) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no instances" in err and len(err.splitlines()) == 1
    assert not list(out.glob("*.hdf5")) if out.exists() else True
    # non-UTF-8 bytes: replaced and counted, not fatal
    bad = tmp_path / "bad" / "a.txt"
    bad.parent.mkdir()
    write_corpus(bad, n_docs=6)
    bad.write_bytes(bad.read_bytes().replace(b"the", b"th\xff", 3))
    assert run("--input_file", bad.parent, *base) == 0
    assert "3 undecodable byte" in capsys.readouterr().err
    # a document of one sentence among others: fine; alone: no pair can be made
    one = tmp_path / "one" / "a.txt"
    one.parent.mkdir()
    write_corpus(one, n_docs=5, min_sent=1, max_sent=1)
    assert run("--input_file", one.parent, *base, "--output_file", tmp_path / "o1") == 0
    lone = tmp_path / "lone.txt"
    lone.write_text("Just one sentence here.\n")
    assert run("--input_file", lone, *base, "--output_file", tmp_path / "o2") == 2
    # missing and malformed vocab
    assert run("--input_file", text, *base[:2], "--vocab_file", tmp_path / "nope.txt") == 2
    assert "nope.txt does not exist" in capsys.readouterr().err
    mal = tmp_path / "mal.txt"
    mal.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    assert run("--input_file", text, *base[:2], "--vocab_file", mal) == 2
    assert "[MASK]" in capsys.readouterr().err
    # unwritable output path (a file where a directory must go)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert run("--input_file", text, *base[2:], "--output_file", blocker / "sub") == 2
    assert "blocker" in capsys.readouterr().err
    # nonsense flags
    assert run("--input_file", text, *base, "--masking", "none") == 2
    assert run("--input_file", text, *base, "--bin_size", 16) == 2
    assert run("--input_file", tmp_path / "missing_dir", *base) == 2


def test_no_partial_file_on_failure(corpus, tmp_path, monkeypatch, capsys):
    root, text, vocab = corpus
    import builtins

    import bertforge.data.hdf5 as h

    def full_disk_open(path, mode="r", *a, **k):  # the shard's file write hits a full disk
        fh = builtins.open(path, mode, *a, **k)
        if "w" in mode:
            fh.write(b"partial")
            fh.close()
            raise OSError(28, "No space left on device")
        return fh

    monkeypatch.setattr(h, "open", full_disk_open, raising=False)
    rc = run("--input_file", text, "--output_file", tmp_path / "o", "--vocab_file", vocab,
             "--dupe_factor", 1, "--num_shards", 1)
    assert rc == 2
    # the message names the final file; nothing is left under the final name or beside it
    assert f"cannot write {tmp_path / 'o' / 'training_shard_00000.hdf5'}: No space" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_whole_word_masking(corpus, tmp_path, real_data):
    root, text, _ = corpus
    vocab = real_data("vocab/bert-base-uncased-vocab.txt")  # splits the long words into ##s
    out = tmp_path / "wwm"
    assert run("--input_file", text, "--output_file", out, "--vocab_file", vocab,
               "--max_seq_length", 64, "--max_predictions_per_seq", 10, "--dupe_factor", 2,
               "--num_shards", 1, "--do_whole_word_mask") == 0
    a = read_hdf5_shard(out / "training_shard_00000.hdf5")
    v = load_vocab(vocab)
    cont = np.array([t.startswith("##") for t in v], dtype=bool)
    specials = [v["[CLS]"], v["[SEP]"]]
    checked = 0
    for i in range(len(a["input_ids"])):
        pos = a["masked_lm_positions"][i]
        k = int((pos > 0).sum())
        orig = a["input_ids"][i].copy()
        orig[pos[:k]] = a["masked_lm_ids"][i][:k]
        masked = set(pos[:k].tolist())
        assert k <= 10
        for p in range(1, int(a["input_mask"][i].sum()) - 1):
            if orig[p] in specials or not cont[orig[p]] or orig[p - 1] in specials:
                continue
            # a "##" piece is masked exactly when the piece before it is
            assert (p in masked) == (p - 1 in masked), (i, p)
            checked += 1
    assert checked > 100
