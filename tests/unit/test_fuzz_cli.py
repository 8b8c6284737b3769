"""Fuzz every CLI of the project: every flag, generated values, no traceback, nothing half-written.

Each invocation is a small valid run of one CLI (tiny model, a step or two, tiny data) with
one or two of its flags replaced by a generated value of one kind: negative, zero, huge,
NaN/inf, empty, a folder, a binary file, a path that does not exist, a read-only path,
odd Unicode (right-to-left marks, an undecodable byte, emoji), a valid choice, a bare
switch. Flags are visited in turn, so ``N`` >= the number of flags reaches every flag of
every CLI at least once. Asserted for every invocation:

* no Python traceback on stdout or stderr, and no hang (a per-run timeout);
* exit status 0 or 2 (1 only for the documented environment failures:
  :data:`EXIT_1_ALLOWED`);
* nothing half-written: no temporary file or folder (``*.tmp-*``) is left, and every
  output file that exists loads whole (JSON, dllogger lines, torch, HDF5, Parquet,
  safetensors, PNG).

The CLIs run in children forked from one interpreter that imported them once
(tests/faults/forkrun.py), each from its own folder, so relative paths land there.
``BERTFORGE_FUZZ_SEED`` (default 19: CI) picks the values, ``random`` a fresh seed;
``BERTFORGE_FUZZ_N`` the number of invocations (default: 300, or one per flag when there are
more flags). A failure prints the seed
and the exact command line to reproduce it.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
from pathlib import Path

import pytest

from tests.faults.helpers import forkrun, make_read_only

pytestmark = pytest.mark.timeout(1800)

_env_seed = os.environ.get("BERTFORGE_FUZZ_SEED", "19")
SEED = random.SystemRandom().randrange(2**31) if _env_seed == "random" else int(_env_seed)
_env_n = os.environ.get("BERTFORGE_FUZZ_N")
FULL_RUN = 300
"""Invocations of a default run; a run of fewer (BERTFORGE_FUZZ_N) need not reach every flag."""

#: Exit status 1 is an environment failure, not a bad input: only these one-line errors.
EXIT_1_ALLOWED = ("did not all join at", "communication with the other ranks failed")

# CLI -> (script or module, the base invocation, its parser's module, modules to preload).
# Base invocations are small valid runs; "{inv}" is the invocation's own folder.
P, C, S, G, I = ("run_pretraining.py", "create_pretraining_data.py", "run_squad.py",  # noqa: E741
                 "run_glue.py", "inference.py")
CLIS: dict[str, tuple[str, list[str], str]] = {
    "pretrain": (P, ["--input_dir={hdf5}", "--config_file={config}", "--output_dir={inv}/out",
                     "--do_train", "--train_batch_size=4", "--max_steps=1", "--max_seq_length=64",
                     "--max_predictions_per_seq=10", "--num_workers=0", "--disable_progress_bar"],
                 "bertforge.cli.pretrain"),
    "create": (C, ["--input_file={text}/part-00000.txt", "--output_file={inv}/out",
                   "--vocab_file={vocab}", "--max_seq_length=64", "--max_predictions_per_seq=10",
                   "--dupe_factor=1", "--progress=false"], "bertforge.cli.create_pretraining_data"),
    "squad": (S, ["--init_checkpoint={qa}", "--vocab_file={vocab}", "--output_dir={inv}/out",
                  "--do_train", "--train_file={squad}", "--max_seq_length=64", "--doc_stride=32",
                  "--max_query_length=16", "--train_batch_size=4", "--max_steps=1", "--skip_cache"],
              "bertforge.cli.squad"),
    "glue": (G, ["--task_name=sst-2", "--data_dir={glue}", "--init_checkpoint={pretrain_ckpt}",
                 "--vocab_file={vocab}", "--output_dir={inv}/out", "--do_train", "--max_seq_length=32",
                 "--train_batch_size=4", "--max_steps=1"], "bertforge.cli.glue"),
    "inference": (I, ["--init_checkpoint={qa}", "--vocab_file={vocab}", "--question=Who wrote it?",
                      "--context=The book was written by the city council.", "--max_seq_length=64",
                      "--doc_stride=32", "--max_query_length=16"], "bertforge.cli.inference"),
    "convert": ("bertforge.convert", ["--from=bertforge", "--to=hf", "{qa}", "{inv}/hf"], "bertforge.convert"),
    "evaluate": ("bertforge.evaluate_squad", ["{squad}", "{predictions}", "--out_file={inv}/eval.json"],
                 "bertforge.evaluate_squad"),
    "prepare_text": ("bertforge.cli.prepare_text", ["--input={text}", "--output_dir={inv}/text",
                                                    "--num_shards=1"], "bertforge.cli.prepare_text"),
    "prepare_vocab": ("bertforge.cli.prepare_vocab", ["--input={text}", "--output={inv}/vocab.txt",
                                                      "--vocab_size=200"], "bertforge.cli.prepare_vocab"),
    "fill_mask": ("bertforge.cli.fill_mask", ["--init_checkpoint={pretrain_ckpt}", "--vocab_file={vocab}",
                                              "--text=the [MASK] city", "--output={inv}/fill.json"],
                  "bertforge.cli.fill_mask"),
    "demo_qa": ("bertforge.cli.demo_qa", ["--text_dir={text_split}", "--output_dir={inv}/qa",
                                          "--max_train=5", "--max_dev=5"], "bertforge.cli.demo_qa"),
    "wiki_sample": ("bertforge.cli.prepare_wiki_sample", ["--cache_dir={inv}/cache"],
                    "bertforge.cli.prepare_wiki_sample"),
    "plot": ("bertforge.plot", ["{dllogger}", "--output={inv}/plot.png"], "bertforge.plot"),
    "export": ("deploy/triton/export_model.py", ["--init_checkpoint={qa}", "--output_dir={inv}/export",
                                                 "--formats=torchscript", "--max_seq_length=64",
                                                 "--doc_stride=32", "--max_query_length=16"],
               "bertforge.serving.export"),
    "repository": ("deploy/triton/generate_model_repository.py",
                   ["--export_dir={export}", "--model_repository={inv}/repo", "--formats=torchscript"],
                   "bertforge.serving.repository"),
    "client": ("deploy/triton/run_squad_client.py", ["--url=127.0.0.1:9", "--vocab_file={vocab}",
                                                     "--question=Who?", "--context=The city council."],
               "bertforge.serving.client"),
    "server": ("deploy/triton/serve.py", ["--model_repository={inv}/repo_missing"], "bertforge.serving.server"),
    "serve_demo": ("deploy/triton/serve_demo.py", ["--init_checkpoint={garbage}", "--work_dir={inv}/demo"],
                   "bertforge.serving.demo"),
}

#: Flags whose huge values mean a long but legitimate run (steps, epochs, copies): not "huge".
LONG_RUNS = {"max_steps", "steps_this_run", "num_train_epochs", "dupe_factor", "train_steps",
             "max_train", "max_dev", "num_examples", "check_questions", "num_eval_batches",
             "max_questions", "exit_timeout_secs", "dist_timeout", "max_queue_delay_us"}

UNICODE = ["ünïcödé", "\u202etxt.exe", "日本語のパス", "😀" * 12, "x\udcff", "a\u0301\u0301b", "\u200b", " "]
KINDS = ("negative", "zero", "huge", "nan", "empty", "folder", "binary", "missing", "read_only",
         "unicode", "choice")


def value(kind: str, rng: random.Random, action, inv: Path, read_only: Path) -> str:
    if kind == "negative":
        return rng.choice(["-1", "-7.5", "-9223372036854775809"])
    if kind == "zero":
        return rng.choice(["0", "0.0"])
    if kind == "huge":
        return rng.choice(["9223372036854775808", "1e308", "1e400", "99999999999", "2147483648"])
    if kind == "nan":
        return rng.choice(["nan", "NaN", "inf", "-inf"])
    if kind == "empty":
        return ""
    if kind == "folder":
        (inv / "folder").mkdir(exist_ok=True)
        return str(inv / "folder")
    if kind == "binary":
        (inv / "binary.bin").write_bytes(bytes(rng.randrange(256) for _ in range(2048)))
        return str(inv / "binary.bin")
    if kind == "missing":
        return str(inv / "missing" / "nope.json")
    if kind == "read_only":
        return rng.choice([str(read_only), str(read_only / "x.json")])
    if kind == "unicode":
        return rng.choice(UNICODE)
    if kind == "choice" and action.choices:
        return str(rng.choice(list(action.choices)))
    return rng.choice(UNICODE)


def flags_of(parser) -> list:
    """Every action a user can give (optional flags and positionals), help excluded."""
    import argparse

    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def mutate(argv: list[str], action, val: str | None) -> list[str]:
    """``argv`` with ``action`` set to ``val`` (a switch: added; a positional: replaced)."""
    import argparse

    if not action.option_strings:  # a positional: replace the first bare argument in its slot
        bare = [i for i, a in enumerate(argv) if not a.startswith("--")]
        names = [a.dest for a in action.container._actions if not a.option_strings]
        slot = names.index(action.dest)
        out = list(argv)
        if slot < len(bare):
            out[bare[slot]] = val or ""
        return out
    opt = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
    kept = [a for a in argv if a.split("=", 1)[0] not in action.option_strings]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse._StoreConstAction, argparse.BooleanOptionalAction)) or action.nargs == 0:
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction) and val == "no":
            flag = next(o for o in action.option_strings if o.startswith("--no-"))
        return [*kept, flag]
    return [*kept, f"{opt}={val}"]


def n_invocations() -> int:
    """BERTFORGE_FUZZ_N, else FULL_RUN, or one invocation per flag when there are more flags
    (the flags are taken in turn, so every one is reached)."""
    if _env_n:
        return int(_env_n)
    import importlib

    flags = sum(len(flags_of(importlib.import_module(m).build_parser())) for _, _, m in CLIS.values())
    return max(FULL_RUN, flags)


def plan(fx: dict, root: Path, read_only: Path, seed: int, n: int) -> list[dict]:
    """The invocations: flags in turn (every flag of every CLI), values drawn with ``seed``."""
    import importlib

    rng = random.Random(seed)
    pairs = []
    for name, (_, _, mod) in CLIS.items():
        parser = importlib.import_module(mod).build_parser()
        pairs += [(name, a) for a in flags_of(parser)]
    cases = []
    for i in range(max(n, 0)):
        name, action = pairs[i % len(pairs)]
        cli, base, _ = CLIS[name]
        inv = root / f"inv_{i:04d}"
        inv.mkdir()
        argv = [a.format(inv=inv, **fx) for a in base]
        chosen = [action]
        if rng.random() < 0.3:  # sometimes a second flag of the same CLI
            chosen.append(rng.choice([a for n2, a in pairs if n2 == name]))
        for act in chosen:
            kinds = [k for k in KINDS if not (k == "huge" and act.dest in LONG_RUNS)]
            kind = rng.choice(kinds)
            argv = mutate(argv, act, value(kind, rng, act, inv, read_only))
        key = "script" if cli.endswith(".py") else "module"
        cases.append({"id": f"{i:04d}", key: cli, "argv": argv, "cwd": str(inv), "timeout": 240,
                      "env": {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "BERTFORGE_DIST_TIMEOUT": "20"},
                      "flags": [a.dest for a in chosen]})
    return cases


def loads_whole(path: Path) -> str | None:
    """None if the file at a final name is complete, else what is wrong with it."""
    name = path.name
    try:
        if name == "dllogger.json" or (name.endswith(".json") and path.read_bytes().startswith(b"DLLL ")):
            # a dllogger file (--json-summary may give it any name): one JSON record per line
            for ln in path.read_text(encoding="utf-8").splitlines():
                json.loads(ln[5:] if ln.startswith("DLLL ") else ln)
        elif name.endswith(".json") and not name.startswith(".") or name == ".num_samples.json":
            json.loads(path.read_text(encoding="utf-8"))
        elif name.endswith((".pt", ".bin")) and path.stat().st_size:
            import zipfile

            import torch

            with zipfile.ZipFile(path) as z:
                scripted = any("/code/" in n for n in z.namelist())
            if scripted:  # a TorchScript export (through a file object: any bytes in the path)
                with open(path, "rb") as fh:
                    torch.jit.load(fh, map_location="cpu")
            else:
                torch.load(path, map_location="cpu", weights_only=True)
        elif name.endswith((".hdf5", ".h5")):
            import h5py

            with h5py.File(path, "r") as f:
                for k in f:
                    f[k][...]
        elif ".parquet" in name:
            import pyarrow.parquet as pq

            pq.read_table(path)
        elif name.endswith(".safetensors"):
            from safetensors.torch import load

            load(path.read_bytes())  # any bytes in the path
        elif name.endswith(".png"):
            data = path.read_bytes()
            if not (data.startswith(b"\x89PNG") and data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")):
                return "not a whole PNG"
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        return f"{type(e).__name__}: {str(e)[:200]}"
    return None


def fuzz_fixtures(cli_fixtures: dict, root: Path) -> dict:
    """The bad-input world plus what the fuzz's base invocations read."""
    from bertforge.serving.export import main as export_main

    root.mkdir(parents=True)
    fx = {k: str(v) for k, v in cli_fixtures.items()}
    split = root / "text_split"
    for sub in ("train", "holdout"):
        shutil.copytree(fx["text"], split / sub)
    (root / "predictions.json").write_text(json.dumps({"q1": "the city council"}))
    (root / "dllogger.json").write_text("".join(
        f'DLLL {{"type": "LOG", "step": [0, {s}], "data": {{"average_loss": {7 - s / 10}, '
        f'"learning_rate": 0.001}}}}\n' for s in range(1, 6)))
    assert export_main(["--init_checkpoint", fx["qa"], "--output_dir", str(root / "export"),
                        "--formats", "torchscript", "--max_seq_length", "64"]) == 0
    return {**fx, "text_split": str(split), "predictions": str(root / "predictions.json"),
            "dllogger": str(root / "dllogger.json"), "export": str(root / "export")}


def reproduce(case: dict) -> str:
    cmd = case.get("script") or f"-m {case['module']}"
    return f"cd {shlex.quote(case['cwd'])} && python {cmd} " + " ".join(shlex.quote(a) for a in case["argv"])


@pytest.fixture(scope="module")
def fuzzed(cli_fixtures, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    fx = fuzz_fixtures(cli_fixtures, root / "fx")
    read_only = root / "read_only"
    undo = make_read_only(read_only)
    try:
        cases = plan(fx, root, read_only, SEED, n_invocations())
        preload = list(dict.fromkeys(m for _, _, m in CLIS.values()))
        results = forkrun(cases, preload, timeout=3600)
    finally:
        undo()
    return cases, results


def test_every_flag_of_every_cli_is_fuzzed(fuzzed):
    import importlib

    cases, _ = fuzzed
    full = len(cases) >= FULL_RUN
    assert full or _env_n, len(cases)
    reached = {(c.get("script") or c.get("module"), f) for c in cases for f in c["flags"]}
    for _name, (cli, _, mod) in CLIS.items():
        flags = {a.dest for a in flags_of(importlib.import_module(mod).build_parser())}
        missing = {f for f in flags if (cli, f) not in reached}
        assert not missing or not full, f"{cli}: flags never fuzzed: {sorted(missing)}"


def test_no_traceback_no_hang_exit_0_or_2_nothing_half_written(fuzzed):
    cases, results = fuzzed
    problems = []
    for case in cases:
        r = results[case["id"]]
        out = r["stdout"] + r["stderr"]
        why = None
        if r["code"] == "timeout":
            why = "hung (timeout)"
        elif "Traceback (most recent call last)" in out:
            why = "traceback"
        elif r["code"] not in (0, 2) and not (r["code"] == 1 and any(s in out for s in EXIT_1_ALLOWED)):
            why = f"exit {r['code']}"
        else:
            inv = Path(case["cwd"])
            temps = [str(p.relative_to(inv)) for p in inv.rglob("*") if ".tmp-" in p.name]
            broken = [(str(p.relative_to(inv)), e) for p in inv.rglob("*") if p.is_file()
                      and p.name != "binary.bin" and (e := loads_whole(p)) is not None]
            if temps or broken:
                why = f"left half-written: {temps or broken}"
        if why:
            problems.append(f"[{case['id']}] {why}: {reproduce(case)}\n{r['stderr'][-1500:]}")
    assert not problems, (f"BERTFORGE_FUZZ_SEED={SEED} BERTFORGE_FUZZ_N={len(cases)}: {len(problems)} of "
                          f"{len(cases)} invocations failed\n" + "\n".join(problems[:10]))
