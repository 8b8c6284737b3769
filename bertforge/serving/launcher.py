"""Start and stop ``bertforge.serving.server`` in a child process (tests, benchmark, demo).

The server runs under the Python of the serving environment (PyTriton needs numpy < 2,
so ``make install-serve`` keeps it in ``.venv-triton``; ``$BERTFORGE_TRITON_PYTHON``
overrides the interpreter). :class:`TritonServerProcess` binds HTTP and gRPC to loopback
on free ports, gives PyTriton a private ``PYTRITON_HOME`` in a temporary folder, waits
until every model is ready, and on exit sends SIGINT (PyTriton's clean shutdown), then
checks that no process of it is left: neither in its process group nor any process
running from its PYTRITON_HOME (tritonserver and the Python backend stubs run from there).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bertforge.errors import UserError

__all__ = ["triton_python", "free_port", "TritonServerProcess", "processes_under", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON_ENV = "BERTFORGE_TRITON_PYTHON"


def triton_python() -> Path:
    """The interpreter of the serving environment ($BERTFORGE_TRITON_PYTHON or .venv-triton)."""
    env = os.environ.get(TRITON_PYTHON_ENV)
    path = Path(env) if env else REPO_ROOT / ".venv-triton" / "bin" / "python"
    if not path.is_file():
        raise UserError(f"no serving environment at {path} (run `make install-serve`, or set "
                        f"{TRITON_PYTHON_ENV} to a Python with nvidia-pytriton and onnxruntime)")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _pgid_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[2])  # fields after "(comm)": state ppid pgrp


def processes_under(pgid: int | None = None, path_fragment: str | None = None) -> list[tuple[int, str]]:
    """Live processes in process group ``pgid`` or whose command line contains ``path_fragment``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or not cmd:
            continue
        if (pgid is not None and _pgid_of(pid) == pgid) or (path_fragment and path_fragment in cmd):
            found.append((pid, cmd))
    return found


class TritonServerProcess:
    """A running ``python -m bertforge.serving.server`` (use as a context manager).

    Attributes after start: ``http_url`` and ``grpc_url`` (host:port), ``log_path``
    (the server's stdout+stderr), ``access_token`` (for statistics), ``leftovers``
    (processes still alive after stop; empty when the stop was clean).
    """

    def __init__(self, repository: str | os.PathLike, models: Sequence[str] | None = None, *,
                 python: str | os.PathLike | None = None, host: str = "127.0.0.1",
                 http_port: int | None = None, grpc_port: int | None = None,
                 startup_timeout_s: float = 180.0, stop_timeout_s: float = 30.0,
                 intra_op_threads: int = 0, access_token: str | None = None):
        self.repository = Path(repository)
        self.models = list(models) if models else sorted(
            p.name for p in self.repository.iterdir() if (p / "config.pbtxt").is_file())
        self.python = Path(python) if python else triton_python()
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.intra_op_threads = intra_op_threads
        self.access_token = access_token or os.urandom(16).hex()
        self.proc: subprocess.Popen | None = None
        self.home: Path | None = None
        self.log_path: Path | None = None
        self.leftovers: list[tuple[int, str]] = []

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def headers(self) -> dict:
        """Headers carrying the access token, for HTTP and gRPC clients alike."""
        return {"triton-access-token": self.access_token,
                "triton-grpc-protocol-triton-access-token": self.access_token}

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def start(self) -> TritonServerProcess:
        from bertforge.serving.server import ACCESS_TOKEN_ENV

        self.home = Path(tempfile.mkdtemp(prefix="bertforge-pytriton-"))
        self.log_path = self.home / "server.log"
        env = dict(os.environ)
        env.update({"PYTRITON_HOME": str(self.home / "home"), ACCESS_TOKEN_ENV: self.access_token,
                    "PYTHONUNBUFFERED": "1"})
        # LD_LIBRARY_PATH: the server puts its own interpreter's libpython first (prepend_libdir).
        cmd = [str(self.python), "-m", "bertforge.serving.server", "--model_repository", str(self.repository),
               "--models", ",".join(self.models), "--host", self.host, "--http_port", str(self.http_port),
               "--grpc_port", str(self.grpc_port), "--intra_op_threads", str(self.intra_op_threads)]
        with open(self.log_path, "wb") as log:
            # A new session: the server and everything it starts share one process group.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=str(REPO_ROOT), start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        import tritonclient.http as httpclient

        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise UserError(f"the Triton server exited with status {self.proc.returncode} before it was "
                                f"ready; log {self.log_path}:\n{self.log_tail()}")
            # A fresh connection per poll: an idle open one would hold up the server's shutdown.
            client = httpclient.InferenceServerClient(self.http_url, connection_timeout=2.0, network_timeout=2.0)
            try:
                if client.is_server_ready() and all(client.is_model_ready(m) for m in self.models):
                    return
            except Exception:  # not listening yet
                pass
            finally:
                client.close()
            if time.monotonic() > deadline:
                raise UserError(f"the Triton server was not ready after {self.startup_timeout_s:.0f} s; "
                                f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self) -> list[tuple[int, str]]:
        """SIGINT, wait, escalate if needed; returns (and keeps) the processes left behind."""
        if self.proc is None:
            return self.leftovers
        pgid = self.proc.pid  # session leader: its pid is the process group id
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        # Helpers exit shortly after the server; give them a moment, then report survivors.
        deadline = time.monotonic() + 10
        while True:
            self.leftovers = processes_under(pgid, str(self.home / "home"))
            if not self.leftovers or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for pid, _ in self.leftovers:  # never leave them running, but report them
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc = None
        return self.leftovers

    def cleanup(self) -> None:
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> TritonServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if exc[0] is None:
            self.cleanup()
        else:
            print(f"Triton server log kept at {self.log_path}", file=sys.stderr)
