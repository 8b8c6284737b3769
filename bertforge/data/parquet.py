"""LDDL's Parquet pretraining shards, read and written (so LDDL's loader reads ours).

Columns (one row per instance):
    A, B                 string   WordPiece tokens joined by single spaces (masked tokens
                                  already replaced when statically masked)
    is_random_next       bool
    num_tokens           uint16   len(A) + len(B) + 3
    masked_lm_positions  binary   ``np.save`` bytes of a uint16 array (static masking)
    masked_lm_labels     string   original tokens at those positions, space-joined
    bin_id               int64    only in binned output
Files: ``shard-<i>.parquet`` or, binned, ``shard-<i>.parquet_<bin>`` with
``bin = min((num_tokens - 1) // bin_size, max_seq_length // bin_size - 1)``, and
``.num_samples.json`` mapping each file name to its row count.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from bertforge.data.instances import InstanceSet
from bertforge.errors import DataError
from bertforge.files import atomic_path

__all__ = ["parquet_schema", "npy_bytes", "write_parquet_shard", "read_parquet_shard",
           "parquet_to_arrays", "bin_ids_for", "parquet_num_samples"]


def parquet_schema(masked: bool, binned: bool):
    import pyarrow as pa

    cols = [("A", pa.string()), ("B", pa.string()), ("is_random_next", pa.bool_()),
            ("num_tokens", pa.uint16())]
    if masked:
        cols += [("masked_lm_positions", pa.binary()), ("masked_lm_labels", pa.string())]
    if binned:
        cols.append(("bin_id", pa.int64()))
    return pa.schema(cols)


_NPY_HEADERS: dict[int, bytes] = {}


def npy_bytes(a: np.ndarray) -> bytes:
    """``np.save`` bytes of a 1-D uint16 array (cached header; same bytes as np.save)."""
    a = np.ascontiguousarray(a, dtype=np.uint16)
    n = a.shape[0]
    head = _NPY_HEADERS.get(n)
    if head is None:
        buf = io.BytesIO()
        np.save(buf, np.zeros(n, dtype=np.uint16))
        head = buf.getvalue()[: len(buf.getvalue()) - 2 * n]
        _NPY_HEADERS[n] = head
    return head + a.tobytes()


def _npy_uint16(blob: bytes) -> np.ndarray:
    # format 1.0/2.0: magic(6) ver(2) then header length (2 or 4 bytes, little endian)
    if blob[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy blob")
    if blob[6] == 1:
        hl, start = int.from_bytes(blob[8:10], "little"), 10
    else:
        hl, start = int.from_bytes(blob[8:12], "little"), 12
    header = blob[start : start + hl]
    if b"'<u2'" not in header and b"'|u2'" not in header:
        return np.load(io.BytesIO(blob)).astype(np.uint16)
    return np.frombuffer(blob, dtype="<u2", offset=start + hl)


def bin_ids_for(num_tokens: np.ndarray, bin_size: int, max_seq_length: int) -> np.ndarray:
    """LDDL's bin of each instance: ``min((num_tokens-1)//bin_size, nbins-1)``."""
    nbins = max_seq_length // bin_size
    return np.minimum((np.asarray(num_tokens, np.int64) - 1) // bin_size, nbins - 1)


def _join_rows(vocab_arr, ids_flat: np.ndarray, counts: np.ndarray):
    """Space-joined token strings per row from flat ids and per-row counts (pyarrow)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    toks = vocab_arr.take(pa.array(ids_flat.astype(np.int32, copy=False)))
    lists = pa.ListArray.from_arrays(pa.array(offsets), toks)
    return pc.binary_join(lists, " ")


def write_parquet_shard(path: str | os.PathLike, instances: InstanceSet, vocab_tokens,
                        bin_id: int | None = None) -> Path:
    """Write ``instances`` as one LDDL Parquet file, atomically.

    ``vocab_tokens`` is the vocab as a list (index = id) or a ``pyarrow`` string array.
    Static masks are written when the set has them (P > 0).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    vocab_arr = vocab_tokens if isinstance(vocab_tokens, pa.Array) else pa.array(vocab_tokens,
                                                                                  pa.string())
    n, L = instances.input_ids.shape
    la = instances.len_a.astype(np.int64)
    nt = instances.num_tokens.astype(np.int64)
    lb = nt - la - 3
    j = np.arange(L)[None, :]
    ids = instances.input_ids
    in_a = (j >= 1) & (j <= la[:, None])
    in_b = (j >= la[:, None] + 2) & (j < nt[:, None] - 1)
    cols = {
        "A": _join_rows(vocab_arr, ids[in_a], la),
        "B": _join_rows(vocab_arr, ids[in_b], lb),
        "is_random_next": pa.array(instances.next_sentence_labels.astype(bool)),
        "num_tokens": pa.array(nt.astype(np.uint16)),
    }
    masked = instances.masked_lm_positions.shape[1] > 0
    if masked:
        pos = instances.masked_lm_positions
        valid = pos > 0
        counts = valid.sum(axis=1)
        cols["masked_lm_positions"] = pa.array(
            [npy_bytes(pos[i, : counts[i]]) for i in range(n)], pa.binary())
        cols["masked_lm_labels"] = _join_rows(vocab_arr, instances.masked_lm_ids[valid], counts)
    if bin_id is not None:
        cols["bin_id"] = pa.array(np.full(n, bin_id, dtype=np.int64))
    schema = parquet_schema(masked, bin_id is not None)
    table = pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)
    out = Path(path)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


def read_parquet_shard(path: str | os.PathLike):
    """The raw ``pyarrow.Table`` of one shard; DataError naming the file when unreadable."""
    import pyarrow.parquet as pq

    p = Path(path)
    try:
        table = pq.read_table(p)
    except FileNotFoundError:
        raise DataError(f"Parquet shard {p} does not exist") from None
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError on damage
        raise DataError(f"Parquet shard {p} is corrupt or truncated ({e})") from None
    for col in ("A", "B", "is_random_next"):
        if col not in table.column_names:
            raise DataError(f"Parquet shard {p} lacks column {col!r} (not LDDL's schema)")
    return table


def parquet_num_samples(path: str | os.PathLike) -> int:
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception as e:
        raise DataError(f"Parquet shard {path} is corrupt or truncated ({e})") from None


def parquet_to_arrays(table, vocab: dict[str, int], *, path: str = "",
                      max_seq_length: int | None = None, unk_token: str = "[UNK]"
                      ) -> dict[str, np.ndarray]:
    """Convert an LDDL table to padded id arrays (the HDF5 layout, int32/int8).

    Returns input_ids [N, L], input_mask, segment_ids, next_sentence_labels, and when the
    table has static masks masked_lm_positions/masked_lm_ids [N, P] (P = the most in any
    row, 0-padded). L is ``max_seq_length`` or the longest row. Tokens missing from the
    vocab map to [UNK].
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    vocab_arr = pa.array(list(vocab.keys()), pa.string())
    unk = vocab.get(unk_token, 0)

    def token_ids(col):
        lists = pc.split_pattern(col, " ")
        flat = pc.list_flatten(lists)
        idx = pc.index_in(flat, value_set=vocab_arr)
        ids = np.asarray(pc.fill_null(idx, unk).to_numpy(zero_copy_only=False), dtype=np.int32)
        counts = np.asarray(pc.list_value_length(lists).to_numpy(zero_copy_only=False),
                            dtype=np.int64)
        return ids, counts

    def empty_rows(col):
        """True where the row's string is empty ("" splits into [""], but holds 0 tokens)."""
        return np.asarray(pc.utf8_length(col).to_numpy(zero_copy_only=False)) == 0

    a = table.column("A").combine_chunks()
    b = table.column("B").combine_chunks()
    a_ids, la = token_ids(a)
    b_ids, lb = token_ids(b)
    a_empty, b_empty = empty_rows(a), empty_rows(b)
    if a_empty.any() or b_empty.any():
        # drop the [""] placeholders of empty segments
        keep_a = np.repeat(~a_empty, la)
        keep_b = np.repeat(~b_empty, lb)
        a_ids, b_ids = a_ids[keep_a], b_ids[keep_b]
        la, lb = np.where(a_empty, 0, la), np.where(b_empty, 0, lb)
    nt = la + lb + 3
    L = int(max_seq_length or (nt.max() if n else 0))
    if n and nt.max() > L:
        raise DataError(f"Parquet shard {path}: a row has {int(nt.max())} tokens, more than "
                        f"max_seq_length {L}")
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    j = np.arange(L)[None, :]
    in_a = (j >= 1) & (j <= la[:, None])
    in_b = (j >= la[:, None] + 2) & (j < nt[:, None] - 1)
    ids = np.zeros((n, L), dtype=np.int32)
    if n:
        ids[in_a] = a_ids
        ids[in_b] = b_ids
        ids[:, 0] = cls_id
        rows = np.arange(n)
        ids[rows, la + 1] = sep_id
        ids[rows, nt - 1] = sep_id
    out = {
        "input_ids": ids,
        "input_mask": (j < nt[:, None]).astype(np.int8),
        "segment_ids": ((j >= la[:, None] + 2) & (j < nt[:, None])).astype(np.int8),
        "next_sentence_labels": np.asarray(
            table.column("is_random_next").to_numpy(zero_copy_only=False), dtype=np.int8),
        "num_tokens": nt.astype(np.int32),
        "len_a": la.astype(np.int32),
    }
    if "masked_lm_positions" in table.column_names:
        blobs = table.column("masked_lm_positions").to_pylist()
        try:
            pos_list = [_npy_uint16(bl) for bl in blobs]
        except Exception as e:
            raise DataError(f"Parquet shard {path}: bad masked_lm_positions ({e})") from None
        counts = np.fromiter((len(x) for x in pos_list), dtype=np.int64, count=n)
        lab_ids, lab_counts = token_ids(table.column("masked_lm_labels").combine_chunks())
        lab_empty = empty_rows(table.column("masked_lm_labels").combine_chunks())
        if lab_empty.any():
            lab_ids = lab_ids[np.repeat(~lab_empty, lab_counts)]
            lab_counts = np.where(lab_empty, 0, lab_counts)
        if not np.array_equal(counts, lab_counts):
            raise DataError(f"Parquet shard {path}: masked_lm_positions and masked_lm_labels "
                            "differ in length")
        P = int(counts.max()) if n else 0
        slot = np.arange(P)[None, :] < counts[:, None]
        positions = np.zeros((n, P), dtype=np.int32)
        labels = np.zeros((n, P), dtype=np.int32)
        if n and P:
            positions[slot] = np.concatenate(pos_list).astype(np.int32)
            labels[slot] = lab_ids
        if n and P and (positions[slot] >= nt[np.nonzero(slot)[0]]).any():
            raise DataError(f"Parquet shard {path}: a masked position lies past its sequence")
        out["masked_lm_positions"] = positions
        out["masked_lm_ids"] = labels
    return out
