"""Where a run writes: checked before the work, locked while it runs, replaced only as a whole.

* :func:`check_output_path` refuses an output path that cannot be written (a file where a
  folder is wanted or the reverse, no write permission, a name longer than the file system
  allows, an empty name) in one line naming the flag, before any work and without
  creating anything.
* :func:`output_lock` gives one run at a time a folder: an ``fcntl`` lock on a lock file
  that records who holds it (pid, host, job, command, start time). The kernel drops the
  lock when the process ends, however it ends (kill -9 included), so a lock is never
  left behind; a record left by a process that was killed is taken over with a note.
* :func:`atomic_dir` builds a folder under a temporary sibling name and swaps it in when
  complete, so a folder (a dataset, an exported model) is replaced only as a whole and a
  run that fails leaves the previous one untouched.

Under ``torchrun``/Slurm only rank 0 takes a run's lock (every rank of one job shares the
folder); :func:`bertforge.distributed.rank0_output_lock` shares its verdict with the
other ranks of the same process group, which is what tells them apart from another job.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bertforge.errors import UserError

__all__ = ["check_output_path", "output_lock", "OutputLock", "atomic_dir", "swap_in", "job_id",
           "LOCK_NAME", "OutputInUseError"]

LOCK_NAME = ".bertforge.lock"
"""The lock file inside a locked output folder (a dataset folder is locked by a sibling
``.<name>.lock``, since the folder itself is swapped)."""


class OutputInUseError(UserError):
    """Another live run holds the output's lock."""


# -- path checks -----------------------------------------------------------------------------
def _name_max(existing: Path) -> int:
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _exists(p: Path) -> bool:
    """``p`` exists (a dangling symlink counts); False also when it cannot be looked up."""
    try:
        os.lstat(p)
    except (OSError, ValueError):
        return False
    return True


def _short(s: str, n: int = 60) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def check_output_path(path: str | os.PathLike, flag: str, kind: str = "dir") -> Path:
    """Refuse (UserError naming ``flag``) a path this process cannot create or write.

    ``kind`` is ``"dir"`` (a folder the run writes into) or ``"file"`` (a file written
    atomically beside its final name: its folder must be writable, it must not be a
    folder). Nothing is created. Returns the path.
    """
    s = os.fspath(path)
    if s == "":
        raise UserError(f"{flag} is empty")
    if "\x00" in s:
        raise UserError(f"{flag} {s!r} contains a NUL character")
    p = Path(s)
    try:
        b = os.fsencode(os.path.abspath(s))
    except UnicodeEncodeError:
        raise UserError(f"{flag} {s!r} cannot be encoded as a file name") from None
    if len(b) >= 4096:
        raise UserError(f"{flag} {_short(s)} is {len(b)} bytes long, more than the file system "
                        "allows for a path (4095)")
    ancestor = p.absolute()
    while not _exists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    limit = _name_max(ancestor if ancestor.is_dir() else ancestor.parent)
    for part in p.parts:
        if len(os.fsencode(part)) > limit:
            raise UserError(f"{flag}: the name {_short(part)} is {len(os.fsencode(part))} bytes "
                            f"long, more than the file system allows ({limit})")
    if _exists(p):
        if kind == "dir":
            if not p.is_dir():
                raise UserError(f"{flag} {p} exists and is not a directory")
            if not os.access(p, os.W_OK | os.X_OK):
                raise UserError(f"{flag} {p} is not writable")
            return p
        if p.is_dir():
            raise UserError(f"{flag} {p} is a directory, not a file")
        folder = p.parent if str(p.parent) else Path(".")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {p}: its folder {folder} is not writable")
        return p
    if not ancestor.is_dir():
        raise UserError(f"{flag} {p} cannot be created: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {p} cannot be created: {ancestor} is not writable")
    return p


# -- the lock ------------------------------------------------------------------------------
def job_id() -> str | None:
    """The scheduler's id of this job (all ranks of a job share it), or None."""
    slurm = os.environ.get("SLURM_JOB_ID")
    if slurm:
        return f"slurm:{slurm}"
    run = os.environ.get("TORCHELASTIC_RUN_ID")
    if run and run != "none":
        return f"torchrun:{run}"
    return None


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "job": job_id(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:300]}


def _describe(h: dict) -> str:
    who = f"pid {h.get('pid', '?')} on {h.get('host', '?')}"
    if h.get("job"):
        who += f" ({h['job']})"
    if h.get("started"):
        who += f", started {h['started']}"
    if h.get("command"):
        who += f": {_short(str(h['command']), 120)}"
    return who


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


class OutputLock:
    """An exclusive (or ``shared``), non-blocking lock on ``lock_file`` for output ``target``.

    ``acquire`` raises :class:`OutputInUseError` when a live process holds it (for a shared
    lock: holds it exclusively). An exclusive holder records itself in the file and clears
    the record on ``release``; a record found on acquiring was left by a process that ended
    without releasing (kill -9, power loss) and is taken over with a note on stderr. The
    lock itself is the kernel's (``fcntl.lockf``: also honoured over NFS), so it cannot
    outlive its process. Shared holders (the tasks of one multi-task job) record nothing.
    """

    def __init__(self, lock_file: str | os.PathLike, target: str | os.PathLike, flag: str,
                 shared: bool = False) -> None:
        self.lock_file, self.target, self.flag = Path(lock_file), Path(target), flag
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        import fcntl

        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise UserError(f"{self.flag} {self.target}: cannot create the lock file "
                            f"{self.lock_file}: {e.strerror}") from None
        try:
            fcntl.lockf(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as e:
            held = self._read(fd)
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                who = _describe(held) if held else "the tasks of a multi-task run, or one starting"
                raise OutputInUseError(
                    f"{self.flag} {self.target} is in use by another run ({who}); wait for it "
                    f"to finish or choose another {self.flag}") from None
            raise UserError(f"{self.flag} {self.target}: cannot lock {self.lock_file}: "
                            f"{e.strerror} (a file system without locks?)") from None
        if self.shared:
            self._fd = fd
            return self
        stale = self._read(fd)
        if stale:
            me = socket.gethostname()
            same_job = stale.get("job") is not None and stale.get("job") == job_id()
            if stale.get("host") not in (None, me) and not same_job:
                os.close(fd)
                raise OutputInUseError(
                    f"{self.flag} {self.target} was locked by {_describe(stale)} and not "
                    f"released; whether that run is over cannot be checked from {me}: if it "
                    f"is, delete {self.lock_file}")
            gone = "has ended" if not _pid_alive(stale.get("pid")) else "no longer holds it"
            print(f"note: {self.flag} {self.target} was locked by {_describe(stale)}, which "
                  f"{gone} without releasing it (killed?); taking the lock over",
                  file=sys.stderr, flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _read(fd: int) -> dict | None:
        try:
            raw = os.pread(fd, 65536, 0)
        except OSError:
            return None
        if not raw.strip():
            return None
        try:
            h = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:
            h = None
        return h if isinstance(h, dict) else {"pid": "?", "host": "?"}

    def release(self) -> None:
        if self._fd is None:
            return
        if not self.shared:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # a clean end: nothing to take over
        os.close(self._fd)  # closing drops the lock
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def output_lock(folder: str | os.PathLike, flag: str, *, sibling: bool = False,
                shared: bool = False) -> OutputLock:
    """The (not yet acquired) lock of output ``folder``: ``folder/.bertforge.lock``, or with
    ``sibling`` (for a folder that is swapped as a whole, or a single output file) the file
    ``.<name>.lock`` beside it. The folder holding the lock file is created."""
    folder = Path(folder)
    if sibling:
        parent = folder.parent if str(folder.parent) else Path(".")
        _mkdir(parent, flag)
        return OutputLock(parent / f".{folder.name}.lock", folder, flag, shared)
    _mkdir(folder, flag)
    return OutputLock(folder / LOCK_NAME, folder, flag, shared)


def _mkdir(p: Path, flag: str) -> None:
    from bertforge.files import ensure_dir

    ensure_dir(p, flag)


# -- whole-folder replacement ----------------------------------------------------------------
def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # an old kernel or a file system without the exchange
    raise OSError(err, os.strerror(err), str(b))


def stale_temp_dirs(final: str | os.PathLike) -> list[Path]:
    """Temporary siblings :func:`atomic_dir` left for ``final`` (a killed run's)."""
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        return []
    return [p for p in parent.glob(f".{final.name}.tmp-*") if p.is_dir()] + \
           [p for p in parent.glob(f".{final.name}.old-*") if p.is_dir()]


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, flag: str = "output") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block completes, it
    becomes ``final`` (an earlier ``final`` is swapped out and deleted only then).

    On an exception the temporary folder is deleted and ``final`` is untouched. Whether an
    existing ``final`` may be replaced is the caller's decision (``--overwrite``); call this
    while holding the output's lock. Temporary folders of killed earlier runs are removed.
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    _mkdir(parent, flag)
    for old in stale_temp_dirs(final):
        shutil.rmtree(old, ignore_errors=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        raise UserError(f"cannot write {final}: {e.strerror}") from None
    try:
        yield tmp
        swap_in(tmp, final)
    except UserError as e:  # the message names the final path, not the temporary one
        shutil.rmtree(tmp, ignore_errors=True)
        msg = str(e).replace(str(tmp), str(final))
        try:
            renamed = type(e)(msg)
        except TypeError:  # a subclass with another constructor
            renamed = UserError(msg)
            renamed.exit_code = e.exit_code
        raise renamed from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def swap_in(tmp: Path, final: Path) -> None:
    """Make the complete folder ``tmp`` the folder ``final``; an earlier ``final`` is swapped
    out (atomically where the kernel can exchange two paths) and then deleted."""
    from bertforge.files import fsync_dir

    parent = final.parent if str(final.parent) else Path(".")
    try:
        if final.is_dir() and not final.is_symlink() and any(final.iterdir()):
            if _exchange(tmp, final):  # tmp now holds the old folder
                fsync_dir(parent)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=parent))
            os.replace(final, old / "x")
            os.replace(tmp, final)
            fsync_dir(parent)
            shutil.rmtree(old, ignore_errors=True)
            return
        if final.is_dir() and not final.is_symlink():
            final.rmdir()
        os.replace(tmp, final)
        fsync_dir(parent)
    except OSError as e:
        raise UserError(f"cannot write {final}: {e.strerror}") from None
