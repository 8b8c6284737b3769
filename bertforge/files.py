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

from bertforge.errors import DataError, UserError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "ensure_dir", "fsync_dir",
           "torch_save", "read_input_bytes", "read_input_text"]


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
        if tmp_path.is_file():  # a writer that replaced the file (safetensors) made it 0600
            os.chmod(tmp_path, _default_file_mode())
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


def read_input_bytes(path: str | os.PathLike, what: str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (``what`` names it in errors: ``--vocab_file x``).

    A folder, a device (``/dev/zero`` never ends), a FIFO, a missing or unreadable file, or
    one larger than ``max_bytes`` is a one-line UserError, before anything is read.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DataError(f"{what}: no such file") from None
    except OSError as e:
        raise DataError(f"{what}: cannot read ({e.strerror})") from None
    import stat as _stat

    if _stat.S_ISDIR(st.st_mode):
        raise DataError(f"{what} is a directory, not a file")
    if not _stat.S_ISREG(st.st_mode):
        raise DataError(f"{what} is not a regular file (a device, FIFO or socket)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise DataError(f"{what} is {st.st_size / 1e6:.1f} MB, more than the "
                        f"{max_bytes / 1e6:.0f} MB such a file can be")
    try:
        return p.read_bytes()
    except OSError as e:
        raise DataError(f"{what}: cannot read ({e.strerror})") from None


def read_input_text(path: str | os.PathLike, what: str, *, max_bytes: int | None = None) -> str:
    """:func:`read_input_bytes` decoded as UTF-8; a binary file (a NUL byte, or bytes that
    are not UTF-8) is a one-line UserError naming the byte offset."""
    data = read_input_bytes(path, what, max_bytes=max_bytes)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{what} is a binary file, not text (a NUL byte at offset {nul})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                        f"{e.start}; a binary file?)") from None


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
