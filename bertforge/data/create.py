"""The create step: text files -> pretraining shards (HDF5 or Parquet), and the balance step.

Work is split by *input file*: each file is read, tokenized (Rust, batched), turned into
instances and masked with randomness keyed by (seed, file name). So the instances of a
file never depend on which process or Slurm task made them. The final shards are then
cut from all instances in file-name order by one global permutation (seeded by the seed
alone), balanced so shard sizes differ by at most one (per length bin when binned).

Single task (``world_size == 1``): everything in memory, shards written directly.
Several tasks (``--rank/--world_size``, default SLURM_PROCID/SLURM_NTASKS): each task
writes its files' instances to ``<output>/.parts/`` and a manifest; then the balance step
(:func:`balance_parts`, ``create_pretraining_data.py --balance``) makes the same final
shards a single task would have made.

A dataset is replaced only as a whole: the shards are written into a temporary folder
beside the output (``.<name>.tmp-*``, or ``.<name>.balance-<W>`` for the tasks of a
balance step) and swapped in when complete, so a run that fails (a full disk, a kill)
leaves the previous dataset as it was. An output that already holds a dataset is refused
unless ``overwrite`` (``--overwrite``) is given; one holding other files always is. The
output is locked meanwhile (``.<name>.lock`` beside it, :mod:`bertforge.outputs`):
exclusively by a single-task run, shared by the tasks of a multi-task run.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertforge.data.instances import (
    InstanceConfig,
    InstanceSet,
    build_instances,
    concat_instance_sets,
    file_seed,
    tokenize_documents,
)
from bertforge.data.text import (
    ReadStats,
    list_input_files,
    read_jsonl_documents,
    read_text_documents,
)
from bertforge.data.vocab import DATA_META, load_vocab, vocab_digest
from bertforge.errors import DataError, UserError
from bertforge.files import atomic_path, atomic_write_json, ensure_dir
from bertforge.outputs import OutputLock, atomic_dir, check_output_path, output_lock, swap_in

__all__ = [
    "InputUnit",
    "CreateResult",
    "input_units",
    "assign_units",
    "resolve_rank",
    "check_pretraining_vocab",
    "process_unit",
    "create_instance_sets",
    "shard_plan",
    "write_shards",
    "write_parts",
    "balance_parts",
    "create_pretraining_shards",
    "HDF5_PREFIX",
]

HDF5_PREFIX = "training_shard"  # NVIDIA's loader only picks files with "training" in the name
_PARTS = ".parts"
_INPUT_SUFFIXES = (".txt", ".txt.bz2", ".jsonl", ".jsonl.bz2")


@dataclass(frozen=True)
class InputUnit:
    """One input file and its key (its path relative to the input root, '/'-separated)."""

    path: Path
    key: str
    size: int


@dataclass
class CreateResult:
    num_instances: int = 0
    shards: dict[str, int] = field(default_factory=dict)  # file name -> rows
    stats: ReadStats = field(default_factory=ReadStats)
    seconds: float = 0.0
    parts_dir: Path | None = None


# ----------------------------------------------------------------------------- inputs


def input_units(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[InputUnit]:
    """The input files (text in Google's format or JSONL), keyed, sorted by key."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    units: dict[str, InputUnit] = {}
    for item in inputs:
        root = Path(item)
        for f in list_input_files(root, _INPUT_SUFFIXES):
            key = f.relative_to(root).as_posix() if root.is_dir() else f.name
            if key in units:
                raise DataError(f"two input files share the name {key!r}: {units[key].path} and {f}")
            units[key] = InputUnit(f, key, f.stat().st_size)
    return [units[k] for k in sorted(units)]


def assign_units(units: Sequence[InputUnit], rank: int, world_size: int) -> list[InputUnit]:
    """This rank's share: largest files first, each to the least loaded rank (deterministic)."""
    load = [0] * world_size
    mine = []
    for u in sorted(units, key=lambda u: (-u.size, u.key)):
        r = min(range(world_size), key=lambda i: (load[i], i))
        load[r] += u.size + 1
        if r == rank:
            mine.append(u)
    return sorted(mine, key=lambda u: u.key)


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """--rank/--world_size, else SLURM_PROCID/SLURM_NTASKS, else (0, 1)."""
    if world_size is None:
        world_size = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if rank is None:
        rank = int(os.environ.get("SLURM_PROCID", "0") or 0)
    if world_size < 1:
        raise UserError(f"--world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise UserError(f"--rank {rank} is outside [0, {world_size})")
    return rank, world_size


def check_pretraining_vocab(vocab_file: str | os.PathLike) -> dict[str, int]:
    """Load a vocab for pretraining data: needs [PAD] (id 0), [UNK], [CLS], [SEP], [MASK]."""
    vocab = load_vocab(vocab_file, required=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    if vocab["[PAD]"] != 0:
        raise DataError(f"vocab file {vocab_file}: [PAD] must be the first token (id 0), "
                        f"it is id {vocab['[PAD]']}")
    return vocab


# ----------------------------------------------------------------------------- per file

_TOKENIZER = None  # one per worker process


def _worker_init(vocab_file: str, do_lower_case: bool) -> None:
    global _TOKENIZER
    from bertforge.data.tokenization import BertTokenizer

    _TOKENIZER = BertTokenizer(vocab_file, do_lower_case=do_lower_case)


def process_unit(unit: InputUnit, cfg: InstanceConfig, tokenizer=None
                 ) -> tuple[str, InstanceSet, ReadStats]:
    """Read, tokenize and build the instances of one input file."""
    tok = tokenizer if tokenizer is not None else _TOKENIZER
    if unit.path.name.endswith((".jsonl", ".jsonl.bz2")):
        docs, stats = read_jsonl_documents(unit.path)
    else:
        docs, stats = read_text_documents(unit.path)
    corpus = tokenize_documents([d.sentences for d in docs], tok)
    special = {t: tok.vocab[t] for t in ("[CLS]", "[SEP]", "[MASK]")}
    cont = None
    if cfg.do_whole_word_mask:
        cont = np.fromiter((t.startswith("##") for t in tok.vocab), dtype=bool,
                           count=len(tok.vocab))
    inst = build_instances(corpus, cfg, key=unit.key, special_ids=special,
                           vocab_size=len(tok.vocab), continuation_ids=cont)
    return unit.key, inst, stats


def _process_star(job):
    return process_unit(*job)


def _worker_died(what: str) -> UserError:
    # A process pool (not multiprocessing.Pool, which waits forever for the task of a
    # killed worker) reports a worker killed by a signal or the OOM killer.
    return UserError(f"a worker process died while {what} (killed by a signal or the "
                     "out-of-memory killer?); no partial file is left under a final name: "
                     "run the command again, with fewer --num_workers if memory is short")


def _mp_context():
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def create_instance_sets(units: Sequence[InputUnit], cfg: InstanceConfig, *, vocab_file: str,
                         do_lower_case: bool = True, num_workers: int = 1,
                         progress: bool | None = None
                         ) -> tuple[list[tuple[str, InstanceSet]], ReadStats]:
    """Instances of every unit, in key order, with ``num_workers`` processes."""
    from tqdm import tqdm

    from bertforge.data.tokenization import BertTokenizer

    show = sys.stderr.isatty() if progress is None else progress
    stats = ReadStats()
    out: list[tuple[str, InstanceSet]] = []
    bar = tqdm(total=len(units), desc="create", unit=" files", disable=not show)
    if num_workers <= 1 or len(units) <= 1:
        tok = BertTokenizer(vocab_file, do_lower_case=do_lower_case)
        for u in units:
            key, inst, st = process_unit(u, cfg, tok)
            out.append((key, inst))
            stats.add(st)
            bar.update(1)
    else:
        # One process per worker (each with one tokenizer thread when the command line has
        # set TOKENIZERS_PARALLELISM=false: bertforge.cli.environment).
        try:
            with ProcessPoolExecutor(min(num_workers, len(units)), mp_context=_mp_context(),
                                     initializer=_worker_init,
                                     initargs=(str(vocab_file), do_lower_case)) as pool:
                for key, inst, st in pool.map(_process_star, [(u, cfg) for u in units]):
                    out.append((key, inst))
                    stats.add(st)
                    bar.update(1)
        except BrokenProcessPool:
            raise _worker_died("reading the input files") from None
    bar.close()
    out.sort(key=lambda kv: kv[0])
    return out, stats


# ----------------------------------------------------------------------------- shards


def _split_balanced(rows: np.ndarray, num_shards: int) -> list[np.ndarray]:
    n = len(rows)
    base, extra = divmod(n, num_shards)
    bounds = np.cumsum([0] + [base + (1 if i < extra else 0) for i in range(num_shards)])
    return [rows[bounds[i] : bounds[i + 1]] for i in range(num_shards)]


def _split_lddl(rows: np.ndarray, num_shards: int) -> list[np.ndarray]:
    """LDDL's loader asserts that the files of a bin hold ``m`` and ``m + 1`` samples, both
    sizes present (``min + 1 == max``), and reads ``m`` from each. A bin whose instances divide
    evenly into the shards would fail that assert, so its last instance is left out (LDDL's
    loader would drop one per file of the larger size anyway); there are at least 2 shards."""
    k = max(num_shards, 2)
    if len(rows) and len(rows) % k == 0:
        rows = rows[:-1]
    return _split_balanced(rows, k)


def shard_plan(num_tokens: np.ndarray, *, num_shards: int, seed: int, output_format: str,
               bin_size: int | None = None, max_seq_length: int | None = None,
               single_file: str | None = None) -> list[tuple[str, np.ndarray, int | None]]:
    """(file name, row indices, bin id) of every final shard.

    Rows are the instances concatenated in input-key order. One permutation seeded by
    ``seed`` orders them; each bin (or the whole set) is cut into ``num_shards``
    contiguous slices whose sizes differ by at most one; for Parquet (LDDL's format) by
    exactly one, as LDDL's loader requires (:func:`_split_lddl`).
    """
    from bertforge.data.parquet import bin_ids_for

    n = len(num_tokens)
    perm = np.random.Generator(np.random.PCG64(file_seed(seed, "", "assemble"))).permutation(n)
    if output_format == "hdf5":
        if single_file is not None:
            return [(single_file, perm, None)]
        return [(f"{HDF5_PREFIX}_{i:05d}.hdf5", rows, None)
                for i, rows in enumerate(_split_balanced(perm, num_shards))]
    if bin_size is None:
        return [(f"shard-{i}.parquet", rows, None)
                for i, rows in enumerate(_split_lddl(perm, num_shards))]
    bins = bin_ids_for(num_tokens, bin_size, max_seq_length)[perm]
    plan = []
    for b in range(max_seq_length // bin_size):
        for i, rows in enumerate(_split_lddl(perm[bins == b], num_shards)):
            plan.append((f"shard-{i}.parquet_{b}", rows, b))
    return plan


_WRITE_STATE: dict = {}


def _write_one(job) -> tuple[str, int]:
    name, rows, bin_id = job
    st = _WRITE_STATE
    inst: InstanceSet = st["instances"].take(rows)
    path = st["out_dir"] / name if st["single"] is None else Path(st["single"])
    if st["format"] == "hdf5":
        from bertforge.data.hdf5 import write_hdf5_shard

        write_hdf5_shard(path, inst)
    else:
        from bertforge.data.parquet import write_parquet_shard

        write_parquet_shard(path, inst, st["vocab_tokens"], bin_id=bin_id)
    return name, len(rows)


_SHARD_RE = re.compile(rf"^(shard-\d+\.parquet(_\d+)?|{HDF5_PREFIX}_\d+\.hdf5)$")


def _is_single_file(out: Path, output_format: str) -> bool:
    return output_format == "hdf5" and out.suffix in (".hdf5", ".h5")


def _is_dataset_file(name: str) -> bool:
    return bool(_SHARD_RE.match(name)) or name in (".num_samples.json", DATA_META, _PARTS) \
        or name.endswith((".hdf5", ".h5")) or ".parquet" in name


def refuse_existing_output(out: Path, *, overwrite: bool, single: bool, parts: bool = False) -> None:
    """UserError unless ``out`` may receive a new dataset: absent or empty, or holding a
    dataset and ``overwrite``; never when it holds files that are not part of a dataset.
    ``parts``: this run's own per-task parts (``.parts``) do not count as a dataset."""
    if single:
        if out.exists() and not overwrite:
            raise UserError(f"--output_file {out} exists; pass --overwrite to replace it (the old "
                            "file stays until the new one is complete)")
        return
    if not out.is_dir():
        return
    names = [p.name for p in out.iterdir() if not (p.name.startswith(".") and ".tmp-" in p.name)]
    other = sorted(n for n in names if not _is_dataset_file(n))
    if other:
        raise UserError(f"--output_file {out} holds files that are not part of a dataset "
                        f"({', '.join(other[:3])}{' ...' if len(other) > 3 else ''}); give a new "
                        "or empty folder")
    data = sorted(n for n in names if n != _PARTS or not parts)
    if data and not overwrite:
        shards = [n for n in data if not n.startswith(".")]
        raise UserError(f"--output_file {out} already holds a dataset ({len(shards)} shard "
                        f"file(s)); pass --overwrite to replace it (the old one stays until the "
                        "new one is complete)")


def write_shards(instances: InstanceSet, output: str | os.PathLike, *, output_format: str,
                 num_shards: int, seed: int, vocab_tokens: Sequence[str],
                 bin_size: int | None = None, rank: int = 0, world_size: int = 1,
                 num_workers: int = 1, meta: dict | None = None,
                 finalize: bool = True) -> dict[str, int]:
    """Cut ``instances`` into the final shards and write this rank's share.

    ``output`` is a directory (a fresh one: see :func:`create_pretraining_shards`), or for
    one HDF5 shard a file ending in .hdf5/.h5. With ``finalize`` (one writer) also
    ``.num_samples.json`` and the settings (:data:`DATA_META`), last.
    Returns {file name: rows} of all shards (every rank computes the same plan).
    """
    out = Path(output)
    single = None
    if output_format == "hdf5" and out.suffix in (".hdf5", ".h5"):
        if num_shards != 1:
            raise UserError(f"--output_file {out} names one file but --num_shards is {num_shards}; "
                            "give a directory")
        single = str(out)
        out_dir = ensure_dir(out.parent if str(out.parent) else ".")
    else:
        out_dir = ensure_dir(out)
    if output_format == "parquet" and bin_size is not None:
        L = instances.max_seq_length
        if bin_size < 1 or L // bin_size < 1:
            raise UserError(f"--bin_size {bin_size} must be in [1, max_seq_length={L}]")
    plan = shard_plan(instances.num_tokens, num_shards=num_shards, seed=seed,
                      output_format=output_format, bin_size=bin_size,
                      max_seq_length=instances.max_seq_length,
                      single_file=None if single is None else out.name)
    sizes = {name: len(rows) for name, rows, _ in plan}
    mine = [job for i, job in enumerate(plan) if i % world_size == rank]
    for name, _, _ in mine:  # temp files of this rank's shards left by a killed earlier run
        for f in out_dir.glob(f".{name}.tmp-*"):
            f.unlink(missing_ok=True)
    _WRITE_STATE.update(instances=instances, out_dir=out_dir, single=single,
                        format=output_format, vocab_tokens=list(vocab_tokens))
    try:
        if output_format == "parquet":
            import pyarrow as pa

            _WRITE_STATE["vocab_tokens"] = pa.array(list(vocab_tokens), pa.string())
        if num_workers > 1 and len(mine) > 1 and sys.platform.startswith("linux"):
            # forked writers share the arrays copy-on-write; gzip/parquet run in parallel
            with ProcessPoolExecutor(min(num_workers, len(mine)),
                                     mp_context=mp.get_context("fork")) as pool:
                list(pool.map(_write_one, mine))
        else:
            for job in mine:
                _write_one(job)
    except BrokenProcessPool:
        raise _worker_died("writing the shards") from None
    finally:
        _WRITE_STATE.clear()
    if finalize and single is None:
        _finalize(out_dir, sizes, meta)
    return sizes


def _finalize(out_dir: Path, sizes: dict[str, int], meta: dict | None) -> None:
    atomic_write_json(out_dir / ".num_samples.json", sizes, indent=None)
    if meta is not None:
        atomic_write_json(out_dir / DATA_META, meta)


# ----------------------------------------------------------------------------- parts


def _part_name(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[-80:]
    return f"{safe}.{hashlib.blake2b(key.encode(), digest_size=4).hexdigest()}.npz"


def _parts_dir(output: Path) -> Path:
    return (output.parent / (output.name + ".parts")) if output.suffix in (".hdf5", ".h5") \
        else output / _PARTS


def write_parts(sets: Sequence[tuple[str, InstanceSet]], output: str | os.PathLike, *,
                rank: int, world_size: int, meta: dict) -> Path:
    """Save one task's per-file instances and its manifest ``rank-<r>-of-<W>.json``."""
    pdir = ensure_dir(_parts_dir(Path(output)), "parts directory")
    keys = []
    for key, inst in sets:
        with atomic_path(pdir / _part_name(key)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **inst.arrays())
        keys.append(key)
    atomic_write_json(pdir / f"rank-{rank}-of-{world_size}.json",
                      {"rank": rank, "world_size": world_size, "keys": keys, **meta})
    return pdir


def balance_parts(output: str | os.PathLike, *, output_format: str, num_shards: int,
                  vocab_file: str, bin_size: int | None = None, rank: int = 0,
                  world_size: int = 1, num_workers: int = 1, keep_parts: bool = False,
                  overwrite: bool = False) -> dict[str, int]:
    """The balance step: per-task parts in ``<output>/.parts`` -> the final shards.

    Checks that every task of the creating run finished (all manifests present) and that
    they used the same settings and vocab; then cuts and writes exactly the shards a
    single task would have written. With ``world_size > 1`` each rank writes every
    ``world_size``-th shard. Parts are removed afterwards (single rank, unless
    ``keep_parts``).
    """
    out = Path(output)
    pdir = _parts_dir(out)
    manifests = sorted(pdir.glob("rank-*-of-*.json")) if pdir.is_dir() else []
    if not manifests:
        raise DataError(f"no per-task outputs in {pdir} (run the create step with "
                        "--rank/--world_size first)")
    metas = [json.loads(m.read_text()) for m in manifests]
    sizes = {m["world_size"] for m in metas}
    if len(sizes) != 1:
        raise DataError(f"{pdir} mixes runs with different --world_size {sorted(sizes)}; "
                        "remove it and run again")
    w = sizes.pop()
    missing = sorted(set(range(w)) - {m["rank"] for m in metas})
    if missing:
        raise DataError(f"task(s) {missing} of {w} have not finished: no "
                        f"{pdir}/rank-{missing[0]}-of-{w}.json")
    ref = {k: v for k, v in metas[0].items() if k not in ("rank", "keys")}
    for m in metas[1:]:
        other = {k: v for k, v in m.items() if k not in ("rank", "keys")}
        if other != ref:
            raise DataError(f"tasks in {pdir} used different settings: {ref} vs {other}")
    if ref.get("vocab_digest") != vocab_digest(vocab_file):
        raise DataError(f"--vocab_file {vocab_file} is not the vocab the parts were made with")
    keys = sorted(k for m in metas for k in m["keys"])
    sets = []
    for key in keys:
        path = pdir / _part_name(key)
        try:
            with np.load(path) as z:
                sets.append(InstanceSet.from_arrays(z))
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"part {path} is missing or corrupt ({e})") from None
    cfg = ref["config"]
    inst = (concat_instance_sets(sets) if sets else
            InstanceSet.empty(cfg["max_seq_length"],
                              cfg["max_predictions_per_seq"] if cfg["masking"] == "static" else 0))
    vocab = check_pretraining_vocab(vocab_file)
    meta = {**ref, "output_format": output_format, "bin_size": bin_size}
    kw = dict(output_format=output_format, num_shards=num_shards, seed=cfg["random_seed"],
              vocab_tokens=list(vocab), bin_size=bin_size, num_workers=num_workers)
    single = _is_single_file(out, output_format)
    with output_lock(out, "--output_file", sibling=True, shared=True):
        refuse_existing_output(out, overwrite=overwrite, single=single, parts=True)
        if single:  # one file, written atomically by one task
            result = write_shards(inst, out, meta=meta, **kw)
            if not keep_parts:
                shutil.rmtree(pdir, ignore_errors=True)
            return result
        # Every task writes its shards into one folder beside the output; the last to finish
        # swaps it in whole, so the output never holds half a dataset.
        work = out.parent / f".{out.name}.balance-{world_size}"
        ensure_dir(work, "balance folder")
        with OutputLock(work / f".rank-{rank}.lock", out, "--output_file"):
            result = write_shards(inst, work, rank=rank, world_size=world_size, finalize=False, **kw)
            digest = hashlib.sha256(json.dumps([metas, num_shards, output_format, bin_size],
                                               sort_keys=True).encode()).hexdigest()[:16]
            atomic_write_json(work / f".done-{rank}", {"parts": digest})
        _finish_balance(work, out, world_size, digest, result, meta, pdir if keep_parts else None)
    return result


def _finish_balance(work: Path, out: Path, world_size: int, digest: str, sizes: dict[str, int],
                    meta: dict, keep_parts: Path | None) -> None:
    """Swap ``work`` in as ``out`` if every task of the balance step has written its shards
    (each leaves ``.done-<rank>`` naming the parts it balanced); else a later task will."""
    import fcntl

    try:
        fd = os.open(work / ".finish.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except FileNotFoundError:
        return  # another task has finished it
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # one task at a time checks (a short wait)
        if not work.is_dir():
            return
        for r in range(world_size):
            try:
                if json.loads((work / f".done-{r}").read_text()).get("parts") != digest:
                    return
            except (OSError, ValueError, AttributeError):
                return
        _finalize(work, sizes, meta)
        for f in work.glob(".*"):
            if f.name.startswith((".done-", ".rank-", ".finish.lock")):
                f.unlink(missing_ok=True)
        if keep_parts is not None and keep_parts.is_dir():
            os.replace(keep_parts, work / _PARTS)
        swap_in(work, out)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the step


def create_pretraining_shards(
    inputs, output: str | os.PathLike, *, vocab_file: str, cfg: InstanceConfig,
    do_lower_case: bool = True, output_format: str = "hdf5", num_shards: int = 0,
    bin_size: int | None = None, num_workers: int = 1, rank: int = 0, world_size: int = 1,
    progress: bool | None = None, overwrite: bool = False,
) -> CreateResult:
    """Text files -> final shards (one task) or this task's parts (several tasks).

    ``num_shards=0`` means one shard per input file, or one file when ``output`` names an
    HDF5 file (``X.hdf5``/``X.h5``, as NVIDIA's create_pretraining_data.py writes it). An output holding a dataset is
    replaced (whole, once the new one is complete) only with ``overwrite``.
    """
    t0 = time.perf_counter()
    if output_format not in ("hdf5", "parquet"):
        raise UserError(f"--output_format must be hdf5 or parquet, got {output_format!r}")
    if output_format == "hdf5" and cfg.masking != "static":
        raise UserError("HDF5 output is statically masked; use --output_format parquet for "
                        "unmasked (dynamic masking) data")
    if output_format == "hdf5" and bin_size is not None:
        raise UserError("--bin_size applies to Parquet output only")
    out = Path(output)
    single = _is_single_file(out, output_format)
    check_output_path(out, "--output_file", "file" if single else "dir")
    vocab = check_pretraining_vocab(vocab_file)
    units = input_units(inputs)
    n_shards = num_shards or (1 if single else len(units))  # X.hdf5: one file, as NVIDIA's
    if world_size == 1:
        lock = output_lock(out, "--output_file", sibling=True)
    else:  # tasks share the output; each holds its own part of .parts
        lock = output_lock(out, "--output_file", sibling=True, shared=True)
    with lock:
        refuse_existing_output(out, overwrite=overwrite, single=single, parts=world_size > 1)
        if world_size > 1:
            pdir = ensure_dir(_parts_dir(out), "parts directory")
            with OutputLock(pdir / f".rank-{rank}-of-{world_size}.lock", out, "--output_file"):
                return _create(units, out, vocab, vocab_file, cfg, t0, do_lower_case=do_lower_case,
                               output_format=output_format, n_shards=n_shards, bin_size=bin_size,
                               num_workers=num_workers, rank=rank, world_size=world_size,
                               progress=progress)
        return _create(units, out, vocab, vocab_file, cfg, t0, do_lower_case=do_lower_case,
                       output_format=output_format, n_shards=n_shards, bin_size=bin_size,
                       num_workers=num_workers, rank=rank, world_size=world_size,
                       progress=progress)


def _create(units, out: Path, vocab, vocab_file, cfg: InstanceConfig, t0: float, *,
            do_lower_case: bool, output_format: str, n_shards: int, bin_size: int | None,
            num_workers: int, rank: int, world_size: int, progress: bool | None) -> CreateResult:
    mine = assign_units(units, rank, world_size)
    sets, stats = create_instance_sets(mine, cfg, vocab_file=str(vocab_file),
                                       do_lower_case=do_lower_case, num_workers=num_workers,
                                       progress=progress)
    meta = {"config": cfg.to_dict(), "do_lower_case": do_lower_case,
            "vocab_digest": vocab_digest(vocab_file), "num_inputs": len(units)}
    res = CreateResult(stats=stats, num_instances=sum(len(s) for _, s in sets))
    if world_size == 1:
        inst = (concat_instance_sets([s for _, s in sets]) if sets
                else InstanceSet.empty(cfg.max_seq_length, cfg.num_predictions))
        if len(inst) == 0:
            names = ", ".join(str(u.path) for u in units[:3]) + (" ..." if len(units) > 3 else "")
            raise DataError(
                f"no instances could be made from {names}: {stats.documents} document(s) with "
                f"{stats.sentences} sentence(s) in all; an instance needs two sentences (of one "
                "document, or of two): Google's format is one sentence per line and a blank "
                "line between documents")
        kw = dict(output_format=output_format, num_shards=n_shards, seed=cfg.random_seed,
                  vocab_tokens=list(vocab), bin_size=bin_size, num_workers=num_workers,
                  meta={**meta, "output_format": output_format, "bin_size": bin_size})
        if _is_single_file(out, output_format):
            res.shards = write_shards(inst, out, **kw)
        else:
            with atomic_dir(out, "--output_file") as tmp:  # swapped in whole when complete
                res.shards = write_shards(inst, tmp, **kw)
    else:
        res.parts_dir = write_parts(sets, out, rank=rank, world_size=world_size, meta=meta)
    res.seconds = time.perf_counter() - t0
    return res
