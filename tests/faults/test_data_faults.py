"""Faults of the data pipeline: create_pretraining_data.py killed or out of disk while it
writes shards, and damaged shards read by run_pretraining.py.

The session's ``world`` shards were made by the same command (output identical for any
--num_workers), so "the rerun reproduces the uninterrupted result" is a byte comparison.
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


def assert_complete_subset(out: Path, ref: Path) -> list[str]:
    """Every shard under a final name in ``out`` is byte-identical to the uninterrupted
    run's; the dataset is not marked complete (``.num_samples.json`` is written last)."""
    names = final_files(out)
    for n in names:
        assert (out / n).read_bytes() == (ref / n).read_bytes(), f"{n} is partial or different"
    assert not (out / ".num_samples.json").exists()
    return names


@pytest.mark.parametrize("fmt, workers, victim", [
    ("hdf5", 2, "training_shard_00001.hdf5"),  # a pool worker is killed (e.g. by the OOM killer)
    ("parquet", 1, "shard-1.parquet"),          # the create process itself is killed
])
def test_sigkill_during_shard_writing(world, cli, tmp_path, fmt, workers, victim):
    out = tmp_path / "out"
    args = create_args(world, out, fmt, "--num_workers", str(workers))
    p = cli.run(CREATE, args, fault={"kill_in_write": {"name": victim}}, timeout=120)
    if workers > 1:  # the parent notices the dead worker (it used to wait forever)
        assert_user_error(p, "a worker process died while writing the shards", "run the command again")
    else:
        check(p, -9)
    assert victim not in assert_complete_subset(out, _shards(world, fmt))
    assert [t for t in temp_files(out) if t.startswith(f".{victim}.tmp-")], "the half-written temp file"
    check(cli.run(CREATE, args))  # the same command again: the whole, identical dataset
    ref = _shards(world, fmt)
    assert final_files(out) == final_files(ref) and temp_files(out) == []
    for n in [*final_files(ref), ".num_samples.json"]:
        assert (out / n).read_bytes() == (ref / n).read_bytes(), n


@pytest.mark.parametrize("fmt", ["hdf5", "parquet"])
def test_full_disk_during_shard_writing(world, cli, tmp_path, tmpfs_mounts, fmt):
    ref = _shards(world, fmt)
    first = min((ref / n).stat().st_size for n in final_files(ref))
    size = int(first * 1.5)  # room for one shard, not two
    p, after = run_on_small_disk(tmpfs_mounts, size, lambda d: create_args(world, d / "out", fmt),
                                 tmp_path, cli, CREATE)
    assert_user_error(p, "cannot write", "No space left on device",
                      "training_shard_" if fmt == "hdf5" else "shard-")
    out = after / "out"
    assert len(assert_complete_subset(out, ref)) == 1
    assert temp_files(out) == []


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
