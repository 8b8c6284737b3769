"""Atomic file output: write to a temporary name beside the target, rename when complete.

A crash (or kill -9) mid-write leaves at most a ``.tmp-*`` file, never a half file under
the final name. ``os.replace`` is atomic on POSIX within one filesystem. Torch files are
written with :func:`torch_save` (a full disk reported as one) and, when the safe loader
refuses one, explained by :func:`unpickling_refusal`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bertforge.errors import CheckpointError, DataError, UserError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "ensure_dir", "fsync_dir",
           "torch_save", "read_input_bytes", "read_input_text", "unpickling_refusal",
           "pickled_globals", "BENIGN_GLOBALS"]


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


#: Python objects that old NVIDIA/NGC checkpoints pickle besides tensors (the training
#: arguments, numpy scalars): refused by the safe loader, yet harmless, so for these alone
#: the refusal points to ``convert --trust_checkpoint``.
BENIGN_GLOBALS = frozenset({
    "argparse.Namespace", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.dtype", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.ndarray", "_codecs.encode", "builtins.set", "builtins.slice",
})


def pickled_globals(path: str | os.PathLike, limit: int = 64 * 2**20) -> list[str]:
    """``module.name`` of every Python global a pickle (torch zip or legacy file) refers to,
    except torch's own and ``collections.OrderedDict``, in order; read without running it."""
    import io
    import pickletools
    import zipfile

    p = Path(path)
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name)[:limit] if name else b""
        else:
            with open(p, "rb") as fh:
                data = fh.read(limit)
    except (OSError, zipfile.BadZipFile, KeyError):
        return []
    found: list[str] = []
    buf = io.BytesIO(data)
    for _ in range(4):  # a legacy file is several pickles in a row (magic, protocol, ...)
        strings: list[str] = []
        memo: dict = {}
        try:
            for op, arg, _pos in pickletools.genops(buf):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(arg)
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                    memo[arg] = strings[-1]
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                    strings.append(memo[arg])
                elif op.name == "GLOBAL":
                    found.append(".".join(str(arg).split(" ", 1)))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        except Exception:  # not (or no longer) a pickle: stop scanning
            break
        if buf.tell() >= len(data):
            break
    py2 = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # protocol-2 pickles' names
    found = [py2.get(g.split(".", 1)[0], g.split(".", 1)[0]) + g[len(g.split(".", 1)[0]):]
             for g in found]
    return [g for g in found if not g.startswith("torch.") and g != "collections.OrderedDict"]


def unpickling_refusal(path: str | os.PathLike, e: BaseException, hint: str = "") -> CheckpointError:
    """The error for a file torch's ``weights_only`` unpickler refused, naming the cause.

    A pickle that names a Python global (``GLOBAL io.open``, ``GLOBAL posix.system``) would
    import and call it on load: that is how a malicious checkpoint runs code. The global is
    found by reading the pickle's opcodes (never by running it) and named. ``hint`` (the
    way to load a trusted file) is only given for the harmless objects old NGC checkpoints
    hold (:data:`BENIGN_GLOBALS`), never for anything else. Other refusals (an unknown
    opcode) mean the file is not a torch checkpoint or is damaged.
    """
    text = str(e)
    names = pickled_globals(path)
    if not names:
        names = re.findall(r"GLOBAL ([\w.]+)", text)
    if names:
        bad = next((g for g in names if g not in BENIGN_GLOBALS), None)
        if bad is None:
            return CheckpointError(
                f"checkpoint {path} holds a pickled Python object (GLOBAL {names[0]}) that would "
                f"be imported and called on load, so it could run code; refused{hint}")
        return CheckpointError(
            f"checkpoint {path} holds a pickled Python object (GLOBAL {bad}) that would be "
            "imported and called on load, so it could run code; refused: torch.save never "
            "writes such a call, do not load this file (not with --trust_checkpoint either)")
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|Check the documentation|$)", text, re.S)
    detail = " ".join((m.group(1) if m else (text.splitlines() or [type(e).__name__])[0]).split())
    detail = detail.split(". ")[0][:160]
    return CheckpointError(
        f"checkpoint {path} was refused by the safe loader: it is not a torch checkpoint or is "
        f"damaged (unpickling stopped: {detail})")
