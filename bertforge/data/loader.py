"""Resumable pretraining data loader over HDF5 and Parquet shards: one global sample order,
however it is split over processes and micro-batches.

Dimensions: G global batch (sequences per optimizer step over all ranks), W ranks, A
accumulation steps, b = G / (W A) micro-batch, K lanes, L' padded batch length.

The order of samples depends on the seed, the shards and G, never on W or A:
  * a bin's shards (one bin unless Parquet is binned) are dealt to K *lanes* per epoch: the
    shard list is permuted by (seed, epoch, bin) and lane k takes shards k, k+K, ... (whole
    files, each read once); with fewer shards than lanes, every lane reads every shard and
    takes every K-th row. Inside a shard, rows are shuffled by (seed, epoch, bin, shard).
    Each lane keeps the same number of rows per epoch (the smallest lane's; the few extra
    are skipped).
  * global batch s of a bin takes the next G/K rows of every lane, lane 0 first. Rank r of W
    takes positions [r G/W, (r+1) G/W) of it and cuts them into A micro-batches of b. With K
    a multiple of W a rank's positions are K/W whole lanes, so it opens only its lanes' shards
    (I/O per rank = its share); with K < W the ranks of one lane each read its shards.
  * K is fixed when a run starts and kept in the loader state: by default the largest divisor
    of G that is at most :data:`MAX_LANES` and at most the shards per bin; ``lanes=W`` gives
    the rank-sharded order of NVIDIA's loader (rank r reads its own shards, the order of
    bertforge before the global order), which ``--loss_normalization micro_batch`` keeps.
  * binned Parquet (``shard-<i>.parquet_<bin>``): each global batch comes from one bin, drawn
    with probability proportional to its remaining batches by an RNG keyed by (seed, epoch,
    step), the same on every rank.
  * dynamic masking draws each sequence's masks from an RNG keyed by the sequence itself
    (seed, epoch, bin, shard, row), so a sequence gets the same masks on any rank
    (``mask_seeding="rank_step"`` keeps the earlier per-rank, per-micro-batch stream).
The position is therefore (epoch, steps taken, steps taken per bin): ``state_dict`` holds
that, the same on every rank, and after ``load_state_dict`` the next step is exactly the next
unseen one, for any W and A with the same G."""

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

__all__ = ["PretrainingDataLoader", "discover_shards", "load_shard_arrays", "LoaderStateMismatch",
           "default_lanes", "MAX_LANES"]


class LoaderStateMismatch(DataError):
    """A saved loader position that does not fit this loader: ``key`` differs
    (``global_batch_size``, ``seed``, ``files``, ``bins``, ``format``, ``step``), ``saved`` vs
    ``current``."""

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


#: The most lanes a default global order has: ranks up to this many read only their share of
#: the shards; each rank holds one shard per lane it reads (K / W of them) in memory.
MAX_LANES = 64


def default_lanes(global_batch_size: int, shards_per_bin: int) -> int:
    """K of a new run: the largest divisor of G that is at most MAX_LANES and the shards of
    the smallest bin (a lane then reads whole shards)."""
    cap = max(1, min(MAX_LANES, shards_per_bin, global_batch_size))
    return max(d for d in range(1, cap + 1) if global_batch_size % d == 0)


@dataclass
class _Bin:
    bin_id: int | None
    files: list[str]
    sizes: list[int]


def _stack_rows(pieces: list[tuple], key: str) -> np.ndarray:
    """The ``key`` rows of ``pieces`` stacked; [N, W] arrays of different widths (shards of one
    bin, each as wide as its own longest sequence) are zero-padded to the widest first (0 is
    the padding of token ids, segments and mask positions alike)."""
    parts = [a[key][r] for a, _, r in pieces]
    width = max(p.shape[1] for p in parts)
    return np.concatenate([p if p.shape[1] == width else np.pad(p, ((0, 0), (0, width - p.shape[1])))
                           for p in parts])


class PretrainingDataLoader:
    """Endless iterator of pretraining micro-batches (dicts of torch tensors), resumable.

    Args:
        files: shard paths, or one directory (see :func:`discover_shards`), or one file.
        batch_size: b, sequences per micro-batch on this rank.
        accumulation_steps: A, micro-batches per optimizer step; the global batch is
            G = b x A x world_size. Iteration yields A micro-batches per step.
        vocab_file: needed for Parquet (tokens are text) and for dynamic masking.
        rank, world_size: this process's share of every global batch.
        seed: all randomness derives from it.
        masking: "static" uses the masks in the files (dynamic for Parquet without masks);
            "dynamic" re-masks every time a sample is drawn.
        max_predictions_per_seq, masked_lm_prob: dynamic masking (Google's count rule,
            80/10/10).
        pad_to_multiple: L' = longest sequence in the micro-batch rounded up to this, capped
            at the shard width.
        num_workers: > 0 builds batches in a background thread (same batches, same order).
        lanes: K (see the module docstring); None picks :func:`default_lanes`. A loaded
            state's K replaces it.
        mask_seeding: dynamic masks from one RNG per sequence, keyed by the sequence
            ("sequence", the same masks for any split), or one RNG per micro-batch keyed by
            (epoch, rank, micro-batch index), over its padded width ("rank_step": the masks of
            bertforge before the global order, for reproducing its runs with ``lanes`` = W).

    Batches: input_ids, token_type_ids, attention_mask (1 token, 0 pad),
    masked_lm_labels (-1 where not masked) all [b, L'] long; next_sentence_labels [b] long.
    """

    def __init__(self, files: list[str] | str, *, batch_size: int, accumulation_steps: int = 1,
                 vocab_file: str | None = None, rank: int = 0, world_size: int = 1,
                 seed: int = 12345, masking: str = "static", max_predictions_per_seq: int = 20,
                 masked_lm_prob: float = 0.15, pad_to_multiple: int = 8, num_workers: int = 0,
                 lanes: int | None = None, mask_seeding: str = "sequence"):
        if isinstance(files, (str, os.PathLike)):
            files = discover_shards(files) if os.path.isdir(files) else [str(files)]
        files = [str(f) for f in files]
        if not files:
            raise DataError("no shard files given")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if accumulation_steps < 1:
            raise DataError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside [0, {world_size})")
        if masking not in ("static", "dynamic"):
            raise DataError(f"masking must be 'static' or 'dynamic', got {masking!r}")
        if mask_seeding not in ("sequence", "rank_step"):
            raise DataError(f"mask_seeding must be 'sequence' or 'rank_step', got {mask_seeding!r}")
        self.mask_seeding = mask_seeding
        self.batch_size = batch_size
        self.accumulation_steps = accumulation_steps
        self.global_batch_size = batch_size * accumulation_steps * world_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.masking = masking
        self.pad_to_multiple = max(1, pad_to_multiple)
        self.num_workers = num_workers
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
        self._epoch = 0
        self._step = 0
        self._taken = [0] * len(self._bins)  # global batches taken from each bin this epoch
        self._files: dict[str, dict] = {}  # path -> arrays of the shards the lanes are reading
        self._lane_file: dict[tuple[int, int], str] = {}  # (bin, lane) -> its current shard
        self._first_shape: dict[int, tuple[str, tuple]] = {}  # bin -> (a shard, its L and P)
        self._perm_cache: dict[tuple, np.ndarray] = {}
        self.rows_read = 0  # rows loaded from shards by this rank (its I/O)
        self._set_lanes(lanes if lanes is not None else
                        default_lanes(self.global_batch_size, min(len(b.files) for b in self._bins)))

    # ------------------------------------------------------------------ sizes and order

    def _set_lanes(self, lanes: int) -> None:
        G, W = self.global_batch_size, self.world_size
        if lanes < 1 or G % lanes:
            raise LoaderStateMismatch("lanes", lanes, f"a divisor of the global batch {G}")
        self.lanes = lanes
        self._width = G // lanes  # rows of each lane in a global batch
        # samples per lane per epoch (per bin), and global batches per bin per epoch
        self._per_lane = [self._lane_quota(b) for b in self._bins]
        self._steps_per_bin = [q // self._width for q in self._per_lane]
        if sum(self._steps_per_bin) == 0:
            raise DataError(f"the shards hold too few samples for one global batch of {G} "
                            f"sequences ({lanes} lane(s) of {self._width})")
        # this rank's positions [r G/W, (r+1) G/W) of a global batch, as (lane, lo, hi)
        lo, hi = self.rank * G // W, (self.rank + 1) * G // W
        self._slices = [(k, max(lo - k * self._width, 0), min(hi - k * self._width, self._width))
                        for k in range(lo // self._width, -(-hi // self._width))]
        self._perm_cache.clear()

    def _lane_quota(self, b: _Bin) -> int:
        K = self.lanes
        if len(b.files) >= K:
            # lanes get len // K or len // K + 1 files; sizes differ by <= 1 when balanced:
            # every lane can give the sum of the smallest len // K sizes, whatever the order
            return int(sum(sorted(b.sizes)[: len(b.files) // K]))
        return sum(b.sizes) // K

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank yields per epoch (the same on every rank)."""
        return sum(self._steps_per_bin) * self.batch_size * self.accumulation_steps

    def _file_order(self, epoch: int, bi: int, lane: int) -> list[int]:
        b = self._bins[bi]
        order = _gen(self.seed, "files", epoch, b.bin_id).permutation(len(b.files)).tolist()
        if len(b.files) >= self.lanes:
            return order[lane :: self.lanes]
        return order

    def _segments(self, epoch: int, bi: int, lane: int) -> list[tuple[int, int]]:
        """(file index, rows it gives the lane) in the lane's epoch order."""
        b = self._bins[bi]
        K = self.lanes
        out = []
        for fi in self._file_order(epoch, bi, lane):
            n = b.sizes[fi]
            if len(b.files) < K:
                n = len(range(lane, n, K))
            out.append((fi, n))
        return out

    def _rows_of(self, epoch: int, bi: int, fi: int, lane: int) -> np.ndarray:
        strided = len(self._bins[bi].files) < self.lanes
        key = (epoch, bi, fi, lane if strided else None)
        if key in self._perm_cache:
            return self._perm_cache[key]
        n_file = self._bins[bi].sizes[fi]
        perm = _gen(self.seed, "rows", epoch, self._bins[bi].bin_id, fi).permutation(n_file)
        if strided:
            perm = perm[lane :: self.lanes]
        if len(self._perm_cache) > 4 * len(self._bins) * max(1, len(self._slices)):
            self._perm_cache.clear()
        self._perm_cache[key] = perm
        return perm

    def _load(self, bi: int, path: str) -> dict:
        arrays = self._files.get(path)
        if arrays is not None:
            return arrays
        arrays = load_shard_arrays(path, self.vocab)
        self.rows_read += len(arrays["input_ids"])
        if not _is_parquet(path):  # HDF5 rows are padded to the shard's max_seq_length
            shape = (arrays["input_ids"].shape[1], arrays["masked_lm_positions"].shape[1])
            first, first_shape = self._first_shape.setdefault(bi, (path, shape))
            if shape != first_shape:
                raise DataError(f"the shards were made with different settings: {first} has "
                                f"max_seq_length {first_shape[0]} and max_predictions_per_seq "
                                f"{first_shape[1]}, {path} {shape[0]} and {shape[1]}; keep one "
                                "data set per folder")
        self._files[path] = arrays
        return arrays

    def _take(self, epoch: int, bi: int, lane: int, start: int, count: int) -> list[tuple]:
        """Rows [start, start+count) of a lane's epoch stream of bin ``bi``, as pieces
        (arrays, file index, rows)."""
        b = self._bins[bi]
        pieces = []
        pos = 0
        for fi, n in self._segments(epoch, bi, lane):
            lo, hi = max(start, pos), min(start + count, pos + n)
            if lo < hi:
                rows = self._rows_of(epoch, bi, fi, lane)[lo - pos : hi - pos]
                arrays = self._load(bi, b.files[fi])
                if len(arrays["input_ids"]) != b.sizes[fi]:
                    raise DataError(f"shard {b.files[fi]} holds {len(arrays['input_ids'])} "
                                    f"samples, .num_samples.json says {b.sizes[fi]}")
                self._lane_file[(bi, lane)] = b.files[fi]
                pieces.append((arrays, fi, rows))
            pos += n
            if pos >= start + count:
                break
        return pieces

    def _evict(self) -> None:
        """Keep in memory only the shards some lane is still reading."""
        live = set(self._lane_file.values())
        for path in [p for p in self._files if p not in live]:
            del self._files[path]

    # ------------------------------------------------------------------ batches

    def _choose_bin(self, epoch: int, step: int, taken: list[int]) -> int | None:
        remaining = [s - t for s, t in zip(self._steps_per_bin, taken, strict=True)]
        total = sum(remaining)
        if total <= 0:
            return None
        if len(self._bins) == 1:
            return 0
        u = _gen(self.seed, "bin", epoch, step).random()
        acc = np.cumsum(remaining) / total
        return int(np.searchsorted(acc, u, side="right"))

    def _step_pieces(self, epoch: int, bi: int, t: int) -> list[tuple]:
        """This rank's rows of global batch ``t`` of bin ``bi``, in position order."""
        pieces = []
        for lane, lo, hi in self._slices:
            pieces += self._take(epoch, bi, lane, t * self._width + lo, hi - lo)
        return pieces

    @staticmethod
    def _cut(pieces: list[tuple], size: int) -> list[list[tuple]]:
        """Split a list of pieces into consecutive groups of ``size`` rows."""
        out, cur, room = [], [], size
        for arrays, fi, rows in pieces:
            while len(rows):
                part, rows = rows[:room], rows[room:]
                cur.append((arrays, fi, part))
                room -= len(part)
                if room == 0:
                    out.append(cur)
                    cur, room = [], size
        if cur:
            out.append(cur)
        return out

    def _assemble(self, pieces, epoch: int, bin_id: int | None, micro: int) -> dict:
        """One micro-batch from ``pieces``; ``micro`` is its index in the epoch on this rank
        (the key of the masks with ``mask_seeding="rank_step"``)."""
        import torch

        ids = _stack_rows(pieces, "input_ids")
        width = ids.shape[1]
        seg = _stack_rows(pieces, "segment_ids")
        nt = np.concatenate([a["num_tokens"][r] for a, _, r in pieces])
        nsp = np.concatenate([a["next_sentence_labels"][r] for a, _, r in pieces])
        static = all("masked_lm_positions" in a for a, _, _ in pieces)
        B = len(ids)
        m = self.pad_to_multiple
        Lp = min(width, int(-(-int(nt.max()) // m) * m))
        ids = np.ascontiguousarray(ids[:, :Lp])
        seg = seg[:, :Lp]
        j = np.arange(Lp)[None, :]
        attn = (j < nt[:, None])
        labels = np.full((B, Lp), -1, dtype=np.int64)
        if static:
            pos = _stack_rows(pieces, "masked_lm_positions")
            mid = _stack_rows(pieces, "masked_lm_ids")
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
            if self.mask_seeding == "rank_step":  # the earlier stream: one RNG per micro-batch
                gen = _gen(self.seed, "mask", epoch, self.rank, micro)
                p, lab = mask_instances(ids, cand, nt, self._mask_cfg, len(vocab), vocab["[MASK]"], gen)
                valid = p > 0
                labels[np.nonzero(valid)[0], p[valid]] = lab[valid]
            else:  # one RNG per sequence, keyed by the sequence: the same masks on any rank/split
                keys = [(fi, int(row)) for _, fi, r in pieces for row in r]
                for i, (fi, row) in enumerate(keys):
                    gen = _gen(self.seed, "mask", epoch, bin_id, fi, row)
                    n = int(nt[i])  # the row alone, not the micro-batch's padded width
                    p, lab = mask_instances(ids[i : i + 1, :n], cand[i : i + 1, :n], nt[i : i + 1],
                                            self._mask_cfg, len(vocab), vocab["[MASK]"], gen)
                    valid = p[0] > 0
                    labels[i, p[0][valid]] = lab[0][valid]
        return {
            "input_ids": torch.from_numpy(ids.astype(np.int64)),
            "token_type_ids": torch.from_numpy(seg.astype(np.int64)),
            "attention_mask": torch.from_numpy(attn.astype(np.int64)),
            "masked_lm_labels": torch.from_numpy(labels),
            "next_sentence_labels": torch.from_numpy(nsp.astype(np.int64)),
        }

    def _generate(self, epoch: int, step: int, taken: list[int]) -> Iterator[tuple[dict, dict | None]]:
        """Yield (micro-batch, position after its step, or None inside a step), forever."""
        taken = list(taken)
        while True:
            bi = self._choose_bin(epoch, step, taken)
            if bi is None:
                epoch, step, taken = epoch + 1, 0, [0] * len(self._bins)
                continue
            groups = self._cut(self._step_pieces(epoch, bi, taken[bi]), self.batch_size)
            batches = [self._assemble(g, epoch, self._bins[bi].bin_id, step * self.accumulation_steps + i)
                       for i, g in enumerate(groups)]
            self._evict()
            taken[bi] += 1
            step += 1
            for i, batch in enumerate(batches):
                last = i == len(batches) - 1
                yield batch, ({"epoch": epoch, "step": step, "taken": list(taken)} if last else None)

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

    def _set_pos(self, pos: dict | None) -> None:
        if pos is not None:
            self._epoch, self._step, self._taken = pos["epoch"], pos["step"], list(pos["taken"])

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """JSON-able global position (the same on every rank), taken after a whole step: the
        next step after ``load_state_dict`` is exactly the next unseen one, for any split of
        the same global batch. Inside a step it is the position before that step."""
        bins = [{"bin": b.bin_id, "steps": self._taken[bi],
                 "files": sorted(os.path.basename(f) for f in b.files)}
                for bi, b in enumerate(self._bins)]
        return {"version": 2, "epoch": self._epoch, "step": self._step, "taken": list(self._taken),
                "lanes": self.lanes, "global_batch_size": self.global_batch_size, "seed": self.seed,
                "num_files": sum(len(b.files) for b in self._bins), "bins": bins}

    def load_state_dict(self, state: dict | list) -> None:
        """Continue from ``state`` (same files, seed and global batch; any rank split).

        Accepts the per-rank list of positions (version 1) that bertforge checkpoints held
        before the order was global: those were written in the rank-sharded order (K = their
        number of ranks), which is kept for the rest of the run.
        """
        if isinstance(state, list) and state and all(isinstance(s, dict) for s in state):
            state = self._from_rank_states(state)
        if not isinstance(state, dict) or not {"epoch", "step", "taken"} <= set(state):
            raise LoaderStateMismatch("format", sorted(state) if isinstance(state, dict) else
                                      type(state).__name__, "epoch, step, taken")
        if state.get("version", 1) < 2:
            state = self._from_rank_states([state])
        mine = {"seed": self.seed, "global_batch_size": self.global_batch_size,
                "num_files": sum(len(b.files) for b in self._bins)}
        for k, v in mine.items():
            if k in state and state[k] != v:
                raise LoaderStateMismatch(k, state[k], v)
        saved_files = {n for b in state.get("bins", []) for n in b.get("files", b.get("order", []))}
        my_files = {os.path.basename(f) for b in self._bins for f in b.files}
        if saved_files - my_files:  # shards the saved position refers to are not here
            raise LoaderStateMismatch("files", min(saved_files - my_files), min(my_files))
        taken = [int(t) for t in state["taken"]]
        if len(taken) != len(self._bins):
            raise LoaderStateMismatch("bins", len(taken), len(self._bins))
        self._set_lanes(int(state.get("lanes", self.lanes)))
        self._set_pos({"epoch": int(state["epoch"]), "step": int(state["step"]), "taken": taken})

    def _from_rank_states(self, states: list[dict]) -> dict:
        """A version-1 position (one per rank, rank-sharded order over W ranks) as a global one:
        K = W lanes, and the samples each rank took per bin are whole global batches of G/K."""
        s = states[0]
        if not {"epoch", "step", "taken"} <= set(s):
            raise LoaderStateMismatch("format", sorted(s), "epoch, step, taken")
        lanes = int(s.get("world_size", len(states)))
        G = self.global_batch_size
        width = G // lanes if lanes and G % lanes == 0 else 0
        if width == 0 or any(int(t) % width for t in s["taken"]):
            # written with another global batch (or inside a step): it cannot be continued
            old = lanes * int(s.get("batch_size", 0))
            raise LoaderStateMismatch("global_batch_size", f"a multiple of {old}", G)
        out = {"version": 2, "epoch": s["epoch"], "taken": [int(t) // width for t in s["taken"]],
               "step": sum(int(t) // width for t in s["taken"]), "lanes": lanes,
               "bins": s.get("bins", [])}
        out.update({k: s[k] for k in ("seed", "num_files") if k in s})
        return out
