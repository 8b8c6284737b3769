"""`make demo` (scripts/demo.sh) on its reduced preset: every output, and Ctrl-C + rerun resumes.

The smoke preset (DEMO_PRESET=smoke) runs the same five steps as the full demo: the real
Wikipedia sample -> text -> vocab -> HDF5 + Parquet shards (once per module, copied into
each test's results folder), a few LAMB steps of each phase, held-out MLM accuracy of the
trained and the untrained model, fill-mask, and the plot.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertforge.checkpoint import list_checkpoints
from bertforge.plot import extract_curves, read_records

REPO = Path(__file__).resolve().parents[2]
P1, P2 = 30, 2  # smoke preset: phase-1 and phase-2 steps (scripts/demo.sh)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    return dict(env, PYTHON=sys.executable, DEMO_PRESET="smoke", **extra)


def _run(out: Path, timeout: float = 600, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts/demo.sh"), str(out)], env=_env(**extra),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke preset's data (step 1 only), made once for the module."""
    base = tmp_path_factory.mktemp("demo_base")
    r = _run(base, DEMO_STOP_AFTER="data")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (base / "data/phase2_parquet/.num_samples.json").is_file()
    return base / "data"


def _results_dir(tmp_path: Path, smoke_data: Path) -> Path:
    out = tmp_path / "demo"
    shutil.copytree(smoke_data, out / "data")
    return out


@pytest.mark.timeout(900)
def test_demo_smoke_outputs(tmp_path, smoke_data):
    out = _results_dir(tmp_path, smoke_data)
    t0 = time.perf_counter()
    r = _run(out, DEMO_PROCS="1")  # plain python; the Ctrl-C test below runs torchrun (2)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    text = r.stdout
    # step 1 found its complete outputs and skipped every data step
    assert text.count("skipping:") == 5, text[:3000]
    # progress: the five stage headers, training log lines of both phases
    for k in range(1, 6):
        assert f"=== [{k}/5]" in text
    assert "finished phase 1" in text and "finished phase 2" in text

    # checkpoints: the last of phase 2 is named by the global step
    assert list_checkpoints(out / "checkpoints")[-1][0] == P1 + P2

    # the dllogger log: one curve over both phases, phase 2 marked where phase 1 ended
    records, bad = read_records(out / "dllogger.json")
    assert bad == 0
    curves = extract_curves(records)
    steps, loss = curves.series["average_loss"]
    assert steps == list(range(1, P1 + P2 + 1))
    assert all(0 < v < 20 for v in loss)
    assert curves.series["learning_rate"][0] == steps
    assert curves.phase_starts == [(2, P1)]

    # held-out MLM accuracy of both models, from run_pretraining.py's evaluation-only mode
    accs, losses = {}, {}
    for which in ("trained", "untrained"):
        recs = [x["data"] for x in read_records(out / f"eval_{which}.json")[0]
                if x.get("step") == [] and "eval_mlm_accuracy" in x.get("data", {})]
        assert len(recs) == 1
        assert recs[0]["eval_masked_tokens"] > 0 and 0.0 <= recs[0]["eval_mlm_accuracy"] <= 1.0
        accs[which] = recs[0]["eval_mlm_accuracy"]
        losses[which] = recs[0]["eval_mlm_loss"]
    m = re.search(r"Held-out MLM accuracy:\s+pretrained ([0-9.e-]+)%.*\n\s+untrained\s+([0-9.e-]+)%", text)
    assert m, text[-2000:]
    assert float(m.group(1)) == pytest.approx(100 * accs["trained"], abs=0.051)
    assert float(m.group(2)) == pytest.approx(100 * accs["untrained"], abs=0.051)
    # what the demo shows holds even on the smoke preset: 30 steps beat the untrained model on
    # 4 held-out batches of 32 (measured: accuracy 2.6 % vs 0.0 %, MLM loss 8.18 vs 9.03)
    assert accs["trained"] >= accs["untrained"] + 0.01, accs
    assert losses["trained"] < losses["untrained"] - 0.3, losses

    # fill-mask: the held-out sentences with [MASK], top-5 lists, also in the summary
    import json

    fm = json.loads((out / "fill_mask.json").read_text())
    assert len(fm) == 2
    for ex in fm:
        assert ex["text"].count("[MASK]") == 1 and ex["hidden_word"]
        assert len(ex["predictions"]) == 1 and len(ex["predictions"][0]) == 5
        assert ex["hidden_word_rank"] >= 1
        probs = [p["probability"] for p in ex["predictions"][0]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    assert (out / "fill_mask.txt").read_text() in text

    # the plot: a real PNG with curves on it
    png = out / "pretraining_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] > 300 and img[..., :3].std() > 0.05

    # the last lines name the results folder; the console log is kept there too
    last = text.strip().splitlines()
    assert last[-1] == f"All results: {out}"
    assert str(png) in "\n".join(last[-4:])
    assert "All results" in (out / "demo.log").read_text()
    assert not list(out.glob("*.partial"))
    print(f"smoke demo: {elapsed:.0f} s; held-out MLM accuracy {accs['trained']:.4f} vs untrained "
          f"{accs['untrained']:.4f}, loss {losses['trained']:.3f} vs {losses['untrained']:.3f}")

    # a second run finds everything done and only prints the summary
    r2 = _run(out, timeout=120, DEMO_PROCS="1")
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert r2.stdout.count("done before:") == 5  # pretraining, 2 evaluations, fill-mask, plot
    assert "run_pretraining.py" not in r2.stdout  # no training or evaluation was started
    assert list_checkpoints(out / "checkpoints")[-1][0] == P1 + P2

    # the demo asserts what it shows: results where pretraining did not help fail it
    trained, untrained = out / "eval_trained.json", out / "eval_untrained.json"
    swap = trained.read_bytes()
    trained.write_bytes(untrained.read_bytes())
    untrained.write_bytes(swap)
    r3 = _run(out, timeout=120, DEMO_PROCS="1")
    assert r3.returncode == 1, r3.stdout[-2000:]
    assert "error: the pretrained model is no better than the untrained one" in r3.stdout
    assert "demo stopped" not in r3.stdout  # not an interruption: no resume hint


@pytest.mark.timeout(900)
def test_demo_ctrl_c_then_rerun_resumes(tmp_path, smoke_data):
    out = _results_dir(tmp_path, smoke_data)
    steps = 12
    # Ctrl-C = SIGINT to the whole foreground process group: bash, tee, python.
    proc = subprocess.Popen(["bash", str(REPO / "scripts/demo.sh"), str(out)], cwd=REPO,
                            env=_env(DEMO_SMOKE_STEPS=str(steps), DEMO_SMOKE_CKPT_EVERY="2",
                                     DEMO_PROCS="2"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list_checkpoints(out / "checkpoints"):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        first, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0, first[-2000:]
    done = list_checkpoints(out / "checkpoints")
    assert done and done[-1][0] < steps, (done, first[-2000:])
    resumed_from = done[-1]
    assert f"pretraining resumes from {resumed_from[1]}." in first  # the hint on Ctrl-C
    assert not (out / "eval_trained.json").exists()

    # (the steps after pretraining are those of the test above: stop after pretraining)
    r = _run(out, DEMO_SMOKE_STEPS=str(steps), DEMO_SMOKE_CKPT_EVERY="2", DEMO_PROCS="2",
             DEMO_STOP_AFTER="pretrain")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    # data was not redone; phase 1 continued from the latest checkpoint, not from step 0
    assert r.stdout.count("skipping:") == 5
    params = [x["data"] for x in read_records(out / "dllogger.json")[0]
              if x.get("step") == "PARAMETER" and x["data"].get("phase") == 1]
    assert params[0]["start_step"] == 0
    assert params[-1]["start_step"] == resumed_from[0], params
    assert params[-1]["start_from"] == str(resumed_from[1])
    curves = extract_curves(read_records(out / "dllogger.json")[0])
    assert curves.series["average_loss"][0] == list(range(1, steps + P2 + 1))
    assert list_checkpoints(out / "checkpoints")[-1][0] == steps + P2
    assert r.stdout.strip().splitlines()[-1] == f"pretrained: {out}/checkpoints/ckpt_{steps + P2}.pt"


@pytest.mark.timeout(600)
def test_demo_qa_smoke(tmp_path, smoke_data):
    """`make demo-qa` on the smoke text: the QA set, one fine-tuning step of the real MiniLM
    through scripts/run_squad.sh, EM/F1 on the held-out questions, inference.py answers."""
    out = _results_dir(tmp_path, smoke_data)
    env = _env(QA_TRAIN="12", QA_DEV="4", QA_MAX_STEPS="1", QA_BATCH="4", MAX_SEQ_LENGTH="128")
    r = subprocess.run(["bash", str(REPO / "scripts/demo_qa.sh"), str(out)], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    import json

    from bertforge.tasks.squad import read_squad_examples

    qa = out / "qa"
    dev = read_squad_examples(qa / "dev-v1.1.json", is_training=True)  # checks every span
    assert len(dev) == 4 and len(read_squad_examples(qa / "train-v1.1.json", is_training=True)) == 12
    res = json.loads((qa / "model/eval_results.json").read_text())
    assert set(res) == {"exact_match", "F1"}
    answers = json.loads((qa / "answers.json").read_text())
    assert [a["id"] for a in answers] == [e.qas_id for e in dev]
    assert all(a["answer"] in e.context for a, e in zip(answers, dev, strict=True))
    assert "done before" in r.stdout  # the text step found the smoke data
    assert f"exact match {res['exact_match']:.1f}, F1 {res['F1']:.1f}" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == f"All results: {qa}"
