"""Resumable, rank-sharded pretraining data loader over HDF5 and Parquet shards.

Dimensions: B batch size, L' padded batch length, L a shard's max sequence length.

Order of samples (all deterministic from ``seed``):
  * epoch e: the shard list (of one length bin) is permuted by (seed, e, bin), the same
    on every rank; with at least as many shards as ranks, rank r takes shards r, r+W, ...
    (whole files, each read once); with fewer, every rank reads every shard and takes
    every W-th sample. Ranks are disjoint. Each rank yields the same number of samples
    per epoch (the smallest rank's count; the few extra samples are skipped), so every
    rank makes the same number of steps.
  * inside a shard, rows are shuffled by (seed, e, bin, shard position); batches run on
    across shard boundaries.
  * binned Parquet (``shard-<i>.parquet_<bin>``): each batch comes from one bin; the bin
    is drawn with probability proportional to its remaining batches, by an RNG keyed by
    (seed, e, step), so every rank draws the same bin at the same step.
  * dynamic masking uses an RNG keyed by (seed, e, rank, step).
The position is therefore just (epoch, step, samples taken per bin): ``state_dict`` holds
that (plus the shard order and offset, for humans), and after ``load_state_dict`` the next
batch is exactly the next unseen one.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertforge.data.instances import InstanceConfig, file_seed, mask_instances
from bertforge.errors import DataError

__all__ = ["PretrainingDataLoader", "discover_shards", "load_shard_arrays", "LoaderStateMismatch"]


class LoaderStateMismatch(DataError):
    """A saved loader position that does not fit this loader: ``key`` differs (``batch_size``,
    ``seed``, ``world_size``, ``files``, ``bins``, ``format``), ``saved`` vs ``current``."""

    def __init__(self, key: str, saved, current) -> None:
        super().__init__(f"loader state has {key}={saved}, this loader {current}")
        self.key, self.saved, self.current = key, saved, current

_PARQUET_RE = re.compile(r"\.parquet(_(\d+))?$")


def _natural_key(p: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)]


def discover_shards(input_dir: str | os.PathLike) -> list[str]:
    """Shard files in ``input_dir``: ``*.hdf5``, ``*.h5``, ``shard-*.parquet[_<bin>]``.

    Hidden files and folders (e.g. ``.parts``) are skipped. Naturally sorted. DataError
    when the folder does not exist or holds no shard.
    """
    d = Path(input_dir)
    if not d.is_dir():
        raise DataError(f"input directory {d} does not exist")
    out = []
    for f in d.iterdir():
        if f.name.startswith(".") or not f.is_file():
            continue
        if f.suffix in (".hdf5", ".h5") or (f.name.startswith("shard-") and _PARQUET_RE.search(f.name)):
            out.append(str(f))
        elif _PARQUET_RE.search(f.name) and ".parquet" in f.name:
            out.append(str(f))  # LDDL before balancing names files part.<i>.parquet
    if not out:
        raise DataError(f"no shards (*.hdf5, *.h5, shard-*.parquet*) in {d}")
    return sorted(out, key=_natural_key)


def _bin_of(path: str) -> int | None:
    m = _PARQUET_RE.search(os.path.basename(path))
    if m is None:
        return None
    return int(m.group(2)) if m.group(2) is not None else None


def _is_parquet(path: str) -> bool:
    return _PARQUET_RE.search(os.path.basename(path)) is not None


def _num_samples(path: str, cache: dict[str, dict]) -> int:
    d = os.path.dirname(path)
    if d not in cache:
        try:
            with open(os.path.join(d, ".num_samples.json")) as fh:
                cache[d] = json.load(fh)
        except (OSError, ValueError):
            cache[d] = {}
    n = cache[d].get(os.path.basename(path))
    if isinstance(n, int):
        return n
    if _is_parquet(path):
        from bertforge.data.parquet import parquet_num_samples

        return parquet_num_samples(path)
    from bertforge.data.hdf5 import hdf5_num_samples

    return hdf5_num_samples(path)


def load_shard_arrays(path: str, vocab: dict[str, int] | None) -> dict[str, np.ndarray]:
    """One shard as arrays: input_ids [N, L] int32, segment_ids, num_tokens [N],
    next_sentence_labels [N], and masked_lm_positions / masked_lm_ids [N, P] when static."""
    if _is_parquet(path):
        from bertforge.data.parquet import parquet_to_arrays, read_parquet_shard

        if vocab is None:
            raise DataError(f"Parquet shard {path} holds tokens as text: pass vocab_file")
        arrays = parquet_to_arrays(read_parquet_shard(path), vocab, path=path)
        arrays.pop("input_mask")
        return arrays
    from bertforge.data.hdf5 import read_hdf5_shard

    a = read_hdf5_shard(path)
    return {
        "input_ids": a["input_ids"].astype(np.int32, copy=False),
        "segment_ids": a["segment_ids"].astype(np.int8, copy=False),
        "num_tokens": a["input_mask"].astype(np.int32).sum(axis=1).astype(np.int32),
        "next_sentence_labels": a["next_sentence_labels"].astype(np.int8, copy=False),
        "masked_lm_positions": a["masked_lm_positions"].astype(np.int32, copy=False),
        "masked_lm_ids": a["masked_lm_ids"].astype(np.int32, copy=False),
    }


def _gen(*key) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(file_seed(key[0], "/".join(map(str, key[1:])),
                                                         "loader")))


@dataclass
class _Bin:
    bin_id: int | None
    files: list[str]
    sizes: list[int]


class PretrainingDataLoader:
    """Endless iterator of pretraining batches (dicts of torch tensors), resumable.

    Args:
        files: shard paths, or one directory (see :func:`discover_shards`), or one file.
        batch_size: B, samples per batch on this rank.
        vocab_file: needed for Parquet (tokens are text) and for dynamic masking.
        rank, world_size: this process's share (disjoint across ranks).
        seed: all randomness derives from it.
        masking: "static" uses the masks in the files (dynamic for Parquet without masks);
            "dynamic" re-masks every time a sample is drawn.
        max_predictions_per_seq, masked_lm_prob: dynamic masking (Google's count rule,
            80/10/10).
        pad_to_multiple: L' = longest sequence in the batch rounded up to this, capped at
            the shard width.
        num_workers: > 0 builds batches in a background thread (same batches, same order).
        drop_last: drop an epoch's last partial batch (per bin).

    Batches: input_ids, token_type_ids, attention_mask (1 token, 0 pad),
    masked_lm_labels (-1 where not masked) all [B, L'] long; next_sentence_labels [B] long.
    """

    def __init__(self, files: list[str] | str, *, batch_size: int, vocab_file: str | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 12345, masking: str = "static",
                 max_predictions_per_seq: int = 20, masked_lm_prob: float = 0.15,
                 pad_to_multiple: int = 8, num_workers: int = 0, drop_last: bool = True):
        if isinstance(files, (str, os.PathLike)):
            files = discover_shards(files) if os.path.isdir(files) else [str(files)]
        files = [str(f) for f in files]
        if not files:
            raise DataError("no shard files given")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside [0, {world_size})")
        if masking not in ("static", "dynamic"):
            raise DataError(f"masking must be 'static' or 'dynamic', got {masking!r}")
        self.batch_size = batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.masking = masking
        self.pad_to_multiple = max(1, pad_to_multiple)
        self.num_workers = num_workers
        self.drop_last = drop_last
        self._mask_cfg = InstanceConfig(max_predictions_per_seq=max_predictions_per_seq,
                                        masked_lm_prob=masked_lm_prob)
        self.vocab = None
        if vocab_file is not None:
            from bertforge.data.vocab import load_vocab

            self.vocab = load_vocab(vocab_file, required=("[CLS]", "[SEP]", "[MASK]"))
        pq = [f for f in files if _is_parquet(f)]
        if pq and len(pq) < len(files):
            h5 = next(f for f in files if not _is_parquet(f))
            raise DataError(f"the shards mix HDF5 ({h5}) and Parquet ({pq[0]}): one data set per "
                            "folder, in one format")
        if any(_is_parquet(f) for f in files) and self.vocab is None:
            raise DataError("Parquet shards hold tokens as text: vocab_file is required")
        if masking == "dynamic" and self.vocab is None:
            raise DataError("dynamic masking needs vocab_file (for [MASK] and the vocab size)")
        for f in files:
            if not os.path.isfile(f):
                raise DataError(f"shard {f} does not exist")
        cache: dict[str, dict] = {}
        by_bin: dict[int | None, list[str]] = {}
        for f in files:
            by_bin.setdefault(_bin_of(f) if _is_parquet(f) else None, []).append(f)
        if None in by_bin and len(by_bin) > 1:
            raise DataError("cannot mix binned Parquet shards (*.parquet_<bin>) with unbinned ones")
        self._bins = [_Bin(b, fs, [_num_samples(f, cache) for f in fs])
                      for b, fs in sorted(by_bin.items(), key=lambda kv: -1 if kv[0] is None else kv[0])]
        # samples per rank per epoch (per bin), equal on all ranks
        self._per_rank = [self._rank_quota(b) for b in self._bins]
        if sum(self._per_rank) == 0:
            raise DataError(f"the shards hold too few samples for {world_size} rank(s)")
        self._epoch = 0
        self._step = 0
        self._taken = [0] * len(self._bins)
        self._cached: dict[int, tuple[str, dict]] = {}  # bin -> its current shard
        self._first_shape: dict[int, tuple[str, tuple]] = {}  # bin -> (a shard, its L and P)
        self._perm_cache: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------------------ sizes and order

    def _rank_quota(self, b: _Bin) -> int:
        W = self.world_size
        if len(b.files) >= W:
            # worst case over every possible file order: the W smallest... use the exact
            # minimum over ranks only for a known order; sizes differ by <= 1 when balanced,
            # so take the minimum achievable: sum of the smallest ceil-share of files.
            sizes = sorted(b.sizes)
            per_rank_files = len(b.files) // W
            return int(sum(sizes[:per_rank_files]))
        return sum(b.sizes) // W

    def _batches_in(self, quota: int) -> int:
        return quota // self.batch_size if self.drop_last else -(-quota // self.batch_size)

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank yields per epoch (the same on every rank)."""
        return sum(min(q, self._batches_in(q) * self.batch_size) for q in self._per_rank)

    def _file_order(self, epoch: int, bi: int) -> list[int]:
        b = self._bins[bi]
        order = _gen(self.seed, "files", epoch, b.bin_id).permutation(len(b.files)).tolist()
        if len(b.files) >= self.world_size:
            return order[self.rank :: self.world_size]
        return order

    def _segments(self, epoch: int, bi: int) -> list[tuple[int, int]]:
        """(file index, rows available to this rank) in this rank's epoch order."""
        b = self._bins[bi]
        W = self.world_size
        out = []
        for fi in self._file_order(epoch, bi):
            n = b.sizes[fi]
            if len(b.files) < W:
                n = len(range(self.rank, n, W))
            out.append((fi, n))
        return out

    def _rows_of(self, epoch: int, bi: int, fi: int, n_file: int) -> np.ndarray:
        key = (epoch, bi, fi)
        if key in self._perm_cache:
            return self._perm_cache[key]
        perm = _gen(self.seed, "rows", epoch, self._bins[bi].bin_id, fi).permutation(n_file)
        if len(self._bins[bi].files) < self.world_size:
            perm = perm[self.rank :: self.world_size]
        if len(self._perm_cache) > 4 * len(self._bins):
            self._perm_cache.clear()
        self._perm_cache[key] = perm
        return perm

    def _load(self, bi: int, path: str) -> dict:
        hit = self._cached.get(bi)
        if hit is not None and hit[0] == path:
            return hit[1]
        arrays = load_shard_arrays(path, self.vocab)
        if not _is_parquet(path):  # HDF5 rows are padded to the shard's max_seq_length
            shape = (arrays["input_ids"].shape[1], arrays["masked_lm_positions"].shape[1])
            first, first_shape = self._first_shape.setdefault(bi, (path, shape))
            if shape != first_shape:
                raise DataError(f"the shards were made with different settings: {first} has "
                                f"max_seq_length {first_shape[0]} and max_predictions_per_seq "
                                f"{first_shape[1]}, {path} {shape[0]} and {shape[1]}; keep one "
                                "data set per folder")
        self._cached[bi] = (path, arrays)
        return arrays

    def _take(self, epoch: int, bi: int, start: int, count: int) -> list[tuple[dict, np.ndarray]]:
        """Rows [start, start+count) of this rank's epoch stream of bin ``bi``."""
        b = self._bins[bi]
        pieces = []
        pos = 0
        for fi, n in self._segments(epoch, bi):
            lo, hi = max(start, pos), min(start + count, pos + n)
            if lo < hi:
                rows = self._rows_of(epoch, bi, fi, b.sizes[fi])[lo - pos : hi - pos]
                arrays = self._load(bi, b.files[fi])
                if len(arrays["input_ids"]) != b.sizes[fi]:
                    raise DataError(f"shard {b.files[fi]} holds {len(arrays['input_ids'])} "
                                    f"samples, .num_samples.json says {b.sizes[fi]}")
                pieces.append((arrays, rows))
            pos += n
            if pos >= start + count:
                break
        return pieces

    # ------------------------------------------------------------------ batches

    def _choose_bin(self, epoch: int, step: int, taken: list[int]) -> int | None:
        remaining = [self._batches_in(q) - -(-t // self.batch_size)
                     for q, t in zip(self._per_rank, taken, strict=True)]
        total = sum(remaining)
        if total <= 0:
            return None
        if len(self._bins) == 1:
            return 0
        u = _gen(self.seed, "bin", epoch, step).random()
        acc = np.cumsum(remaining) / total
        return int(np.searchsorted(acc, u, side="right"))

    def _assemble(self, pieces, epoch: int, step: int) -> dict:
        import torch

        ids = np.concatenate([a["input_ids"][r] for a, r in pieces])
        width = ids.shape[1]
        seg = np.concatenate([a["segment_ids"][r] for a, r in pieces])
        nt = np.concatenate([a["num_tokens"][r] for a, r in pieces])
        nsp = np.concatenate([a["next_sentence_labels"][r] for a, r in pieces])
        static = all("masked_lm_positions" in a for a, _ in pieces)
        B = len(ids)
        m = self.pad_to_multiple
        Lp = min(width, int(-(-int(nt.max()) // m) * m))
        ids = np.ascontiguousarray(ids[:, :Lp])
        seg = seg[:, :Lp]
        j = np.arange(Lp)[None, :]
        attn = (j < nt[:, None])
        labels = np.full((B, Lp), -1, dtype=np.int64)
        if static:
            pos = np.concatenate([a["masked_lm_positions"][r] for a, r in pieces])
            mid = np.concatenate([a["masked_lm_ids"][r] for a, r in pieces])
        if static and self.masking == "static":
            valid = pos > 0  # position 0 is [CLS], never masked: 0 marks padding
            rr = np.nonzero(valid)[0]
            labels[rr, pos[valid]] = mid[valid]
        else:
            if static:  # restore the original tokens before masking afresh
                valid = pos > 0
                rr = np.nonzero(valid)[0]
                ids[rr, pos[valid]] = mid[valid]
            vocab = self.vocab
            specials = np.array([vocab["[CLS]"], vocab["[SEP]"]])
            cand = attn & ~np.isin(ids, specials)
            gen = _gen(self.seed, "mask", epoch, self.rank, step)
            p, lab = mask_instances(ids, cand, nt, self._mask_cfg, len(vocab), vocab["[MASK]"],
                                    gen)
            valid = p > 0
            rr = np.nonzero(valid)[0]
            labels[rr, p[valid]] = lab[valid]
        return {
            "input_ids": torch.from_numpy(ids.astype(np.int64)),
            "token_type_ids": torch.from_numpy(seg.astype(np.int64)),
            "attention_mask": torch.from_numpy(attn.astype(np.int64)),
            "masked_lm_labels": torch.from_numpy(labels),
            "next_sentence_labels": torch.from_numpy(nsp.astype(np.int64)),
        }

    def _generate(self, epoch: int, step: int, taken: list[int]) -> Iterator[tuple[dict, dict]]:
        """Yield (batch, position after it) from a position, forever."""
        taken = list(taken)
        while True:
            bi = self._choose_bin(epoch, step, taken)
            if bi is None:
                epoch, step, taken = epoch + 1, 0, [0] * len(self._bins)
                continue
            count = min(self.batch_size, self._per_rank[bi] - taken[bi])
            pieces = self._take(epoch, bi, taken[bi], count)
            batch = self._assemble(pieces, epoch, step)
            taken[bi] += count
            step += 1
            yield batch, {"epoch": epoch, "step": step, "taken": list(taken)}

    def __iter__(self) -> Iterator[dict]:
        gen = self._generate(self._epoch, self._step, self._taken)
        if self.num_workers <= 0:
            for batch, pos in gen:
                self._set_pos(pos)
                yield batch
            return
        yield from self._prefetched(gen)

    def _prefetched(self, gen) -> Iterator[dict]:
        q: queue.Queue = queue.Queue(maxsize=max(2, 2 * self.num_workers))
        stop = threading.Event()

        def work():
            try:
                for item in gen:
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as e:  # surfaced in the consumer
                q.put(e)

        t = threading.Thread(target=work, name="bertforge-prefetch", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                batch, pos = item
                self._set_pos(pos)
                yield batch
        finally:
            stop.set()
            t.join(timeout=5)

    def _set_pos(self, pos: dict) -> None:
        self._epoch, self._step, self._taken = pos["epoch"], pos["step"], list(pos["taken"])

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """JSON-able position: the next batch after ``load_state_dict`` is the next unseen one."""
        shards = []
        for bi, b in enumerate(self._bins):
            # the shard and offset of this rank's next sample in this bin (informational)
            pos, where = 0, None
            for fi, n in self._segments(self._epoch, bi):
                if self._taken[bi] < pos + n:
                    where = {"shard": os.path.basename(b.files[fi]),
                             "offset": self._taken[bi] - pos}
                    break
                pos += n
            shards.append({"bin": b.bin_id, "taken": self._taken[bi],
                           "order": [os.path.basename(b.files[i])
                                     for i in self._file_order(self._epoch, bi)],
                           "next": where})
        return {"version": 1, "epoch": self._epoch, "step": self._step,
                "taken": list(self._taken), "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "batch_size": self.batch_size,
                "num_files": sum(len(b.files) for b in self._bins), "bins": shards,
                "rng": {"kind": "counter", "key": [self.seed, self._epoch, self._step]}}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (same files, seed, rank split and batch size)."""
        if not isinstance(state, dict) or not {"epoch", "step", "taken"} <= set(state):
            raise LoaderStateMismatch("format", sorted(state) if isinstance(state, dict) else
                                      type(state).__name__, "epoch, step, taken")
        for k in ("seed", "world_size", "batch_size", "num_files"):
            mine = self.seed if k == "seed" else self.world_size if k == "world_size" else \
                self.batch_size if k == "batch_size" else sum(len(b.files) for b in self._bins)
            if k in state and state[k] != mine:
                raise LoaderStateMismatch(k, state[k], mine)
        saved_files = {n for b in state.get("bins", []) for n in b.get("order", [])}
        my_files = {os.path.basename(f) for b in self._bins for f in b.files}
        if saved_files - my_files:  # shards the saved position refers to are not here
            raise LoaderStateMismatch("files", min(saved_files - my_files), min(my_files))
        taken = list(state["taken"])
        if len(taken) != len(self._bins):
            raise LoaderStateMismatch("bins", len(taken), len(self._bins))
        self._set_pos({"epoch": int(state["epoch"]), "step": int(state["step"]), "taken": taken})
