"""NVIDIA's legacy HDF5 pretraining shards (static masking), read and written.

One file per shard, gzip-compressed datasets (N instances, L max_seq_length,
P max_predictions_per_seq):

    input_ids            [N, L] int32   [CLS] A [SEP] B [SEP], 0 padding
    input_mask           [N, L] int8    1 token, 0 padding
    segment_ids          [N, L] int8    0 for A (and padding), 1 for B
    masked_lm_positions  [N, P] int32   sorted, 0 = unused slot
    masked_lm_ids        [N, P] int32   original ids at those positions, 0 = unused
    next_sentence_labels [N]    int8    1 = B is a random sentence

NVIDIA's ``pretraining_dataset`` reads these files, and this module reads theirs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bertforge.data.instances import InstanceSet
from bertforge.errors import DataError
from bertforge.files import atomic_path

__all__ = ["HDF5_KEYS", "HDF5_DTYPES", "write_hdf5_shard", "read_hdf5_shard",
           "hdf5_num_samples"]

HDF5_KEYS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions",
             "masked_lm_ids", "next_sentence_labels")
HDF5_DTYPES = {"input_ids": np.int32, "input_mask": np.int8, "segment_ids": np.int8,
               "masked_lm_positions": np.int32, "masked_lm_ids": np.int32,
               "next_sentence_labels": np.int8}


def write_hdf5_shard(path: str | os.PathLike, instances: InstanceSet,
                     compression: str | None = "gzip", compression_opts: int | None = 1,
                     shuffle: bool = True) -> Path:
    """Write ``instances`` to ``path`` in NVIDIA's schema, atomically.

    gzip level 1 behind HDF5's byte-shuffle filter: the small integers' zero high bytes end
    up together, so this writes in less CPU time than NVIDIA's plain gzip (level 4) and the
    files are smaller. Both filters are built into HDF5: any h5py reads them.
    """
    import h5py

    if instances.masked_lm_positions.shape[1] == 0:
        raise DataError("HDF5 shards need static masking (masked_lm_positions)")
    arrays = {
        "input_ids": instances.input_ids,
        "input_mask": instances.input_mask(),
        "segment_ids": instances.segment_ids(),
        "masked_lm_positions": instances.masked_lm_positions,
        "masked_lm_ids": instances.masked_lm_ids,
        "next_sentence_labels": instances.next_sentence_labels,
    }
    out = Path(path)
    # The file is built in memory and written with one plain write (same bytes): when the
    # disk fills, HDF5's own I/O fails inside object destructors and can crash the
    # interpreter, while a plain write raises OSError(ENOSPC), reported by atomic_path.
    # (the "core" driver without backing store keeps the whole file in memory)
    with h5py.File(out.name, "w", driver="core", backing_store=False) as f:
        for key in HDF5_KEYS:
            data = np.ascontiguousarray(arrays[key], dtype=HDF5_DTYPES[key])
            kw = {}
            if compression and data.size:
                kw = {"compression": compression, "compression_opts": compression_opts,
                      "shuffle": shuffle}
            f.create_dataset(key, data=data, dtype=HDF5_DTYPES[key], **kw)
        f.flush()
        image = f.id.get_file_image()
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        fh.write(image)
    return out


def read_hdf5_shard(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All six arrays of one shard as numpy (dtypes as stored), validated.

    A missing, truncated or malformed file raises DataError naming it.
    """
    import h5py

    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            missing = [k for k in HDF5_KEYS if k not in f]
            if missing:
                raise DataError(f"HDF5 shard {p} lacks dataset(s) {', '.join(missing)}")
            arrays = {k: f[k][()] for k in HDF5_KEYS}
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"HDF5 shard {p} does not exist") from None
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise DataError(f"HDF5 shard {p} is corrupt or truncated ({e})") from None
    n = arrays["input_ids"].shape[0]
    if arrays["input_ids"].ndim != 2:
        raise DataError(f"HDF5 shard {p}: input_ids must be 2-D")
    L = arrays["input_ids"].shape[1]
    P = arrays["masked_lm_positions"].shape[1] if arrays["masked_lm_positions"].ndim == 2 else -1
    want = {"input_ids": (n, L), "input_mask": (n, L), "segment_ids": (n, L),
            "masked_lm_positions": (n, P), "masked_lm_ids": (n, P), "next_sentence_labels": (n,)}
    for k, shape in want.items():
        if arrays[k].shape != shape:
            raise DataError(f"HDF5 shard {p}: {k} has shape {arrays[k].shape}, expected {shape}")
    return arrays


def hdf5_num_samples(path: str | os.PathLike) -> int:
    """Number of instances in a shard without reading the data."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f["input_ids"].shape[0])
    except (OSError, KeyError) as e:
        raise DataError(f"HDF5 shard {path} is corrupt or truncated ({e})") from None
