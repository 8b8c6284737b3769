"""Faults of the data pipeline: create_pretraining_data.py killed or out of disk while it
replaces a dataset, and damaged shards read by run_pretraining.py.

The session's ``world`` shards were made by the same command (output identical for any
--num_workers), so "the rerun reproduces the uninterrupted result" is a byte comparison.
Each create fault strikes a run that replaces an *earlier* dataset (``--overwrite``; made
with ``--dupe_factor 1``, so its bytes differ): that dataset must come out byte for byte
as it was, and the run must leave nothing under the final name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.faults.helpers import (
    assert_checkpoints_complete,
    assert_user_error,
    check,
    final_files,
    run_on_small_disk,
    temp_files,
)

pytestmark = pytest.mark.timeout(600)

CREATE = "create_pretraining_data.py"


def create_args(world, out: Path, fmt: str, *extra: str) -> list[str]:
    """The command that made ``world``'s shards (see helpers.make_world)."""
    return ["--input_file", str(world.text), "--vocab_file", str(world.vocab),
            "--max_seq_length", "64", "--max_predictions_per_seq", "10", "--dupe_factor", "2",
            "--progress", "false", "--output_file", str(out), "--output_format", fmt, *extra]


def _shards(world, fmt: str) -> Path:
    return world.hdf5 if fmt == "hdf5" else world.parquet


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file of a dataset folder (hidden metadata included), by name."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def earlier(world, cli, tmp_path_factory):
    """An earlier dataset per format (``--dupe_factor 1``), to be replaced by the runs below."""
    root = tmp_path_factory.mktemp("earlier")
    for fmt in ("hdf5", "parquet"):
        check(cli.run(CREATE, create_args(world, root / fmt, fmt, "--dupe_factor", "1")))
    return root


def siblings(out: Path) -> list[str]:
    """Temporary folders a run left beside ``out``."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-"))


@pytest.mark.parametrize("fmt, workers, victim", [
    ("hdf5", 2, "training_shard_00001.hdf5"),  # a pool worker is killed (e.g. by the OOM killer)
    ("parquet", 1, "shard-1.parquet"),          # the create process itself is killed
])
def test_sigkill_during_shard_writing(world, cli, earlier, tmp_path, fmt, workers, victim):
    out = tmp_path / "out"
    shutil.copytree(earlier / fmt, out)
    before = snapshot(out)
    args = create_args(world, out, fmt, "--num_workers", str(workers), "--overwrite")
    p = cli.run(CREATE, args, fault={"kill_in_write": {"name": victim}}, timeout=120)
    if workers > 1:  # the parent notices the dead worker (it used to wait forever)
        assert_user_error(p, "a worker process died while writing the shards", "run the command again")
        assert siblings(out) == []  # the failed run removed its temporary folder
    else:
        check(p, -9)
        (tmp_dir,) = siblings(out)  # the killed run's work, beside the dataset
        assert [t for t in temp_files(out.parent / tmp_dir) if t.startswith(f".{victim}.tmp-")]
    assert snapshot(out) == before, "the earlier dataset changed"
    check(cli.run(CREATE, args))  # the same command again: the whole, identical dataset
    ref = _shards(world, fmt)
    assert snapshot(out) == snapshot(ref)
    assert siblings(out) == [] and temp_files(out) == []


@pytest.mark.parametrize("fmt", ["hdf5", "parquet"])
def test_full_disk_during_shard_writing(world, cli, earlier, tmp_path, tmpfs_mounts, fmt):
    ref = _shards(world, fmt)
    old = earlier / fmt
    first = min((ref / n).stat().st_size for n in final_files(ref))
    used = sum(-(-p.stat().st_size // 4096) * 4096 for p in old.iterdir())  # tmpfs pages
    size = used + int(first * 1.5)  # the earlier dataset, then room for one new shard, not two
    p, after = run_on_small_disk(tmpfs_mounts, size,
                                 lambda d: create_args(world, d / "out", fmt, "--overwrite"),
                                 tmp_path, cli, CREATE, before={"out": old})
    assert_user_error(p, "cannot write", "No space left on device",  # the final name, not the temp's
                      "/out/training_shard_" if fmt == "hdf5" else "/out/shard-")
    out = after / "out"
    assert snapshot(out) == snapshot(old), "the earlier dataset changed"
    assert siblings(out) == [] and temp_files(out) == []


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_page(path: Path) -> None:
    """Flip 64 bytes a quarter into the file: inside a compressed data page, footer intact."""
    data = bytearray(path.read_bytes())
    at = len(data) // 4
    data[at:at + 64] = bytes(b ^ 0xFF for b in data[at:at + 64])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt, damage", [("hdf5", _truncate), ("parquet", _truncate),
                                         ("parquet", _corrupt_page)],
                         ids=["hdf5-truncated", "parquet-truncated", "parquet-corrupt-page"])
def test_damaged_shard_is_named(world, cli, tmp_path, fmt, damage):
    """A damaged shard stops training with its name (read in the loader's background
    thread: it must surface, not hang); checkpoints written before it stay complete."""
    data = tmp_path / "data"
    shutil.copytree(_shards(world, fmt), data)
    victim = data / ("training_shard_00001.hdf5" if fmt == "hdf5" else "shard-1.parquet")
    damage(victim)
    out = tmp_path / "out"
    p = cli.run("run_pretraining.py", [
        f"--input_dir={data}", f"--config_file={world.config}", f"--output_dir={out}",
        f"--vocab_file={world.vocab}", "--train_batch_size=8", "--max_steps=40",
        "--max_seq_length=64", "--max_predictions_per_seq=10", "--num_workers=2",
        "--num_steps_per_checkpoint=5", "--do_train", "--disable_progress_bar"], timeout=240)
    assert_user_error(p, str(victim), "corrupt or truncated")
    for n in assert_checkpoints_complete(out):
        assert n % 5 == 0
    assert temp_files(out) == []
