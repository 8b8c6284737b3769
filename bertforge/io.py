"""Atomic file output: write to a temporary name beside the target, rename when complete.

A crash (or kill -9) mid-write leaves at most a ``.tmp-*`` file, never a half file under
the final name. ``os.replace`` is atomic on POSIX within one filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bertforge.errors import UserError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "ensure_dir", "fsync_dir",
           "torch_save"]


def _default_file_mode() -> int:
    """0666 masked by the process umask: the mode ``open()`` would give a new file
    (mkstemp's 0600 would make shards unreadable to others on shared cluster storage)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def ensure_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create ``path`` (and parents); a clear UserError when that is impossible."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{what} {p} exists and is not a directory") from None
    except OSError as e:
        raise UserError(f"cannot create {what} {p}: {e.strerror}") from None
    if not os.access(p, os.W_OK):
        raise UserError(f"{what} {p} is not writable")
    return p


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it survives a power loss (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it to ``final``.

    On an exception the temporary file is removed and the exception propagates, so
    the final name only ever holds a complete file. Errors of the filesystem (no
    space, no permission) become one-line UserErrors naming the file.
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=parent)
        os.fchmod(fd, _default_file_mode())
        os.close(fd)
    except OSError as e:
        raise UserError(f"cannot write {final}: {e.strerror}") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if fsync and tmp_path.exists():
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, final)
        if fsync:
            fsync_dir(parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM,
                       errno.EISDIR, errno.ENOTDIR, errno.EFBIG):
            raise UserError(f"cannot write {final}: {e.strerror}") from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(final: str | os.PathLike, obj, indent: int | None = 2) -> None:
    atomic_write_text(final, json.dumps(obj, indent=indent) + "\n")


class _WriteErrorRecorder:
    """A file-like wrapper that keeps the OSError of a failed ``write``."""

    def __init__(self, fh) -> None:
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.fh.flush()


def torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` whose failed writes raise the OSError (ENOSPC, EDQUOT, ...).

    torch's zip writer swallows the OSError of a failed write and raises an opaque
    ``RuntimeError("... unexpected pos ...")`` instead, so a full disk would not be reported
    as one. Use inside :func:`atomic_path`, which turns the OSError into a one-line UserError.
    """
    import torch

    with open(path, "wb") as fh:
        rec = _WriteErrorRecorder(fh)
        try:
            torch.save(obj, rec)
        except RuntimeError:
            if rec.error is not None:
                raise rec.error from None
            raise
