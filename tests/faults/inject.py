"""Fault-injection launcher: ``python tests/faults/inject.py SCRIPT [ARGS...]``.

Runs ``SCRIPT`` (e.g. ``run_pretraining.py``) exactly as ``python SCRIPT ARGS`` would
(``__main__``, repo root first on ``sys.path``), after patching a few library functions as
the JSON in ``$BERTFORGE_FAULT`` asks. It also works under ``torchrun`` (torchrun runs this
file, which runs the CLI). Nothing in ``bertforge`` knows about it: the faults are injected
from outside, so the production code runs unchanged.

``$BERTFORGE_FAULT`` keys (all optional; ``rank`` restricts a fault to one torchrun rank):

``signal``      ``{"call": n, "sig": "SIGTERM"|"SIGKILL"|"SIGSTOP", "rank": r}``: send the
                signal to this process during the n-th (1-based) training micro-batch,
                right after its loss is computed and before its backward, i.e. mid-step.
``nan_grad``    ``{"call": n}``: the n-th micro-batch's loss stays finite, but the gradient
                of the word embeddings becomes NaN.
``inf_loss``    ``{"call": n}``: the n-th micro-batch's loss is multiplied by +inf.
``kill_in_write`` ``{"name": "ckpt_8.pt", "call": 1}``: when the n-th complete temp file
                of an output whose name contains ``name`` is about to be renamed to its
                final name, cut it to half its size and SIGKILL the process (a kill -9
                in the middle of writing a checkpoint or a shard).
``stop_in_write`` ``{"name": "ckpt_4.pt", "call": 1}``: when that complete temp file is
                about to be renamed, SIGSTOP this process (it holds its output's lock, its
                file complete but not yet renamed); the test continues it with SIGCONT.
``enospc``      ``{"quota": bytes}``: the disk is "full" after ``quota`` bytes of output
                files: the file that crosses it is cut short and ``OSError(ENOSPC)`` is
                raised, as the kernel would (a fallback where no size-limited tmpfs can
                be mounted).
"""

from __future__ import annotations

import errno
import json
import os
import runpy
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mine(spec: dict) -> bool:
    r = spec.get("rank")
    return r is None or int(os.environ.get("RANK", "0")) == int(r)


def _die(sig: int = signal.SIGKILL) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), sig)


def _patch_loss(faults: dict) -> None:
    import torch

    from bertforge.train import pretrain

    sig_spec, nan_spec, inf_spec = faults.get("signal"), faults.get("nan_grad"), faults.get("inf_loss")
    if not (sig_spec or nan_spec or inf_spec):
        return

    class _NanGrad(torch.autograd.Function):
        """Adds 0 to the loss; its backward makes the input's gradient NaN."""

        @staticmethod
        def forward(ctx, x):
            ctx.shape = x.shape
            return x.new_zeros(())

        @staticmethod
        def backward(ctx, g):
            return torch.full(ctx.shape, float("nan"), dtype=g.dtype)

    count = [0]

    def wrap(orig):
        # the loss of one micro-batch: __call__ (micro_batch normalisation) or sums (global)
        def call(self, model, batch):
            loss = orig(self, model, batch)
            count[0] += 1
            n = count[0]
            if nan_spec and _mine(nan_spec) and n == int(nan_spec["call"]):
                core = model.module if hasattr(model, "module") else model
                emb = core.bert.embeddings.word_embeddings.weight
                loss = loss + _NanGrad.apply(emb)
            if inf_spec and _mine(inf_spec) and n == int(inf_spec["call"]):
                loss = loss * float("inf")
            if sig_spec and _mine(sig_spec) and n == int(sig_spec["call"]):
                print(f"FAULT: {sig_spec['sig']} at micro-batch {n}", flush=True)
                _die(getattr(signal, sig_spec["sig"]))
            return loss
        return call

    pretrain.PretrainingLoss.__call__ = wrap(pretrain.PretrainingLoss.__call__)
    pretrain.PretrainingLoss.sums = wrap(pretrain.PretrainingLoss.sums)


def _patch_writers(faults: dict) -> None:
    """Faults at the moment a complete temp file is about to be renamed to its final name.

    Every output of bertforge (checkpoints, shards, JSON) is written to a temp file and
    renamed by ``os.replace`` (bertforge.files.atomic_path); the rename is where a kill or a
    full disk does the most harm, so that is where these faults strike.
    """
    kill = faults.get("kill_in_write")
    stop = faults.get("stop_in_write")
    quota = faults.get("enospc", {}).get("quota")
    if not kill and not stop and quota is None:
        return
    orig_replace = os.replace
    seen, stopped, written = [0], [0], [0]

    def replace(src, dst, *a, **k):
        src_s, name = os.fspath(src), os.path.basename(os.fspath(dst))
        if ".tmp-" in os.path.basename(src_s) and os.path.isfile(src_s):
            size = os.path.getsize(src_s)
            if kill and kill["name"] in name:
                seen[0] += 1
                if seen[0] == int(kill.get("call", 1)):
                    with open(src_s, "r+b") as fh:  # the write was cut half way ...
                        fh.truncate(size // 2)
                    print(f"FAULT: SIGKILL while writing {dst}", flush=True)
                    _die()  # ... by a kill -9
            if stop and stop["name"] in name:
                stopped[0] += 1
                if stopped[0] == int(stop.get("call", 1)):
                    print(f"FAULT: SIGSTOP before renaming {dst}", flush=True)
                    _die(signal.SIGSTOP)  # returns once the test sends SIGCONT
            if quota is not None:
                room = int(quota) - written[0]
                if size > room:  # the disk fills during this file
                    with open(src_s, "r+b") as fh:
                        fh.truncate(max(room, 0))
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src_s)
                written[0] += size
        return orig_replace(src, dst, *a, **k)

    os.replace = replace


def apply(faults: dict) -> None:
    """Install the patches ``faults`` asks for (see the module docstring)."""
    _patch_loss(faults)
    _patch_writers(faults)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: inject.py SCRIPT [ARGS...]")
    script = os.path.join(REPO, sys.argv[1]) if not os.path.isabs(sys.argv[1]) else sys.argv[1]
    faults = json.loads(os.environ.get("BERTFORGE_FAULT", "{}") or "{}")
    # as `python SCRIPT`: the script's folder (the repo root) first on sys.path
    sys.path[0] = os.path.dirname(script)
    apply(faults)
    sys.argv = [script, *sys.argv[2:]]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
