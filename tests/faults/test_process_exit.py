"""How a process that ran torch.distributed ends.

A complete 4-rank gloo run once exited -6 on one rank ("terminate called without an active
exception"): its process group outlived ``destroy_process_group`` (the finished trainer, in a
reference cycle, still held DistributedDataParallel and the control group), so gloo's worker
threads met interpreter shutdown. A plain script shows the mechanism (any group handle alive
past ``destroy_process_group``, then exit: SIGABRT in a few runs of six). Two guards, each
checked here through the real CLI with a probe injected by ``sitecustomize``:

* ``distributed.cleanup`` frees the group: at exit no DistributedDataParallel is alive even
  with automatic garbage collection off (the probe counts them);
* ``distributed.run_as_process`` ends a rank that joined a group without interpreter
  shutdown (exit handlers run, output is flushed), as multiprocessing ends its children:
  an object finalised only at interpreter shutdown is never finalised on a rank, while a
  single-process run still shuts down normally.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from pretrain_fixtures import PYTHON, REPO, base_args, make_dataset, write_config  # noqa: E402

pytestmark = pytest.mark.timeout(300)

PROBE = textwrap.dedent('''
    import atexit, gc, os
    gc.disable()  # the guard must not depend on when the collector happens to run
    _dir, _rank = os.environ["EXIT_PROBE_DIR"], os.environ.get("RANK", "single")

    def _count_ddp():
        import sys
        if "torch" in sys.modules:  # the torchrun agent never builds a model
            from torch.nn.parallel import DistributedDataParallel as DDP
            n = sum(isinstance(o, DDP) for o in gc.get_objects())
            with open(os.path.join(_dir, f"atexit.{_rank}.{os.getpid()}"), "w") as f:
                f.write(str(n))

    atexit.register(_count_ddp)

    class _Finalised:
        def __del__(self, _open=open, _join=os.path.join, _pid=os.getpid()):
            with _open(_join(_dir, f"finalised.{_rank}.{_pid}"), "w") as f:
                f.write("1")

    _sentinel = _Finalised()
''')


def _probe_env(tmp_path: Path) -> tuple[dict, Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PROBE)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EXIT_PROBE_DIR": str(marks),
           "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    env.pop("WORLD_SIZE", None)
    return env, marks


def _marks(marks: Path, kind: str) -> dict[str, str]:
    return {p.name.split(".")[1]: p.read_text() for p in marks.glob(f"{kind}.*")}


def test_a_rank_ends_without_interpreter_shutdown_and_leaves_no_group_behind(tmp_path):
    data = make_dataset(tmp_path / "data")
    cfg = write_config(tmp_path / "cfg.json")
    env, marks = _probe_env(tmp_path)

    # one process, no group: a normal interpreter shutdown (the probe can see one)
    single = subprocess.run([PYTHON, "run_pretraining.py", *base_args(data, tmp_path / "one", cfg, steps=2)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-2000:]
    assert _marks(marks, "finalised") == {"single": "1"}
    assert _marks(marks, "atexit") == {"single": "0"}
    for p in marks.iterdir():
        p.unlink()

    two = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "run_pretraining.py", *base_args(data, tmp_path / "two", cfg, steps=2, batch=4)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "terminate called" not in two.stderr
    assert "final_loss" in two.stdout  # flushed before os._exit
    ranks = {k: v for k, v in _marks(marks, "atexit").items() if k != "single"}
    assert ranks == {"0": "0", "1": "0"}, f"exit handlers ran on each rank, DDP objects alive: {ranks}"
    finalised = {k for k in _marks(marks, "finalised") if k != "single"}
    assert not finalised, f"ranks {sorted(finalised)} went through interpreter shutdown"


SCRIPT = textwrap.dedent('''
    import sys
    from bertforge import distributed
    distributed._joined = {joined}
    def main():
        {body}
    distributed.run_as_process(main)
''')


@pytest.mark.parametrize(("body", "code", "stderr"), [
    ("return 75", 75, ""),
    ("return {'f1': 90.0}", 0, ""),  # fine-tuning's main returns its metrics
    ("raise SystemExit(2)", 2, ""),
    ("raise SystemExit('error: a message')", 1, "error: a message"),
    ("raise ValueError('a bug')", 1, "ValueError: a bug"),
])
@pytest.mark.parametrize("joined", [True, False])
def test_exit_status_is_the_same_with_and_without_a_group(body, code, stderr, joined):
    r = subprocess.run([PYTHON, "-c", SCRIPT.format(joined=joined, body=body)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == code, r.stderr[-1000:]
    assert stderr in r.stderr
