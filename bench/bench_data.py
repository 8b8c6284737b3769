"""Benchmark of the create step (issue 3, acceptance 4) on the real Wikipedia sample.

In one run, on the same text shards (the sample dump -> text, phase-1 settings 128/20,
dupe_factor 5):
  * ours: ``create_pretraining_shards`` end to end (read, tokenize, instances, mask, write
    HDF5), with 1 and with 2 worker processes;
  * reference: a plain single-process pure-Python version of Google's algorithm written
    here (Python BasicTokenizer + WordPiece, one line at a time, ``random.Random``,
    per-instance feature lists, h5py gzip write), as NVIDIA's script does it;
  * floor: tokenizing the corpus once with ``tokenizers`` (batched) plus writing the same
    final arrays once (gzip HDF5).
Prints a Markdown table, JSON with ``--json``; ``--write docs/benchmarks.md`` rewrites that
file's bench_data section (with the command and commit).

    .venv/bin/python bench/bench_data.py [--vocab_file V] [--repeat 2] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# ----------------------------------------------------------------------------- reference
# Google's tokenizer in pure Python (re-implemented from its description).


def _is_whitespace(c):
    return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def _is_control(c):
    if c in "\t\n\r":
        return False
    return unicodedata.category(c).startswith("C")


def _is_punct(c):
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class RefTokenizer:
    def __init__(self, vocab_file, lower=True):
        self.vocab = {}
        with open(vocab_file, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                self.vocab[line.strip()] = i
        self.lower = lower

    def _basic(self, text):
        out = []
        for c in text:
            cp = ord(c)
            if cp == 0 or cp == 0xFFFD or _is_control(c):
                continue
            if _is_cjk(cp):
                out.append(" " + c + " ")
            elif _is_whitespace(c):
                out.append(" ")
            else:
                out.append(c)
        words = []
        for w in "".join(out).split():
            if self.lower:
                w = "".join(ch for ch in unicodedata.normalize("NFD", w.lower())
                            if unicodedata.category(ch) != "Mn")
            cur = ""
            for ch in w:
                if _is_punct(ch):
                    if cur:
                        words.append(cur)
                        cur = ""
                    words.append(ch)
                else:
                    cur += ch
            if cur:
                words.append(cur)
        return words

    def tokenize(self, text):
        pieces = []
        for w in self._basic(text):
            if len(w) > 100:
                pieces.append("[UNK]")
                continue
            start, sub = 0, []
            while start < len(w):
                end, cur = len(w), None
                while start < end:
                    s = w[start:end]
                    if start > 0:
                        s = "##" + s
                    if s in self.vocab:
                        cur = s
                        break
                    end -= 1
                if cur is None:
                    sub = ["[UNK]"]
                    break
                sub.append(cur)
                start = end
            pieces.extend(sub)
        return pieces


def reference_create(files, vocab_file, out_path, max_seq=128, max_pred=20, prob=0.15,
                     dupe=5, short=0.1, seed=12345):
    """Google's create_pretraining_data, single process, pure Python; returns #instances."""
    import h5py

    tok = RefTokenizer(vocab_file)
    rng = random.Random(seed)
    docs = [[]]
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    docs.append([])
                    continue
                t = tok.tokenize(line)
                if t:
                    docs[-1].append(t)
    docs = [d for d in docs if d]
    rng.shuffle(docs)
    words = list(tok.vocab.keys())
    instances = []
    for _ in range(dupe):
        for di in range(len(docs)):
            instances.extend(_ref_doc(docs, di, max_seq, short, prob, max_pred, words, rng))
    rng.shuffle(instances)
    feats = {k: [] for k in ("input_ids", "input_mask", "segment_ids", "masked_lm_positions",
                             "masked_lm_ids", "next_sentence_labels")}
    for tokens, segs, is_rand, pos, labels in instances:
        ids = [tok.vocab[t] for t in tokens]
        mask = [1] * len(ids)
        segs = list(segs)
        while len(ids) < max_seq:
            ids.append(0)
            mask.append(0)
            segs.append(0)
        p = list(pos)
        lid = [tok.vocab[t] for t in labels]
        while len(p) < max_pred:
            p.append(0)
            lid.append(0)
        feats["input_ids"].append(ids)
        feats["input_mask"].append(mask)
        feats["segment_ids"].append(segs)
        feats["masked_lm_positions"].append(p)
        feats["masked_lm_ids"].append(lid)
        feats["next_sentence_labels"].append(1 if is_rand else 0)
    dt = {"input_ids": "i4", "input_mask": "i1", "segment_ids": "i1",
          "masked_lm_positions": "i4", "masked_lm_ids": "i4", "next_sentence_labels": "i1"}
    with h5py.File(out_path, "w") as f:
        for k, v in feats.items():
            f.create_dataset(k, data=np.array(v), dtype=dt[k], compression="gzip")
    return len(instances)


def _ref_doc(docs, di, max_seq, short, prob, max_pred, words, rng):
    doc = docs[di]
    max_num = max_seq - 3
    target = max_num
    if rng.random() < short:
        target = rng.randint(2, max_num)
    out, chunk, cur_len, i = [], [], 0, 0
    while i < len(doc):
        chunk.append(doc[i])
        cur_len += len(doc[i])
        if i == len(doc) - 1 or cur_len >= target:
            if chunk:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                a = [t for s in chunk[:a_end] for t in s]
                b = []
                if len(chunk) == 1 or rng.random() < 0.5:
                    is_rand = True
                    tb = target - len(a)
                    for _ in range(10):
                        rd = rng.randint(0, len(docs) - 1)
                        if rd != di:
                            break
                    rdoc = docs[rd]
                    for j in range(rng.randint(0, len(rdoc) - 1), len(rdoc)):
                        b.extend(rdoc[j])
                        if len(b) >= tb:
                            break
                    i -= len(chunk) - a_end
                else:
                    is_rand = False
                    b = [t for s in chunk[a_end:] for t in s]
                while len(a) + len(b) > max_num:
                    tr = a if len(a) > len(b) else b
                    if rng.random() < 0.5:
                        del tr[0]
                    else:
                        tr.pop()
                if a and b:
                    tokens = ["[CLS]"] + a + ["[SEP]"] + b + ["[SEP]"]
                    segs = [0] * (len(a) + 2) + [1] * (len(b) + 1)
                    cand = [k for k, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
                    rng.shuffle(cand)
                    n = min(max_pred, max(1, int(round(len(tokens) * prob))))
                    out_t = list(tokens)
                    masked = []
                    for k in cand[:n]:
                        if rng.random() < 0.8:
                            out_t[k] = "[MASK]"
                        elif rng.random() < 0.5:
                            pass
                        else:
                            out_t[k] = words[rng.randint(0, len(words) - 1)]
                        masked.append((k, tokens[k]))
                    masked.sort()
                    out.append((out_t, segs, is_rand, [k for k, _ in masked],
                                [t for _, t in masked]))
            chunk, cur_len = [], 0
        i += 1
    return out


# ----------------------------------------------------------------------------- floor


def floor_run(files, vocab_file, instances, out_dir, num_shards):
    """Tokenize the corpus once with tokenizers (batched) + write the final arrays once."""
    from bertforge.data.create import shard_plan
    from bertforge.data.hdf5 import write_hdf5_shard
    from bertforge.data.text import read_text_documents
    from bertforge.data.tokenization import BertTokenizer

    t0 = time.perf_counter()
    tok = BertTokenizer(vocab_file)
    sents = [s for f in files for d in read_text_documents(f)[0] for s in d.sentences]
    ids = tok.encode_batch_ids(sents)
    t1 = time.perf_counter()
    plan = shard_plan(instances.num_tokens, num_shards=num_shards, seed=12345,
                      output_format="hdf5")
    for name, rows, _ in plan:
        write_hdf5_shard(Path(out_dir) / name, instances.take(rows))
    t2 = time.perf_counter()
    return t2 - t0, t1 - t0, t2 - t1, sum(map(len, ids))


# ----------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab_file", default=None,
                    help="default: Google's uncased vocab under $BERTFORGE_REAL_DATA, else "
                         "one trained on the sample")
    ap.add_argument("--num_text_shards", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2, help="best of N for the fast runs")
    ap.add_argument("--skip_reference", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", help="rewrite this markdown file's bench_data section")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import provenance, provenance_line, write_section

    info = provenance("bench/bench_data.py", list(sys.argv[1:] if argv is None else argv))

    from bertforge.cli.environment import one_tokenizer_thread_per_process
    from bertforge.cli.prepare_wiki_sample import fetch_wiki_sample
    from bertforge.data.create import create_pretraining_shards
    from bertforge.data.hdf5 import read_hdf5_shard
    from bertforge.data.instances import InstanceConfig, InstanceSet
    from bertforge.data.text import extract_wikipedia, write_text_shards
    from bertforge.data.vocab import train_wordpiece_vocab

    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    dump = fetch_wiki_sample()
    docs = extract_wikipedia(dump, num_workers=2, progress=False)
    write_text_shards(docs, tmp / "text", num_shards=args.num_text_shards)
    files = sorted((tmp / "text" / "train").glob("*.txt"))
    text_mb = sum(f.stat().st_size for f in files) / 1e6
    vocab = args.vocab_file
    if vocab is None and os.environ.get("BERTFORGE_REAL_DATA"):
        cand = Path(os.environ["BERTFORGE_REAL_DATA"]) / "vocab/bert-base-uncased-vocab.txt"
        vocab = str(cand) if cand.is_file() else None
    if vocab is None:
        vocab = str(tmp / "vocab.txt")
        train_wordpiece_vocab(files, vocab, vocab_size=30522)
    cfg = InstanceConfig(max_seq_length=128, max_predictions_per_seq=20, dupe_factor=5)
    res = {"text_mb": round(text_mb, 2), "cpus": os.cpu_count(), "vocab": Path(vocab).name}

    import resource

    def cpu_now():
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    cpu = {}

    def best(fn, name):
        runs = []
        for _ in range(args.repeat):
            t, c = time.perf_counter(), cpu_now()
            out = fn()
            runs.append((time.perf_counter() - t, cpu_now() - c, out))
        wall, c, out = min(runs, key=lambda r: r[0])
        cpu[name] = round(min(r[1] for r in runs), 2)
        return wall, out

    for w in (1, 2):
        if w > 1:  # as create_pretraining_data.py does for --num_workers > 1
            one_tokenizer_thread_per_process()
        t, r = best(lambda w=w: create_pretraining_shards(
            tmp / "text" / "train", tmp / f"ours{w}", vocab_file=vocab, cfg=cfg,
            num_shards=args.num_text_shards, num_workers=w, progress=False, overwrite=True), f"ours_w{w}")
        res[f"ours_w{w}_s"] = round(t, 2)
        res["instances"] = r.num_instances
    arrays = [read_hdf5_shard(f) for f in sorted((tmp / "ours2").glob("*.hdf5"))]
    inst = InstanceSet(
        np.concatenate([a["input_ids"] for a in arrays]),
        np.concatenate([np.argmax(a["segment_ids"], 1) - 2 for a in arrays]).astype(np.int32),
        np.concatenate([a["input_mask"].sum(1) for a in arrays]).astype(np.int32),
        np.concatenate([a["masked_lm_positions"] for a in arrays]),
        np.concatenate([a["masked_lm_ids"] for a in arrays]),
        np.concatenate([a["next_sentence_labels"] for a in arrays]))
    (tmp / "floor").mkdir()
    t, (tot, tt, tw, ntok) = best(lambda: floor_run(files, vocab, inst, tmp / "floor",
                                                    args.num_text_shards), "floor")
    res.update(floor_s=round(t, 2), floor_tokenize_s=round(tt, 2), floor_write_s=round(tw, 2),
               tokens=ntok)
    if not args.skip_reference:
        t, c = time.perf_counter(), cpu_now()
        res["reference_instances"] = reference_create(files, vocab, tmp / "reference.hdf5")
        res["reference_s"] = round(time.perf_counter() - t, 2)
        cpu["reference"] = round(cpu_now() - c, 2)
        res["speedup_w2_vs_reference"] = round(res["reference_s"] / res["ours_w2_s"], 1)
        res["speedup_w1_vs_reference"] = round(res["reference_s"] / res["ours_w1_s"], 1)
    res["ours_w2_over_floor"] = round(res["ours_w2_s"] / res["floor_s"], 2)
    res["ours_w1_over_floor"] = round(res["ours_w1_s"] / res["floor_s"], 2)
    res["cpu_s"] = cpu
    try:
        res["load_average"] = round(os.getloadavg()[0], 1)
    except OSError:
        pass
    if args.json:
        print(json.dumps(res, indent=2))
    info["load_end"] = res.get("load_average")
    lines = [f"Wikipedia sample: {text_mb:.2f} MB of text, {ntok:,} WordPieces (vocab {res['vocab']}), "
             f"phase 1 (128/20), dupe_factor 5, {args.num_text_shards} text shards, best of {args.repeat} for the "
             "fast runs.", "", "| run | wall s | CPU s | instances |", "| --- | ---: | ---: | ---: |"]
    if "reference_s" in res:
        lines.append(f"| reference: pure-Python Google algorithm, 1 process | {res['reference_s']} | "
                     f"{cpu['reference']} | {res['reference_instances']:,} |")
    lines += [f"| floor: tokenize once (tokenizers) + write the arrays once | {res['floor_s']} | "
              f"{cpu['floor']} | {res['instances']:,} |",
              f"| ours, --num_workers 1 | {res['ours_w1_s']} | {cpu['ours_w1']} | {res['instances']:,} |",
              f"| ours, --num_workers 2 | {res['ours_w2_s']} | {cpu['ours_w2']} | {res['instances']:,} |", ""]
    if "reference_s" in res:
        lines.append(f"* Against the reference: **{res['speedup_w2_vs_reference']}x** faster in wall time with 2 "
                     f"workers ({res['speedup_w1_vs_reference']}x with 1); in CPU time "
                     f"{cpu['reference'] / cpu['ours_w1']:.1f}x (1 worker), {cpu['reference'] / cpu['ours_w2']:.1f}x "
                     "(2 workers).")
    lines.append(f"* Against the floor: {res['ours_w2_over_floor']}x its wall time (2 workers), "
                 f"{res['ours_w1_over_floor']}x (1 worker); {cpu['ours_w1'] / cpu['floor']:.2f}x its CPU time "
                 "(1 worker).")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.write:
        write_section(args.write, "bench_data",
                      f"Written by `bench/bench_data.py --write`.\n\n{provenance_line(info)}\n\n{text}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    main()
