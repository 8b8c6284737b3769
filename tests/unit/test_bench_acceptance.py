"""bench/bench_acceptance.py and bench/report.py: the figures the acceptance tests record land in
their marked sections of docs/ with the command and commit, and nowhere else."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.conftest import REPO, bench_module

ba = bench_module("bench_acceptance")
report = bench_module("report")

FIGURES = {
    "demo": {"wall_s": 301.2, "stage_s": {"1": 11, "2": 263, "3": 22, "4": 2, "5": 1},
             "phase_sequences_per_s": [131.5, 30.2], "loss_first": [20, 9.64], "loss_last": [600, 6.97],
             "trained": {"eval_mlm_accuracy": 0.1321, "eval_mlm_loss": 6.54, "eval_masked_tokens": 47896},
             "untrained": {"eval_mlm_accuracy": 6.3e-05, "eval_mlm_loss": 9.03, "eval_masked_tokens": 47896},
             "fill_mask": [{"text": "the 20th [MASK]", "hidden_word": "century", "hidden_word_rank": 115,
                            "top": [{"token": "the", "probability": 0.0569}]}], "vocab_size": 8192},
    "demo_qa": {"wall_s": 342.0, "exact_match": 59.0, "f1": 62.9, "questions": 100, "inference_answers": 8,
                "inference_right": 7, "first": {"question": "by whom?", "answer": "reus", "gold": ["Hera"]}},
    "sst2_full": {"untrained_acc": 0.515, "acc": 0.8440, "steps": 250, "train_rows": 8000, "dev_rows": 872},
    "sst2_quick": {"untrained_acc": 0.515, "acc": 0.83, "steps": 40, "train_rows": 1280, "dev_rows": 200},
    "squad_quick": {"untrained_f1": 6.9, "f1": 9.8, "exact_match": 3.9, "seen_untrained_f1": 6.2, "seen_f1": 25.1,
                    "train_questions": 96, "dev_questions": 180},
    "squad_longer": {"untrained_f1": 9.4, "f1": 16.4, "exact_match": 7.4, "epochs": 8, "train_questions": 324,
                     "dev_questions": 149},
    "pretrain_wiki": {"evals": [[[0, 0], {"eval_mlm_accuracy": 0.0, "eval_mlm_loss": 10.37, "eval_masked_tokens": 11537}],
                                [[0, 100], {"eval_mlm_accuracy": 0.07, "eval_mlm_loss": 7.52, "eval_masked_tokens": 11537}],
                                [[], {"eval_mlm_accuracy": 0.098, "eval_mlm_loss": 7.2, "eval_masked_tokens": 11537}]],
                      "curve": [[25, 10.67], [100, 7.93], [300, 7.5]], "train_s": 1680.0, "instances": 25232,
                      "vocab_size": 25200},
}


def test_figures_go_into_their_sections_with_command_and_commit(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    before = {p.name: p.read_text() for p in docs.glob("*.md")}
    src = tmp_path / "figures"
    src.mkdir()
    for name, values in FIGURES.items():
        (src / f"{name}.json").write_text(json.dumps(values))
    (src / "_provenance.json").write_text(json.dumps({
        "command": "python bench/bench_acceptance.py", "commit": "abc1234567", "machine": "cpu, 2 cores",
        "torch": "2.13.0", "date": "2026-01-01 00:00 UTC", "load_start": 0.1, "load_end": 0.2}))
    written = ba.main(["--from", str(src), "--docs", str(docs)])
    assert written == ["demo.md:demo_figures", "finetuning.md:finetune_figures", "pretraining.md:pretrain_wiki"]
    demo = (docs / "demo.md").read_text()
    for text in ("**13.2 %** pretrained", "0.0063 %", "47,896 masked tokens", "5 min 1 s", "9.64 at step 20",
                 "exact match 59.0, F1 62.9", "hidden: century  (rank 115)", "Commit `abc1234567`"):
        assert text in demo, text
    fine = (docs / "finetuning.md").read_text()
    assert "**84.4 %** on the official dev set" in fine and "F1 16.4 / EM 7.4" in fine and "abc1234567" in fine
    pre = (docs / "pretraining.md").read_text()
    assert "| 100 | 7.00 % | 7.52 | 7.93 |" in pre and "| 300 | 9.80 % | 7.20 | 7.50 |" in pre
    assert "25,232 training instances" in pre
    # only the marked sections changed
    for name, old in before.items():
        new = (docs / name).read_text()
        strip = lambda t: report_sections_removed(t)  # noqa: E731
        assert strip(new) == strip(old), name
    # and a second rendering changes nothing
    ba.main(["--from", str(src), "--docs", str(docs)])
    assert (docs / "demo.md").read_text() == demo


def report_sections_removed(text: str) -> str:
    out, skip = [], False
    for line in text.splitlines():
        if line.startswith("<!-- ") and line.endswith(":start -->"):
            skip = True
        if not skip:
            out.append(line)
        if line.startswith("<!-- ") and line.endswith(":end -->"):
            skip = False
    return "\n".join(out)


def test_write_section_replaces_or_appends(tmp_path):
    md = tmp_path / "b.md"
    md.write_text("# B\n\nintro\n\n<!-- x:start -->\nold\n<!-- x:end -->\n\n## after\n")
    report.write_section(md, "x", "new text\n")
    assert md.read_text() == "# B\n\nintro\n\n<!-- x:start -->\nnew text\n<!-- x:end -->\n\n## after\n"
    report.write_section(md, "y", "appended")
    assert md.read_text().endswith("## after\n\n<!-- y:start -->\nappended\n<!-- y:end -->\n")
    assert not list(tmp_path.glob("*.partial"))


def test_a_section_whose_end_marker_is_missing_is_an_error(tmp_path):
    md = tmp_path / "b.md"
    md.write_text("<!-- x:start -->\nold\n")
    try:
        report.write_section(md, "x", "new")
    except SystemExit as e:
        assert str(e).startswith("error: ") and "x:end" in str(e)
    else:
        raise AssertionError("no error")
    assert md.read_text() == "<!-- x:start -->\nold\n"


def test_the_commit_a_figure_names_is_dirty_only_for_changes_outside_docs(tmp_path, monkeypatch):
    """One ``make bench`` runs several benches that each write docs/benchmarks.md: the later
    ones still measure the commit's code, so only a change outside docs/ marks it dirty."""
    import subprocess

    report = bench_module("report")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/benchmarks.md").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    monkeypatch.setattr(report, "REPO", tmp_path)
    clean = report.git_commit()
    assert len(clean) == 10 and not clean.endswith("-dirty")
    (tmp_path / "docs/benchmarks.md").write_text("figures\n")
    assert report.git_commit() == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert report.git_commit() == clean + "-dirty"


def test_a_missing_docs_folder_is_one_line_before_any_test_runs(tmp_path):
    r = subprocess.run([sys.executable, "bench/bench_acceptance.py", "--docs", str(tmp_path / "nope")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "+ " not in r.stdout, r.stdout + r.stderr
    assert r.stderr.strip() == f"error: --docs {tmp_path / 'nope'}: no such folder"
