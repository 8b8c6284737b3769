"""The figures docs/ quotes from acceptance runs, written by the runs that check them.

    make docs-figures        # the tests below (~15 min on 2 cores), then the marked sections of docs/
    .venv/bin/python bench/bench_acceptance.py [--from DIR] [--docs docs]

Runs pytest (--no-skips) on the tests that measure a figure of docs/; each records what it
measured with the ``record_figure`` fixture into $BERTFORGE_FIGURES_DIR. When every test
passed, the figures go into these sections, with the command, commit and machine:

  docs/demo.md         demo_figures       tests/integration/test_demo_full.py (make demo, make demo-qa)
  docs/finetuning.md   finetune_figures   MiniLM on SST-2 and SQuAD (test_finetune_glue/squad.py)
  docs/pretraining.md  pretrain_wiki      tests/integration/test_pretrain_wiki.py

``--from DIR`` writes the sections from the figure files of an earlier run without running
the tests again. The same tests run in `make test-acceptance` and `make test`, with bars below
these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import provenance, provenance_line, write_section  # noqa: E402

SCRIPT = "bench/bench_acceptance.py"
TESTS = [
    "tests/integration/test_demo_full.py",
    "tests/integration/test_finetune_glue.py::test_minilm_learns_sst2_quick",
    "tests/integration/test_finetune_glue.py::test_minilm_reaches_80_on_sst2_dev",
    "tests/integration/test_finetune_squad.py::test_minilm_learns_squad_quick",
    "tests/integration/test_finetune_squad.py::test_minilm_learns_squad_longer",
    "tests/integration/test_pretrain_wiki.py",
]
SECTIONS = {  # markdown file -> (section, figures it needs)
    "demo.md": ("demo_figures", ("demo", "demo_qa")),
    "finetuning.md": ("finetune_figures", ("sst2_full", "sst2_quick", "squad_quick", "squad_longer")),
    "pretraining.md": ("pretrain_wiki", ("pretrain_wiki",)),
}


def _mmss(s: float) -> str:
    return f"{int(s // 60)} min {int(round(s % 60))} s" if s >= 60 else f"{s:.0f} s"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %" if x >= 0.01 else f"{100 * x:.2g} %"


def demo_md(f: dict, head: str) -> str:
    d, q = f["demo"], f["demo_qa"]
    st = d["stage_s"]
    t, u = d["trained"], d["untrained"]
    rate = d["phase_sequences_per_s"]
    lines = [head, "",
             "| `make demo` (the full preset; venv present, so no installation) | |", "| --- | --- |",
             f"| wall time | **{_mmss(d['wall_s'])}** |",
             f"| 1 data | {st['1']} s |",
             f"| 2 pretraining | {st['2']} s (phase 1 at {rate[0]:.0f} sequences/s, phase 2 at {rate[-1]:.0f}) |",
             f"| 3 evaluation (2 runs) | {st['3']} s |",
             f"| 4 fill-mask, 5 plot | {st['4']} s, {st['5']} s |",
             f"| training loss (`average_loss`, phase 1) | {d['loss_first'][1]:.2f} at step {d['loss_first'][0]} -> "
             f"{d['loss_last'][1]:.2f} at step {d['loss_last'][0]} |",
             f"| **held-out MLM accuracy** | **{_pct(t['eval_mlm_accuracy'])}** pretrained (MLM loss "
             f"{t['eval_mlm_loss']:.2f}) vs **{_pct(u['eval_mlm_accuracy'])}** untrained (loss "
             f"{u['eval_mlm_loss']:.2f}), on the same {t['eval_masked_tokens']:,} masked tokens |",
             "", f"Two of its fill-mask examples (held-out sentences; {d['vocab_size']:,}-token vocab):", "", "```"]
    for ex in d["fill_mask"]:
        top = "  ".join(f"{p['token']} {p['probability']:.4f}" for p in ex["top"])
        lines += [f"  input:  {ex['text']}", f"  top:    {top}",
                  f"  hidden: {ex['hidden_word']}  (rank {ex['hidden_word_rank']})"]
    first = q["first"]
    lines += ["```", "",
              f"`make demo-qa` afterwards: **{_mmss(q['wall_s'])}**; on the {q['questions']} questions about "
              f"held-out articles **exact match {q['exact_match']:.1f}, F1 {q['f1']:.1f}**; `inference.py` "
              f"answers {q['inference_answers']} of them, {q['inference_right']} exactly right (the first: "
              f"{first['question']!r}, gold {first['gold'][0]!r}, answer {first['answer']!r})."]
    return "\n".join(lines) + "\n"


def finetune_md(f: dict, head: str) -> str:
    a, b, c, d = f["sst2_full"], f["sst2_quick"], f["squad_quick"], f["squad_longer"]
    lines = [head, "",
             "| run (test) | data | result |", "| --- | --- | --- |",
             f"| SST-2, MiniLM, max_seq_length 64, batch 32, lr 5e-5, 1 epoch = {a['steps']} steps "
             f"(`test_minilm_reaches_80_on_sst2_dev`) | {a['train_rows']:,} real SST-2 train rows | "
             f"**{_pct(a['acc'])}** on the official dev set ({a['dev_rows']} rows); untrained head {_pct(a['untrained_acc'])} |",
             f"| SST-2 quick, same settings, {b['steps']} steps (`test_minilm_learns_sst2_quick`) | "
             f"{b['steps']} x 32 rows | {_pct(b['acc'])} on the first {b['dev_rows']} dev rows; untrained head "
             f"{_pct(b['untrained_acc'])} |",
             f"| SQuAD v1.1, MiniLM, max_seq_length 192, batch 8, lr 1e-4, 3 epochs (`test_minilm_learns_squad_quick`) | "
             f"{c['train_questions']} Normans questions | F1 {c['f1']:.1f} / EM {c['exact_match']:.1f} on "
             f"{c['dev_questions']} Southern_California questions (untrained head F1 {c['untrained_f1']:.1f}); on the "
             f"trained-on questions F1 {c['seen_f1']:.1f} (untrained {c['seen_untrained_f1']:.1f}) |",
             f"| SQuAD v1.1, MiniLM, batch 16, lr 1e-4, {d['epochs']} epochs (`test_minilm_learns_squad_longer`) | "
             f"{d['train_questions']} questions (the first 2/3 of each article's paragraphs) | F1 {d['f1']:.1f} / EM "
             f"{d['exact_match']:.1f} on the {d['dev_questions']} questions about the other paragraphs "
             f"(untrained head F1 {d['untrained_f1']:.1f}) |"]
    return "\n".join(lines) + "\n"


def pretrain_md(f: dict, head: str) -> str:
    p = f["pretrain_wiki"]
    curve = {step: loss for step, loss in p["curve"]}
    masked = p["evals"][-1][1]["eval_masked_tokens"]
    lines = [head, "", f"{p['instances']:,} training instances, a {p['vocab_size']:,}-token vocab, {masked:,} held-out "
             f"masked tokens; training took {_mmss(p['train_s'])} (evaluations included).", "",
             "| step | held-out MLM accuracy | held-out MLM loss | training `average_loss` (last 25 steps) |",
             "| --- | --- | --- | --- |"]
    for i, (step, e) in enumerate(p["evals"]):
        s = step[-1] if isinstance(step, list) and step else (0 if i == 0 else max(curve))
        lines.append(f"| {s} | {100 * e['eval_mlm_accuracy']:.2f} % | {e['eval_mlm_loss']:.2f} | "
                     f"{curve[s]:.2f} |" if s in curve else
                     f"| {s} | {100 * e['eval_mlm_accuracy']:.2f} % | {e['eval_mlm_loss']:.2f} | - |")
    lines += ["", "The loss curve (`average_loss` every 25 steps): "
              + ", ".join(f"{v:.2f}" for _, v in p["curve"]) + "."]
    return "\n".join(lines) + "\n"


RENDER = {"demo.md": demo_md, "finetuning.md": finetune_md, "pretraining.md": pretrain_md}


def write_docs(figures: dict, docs: Path, info: dict) -> list[str]:
    head = (f"Measured by `{SCRIPT}` (`make docs-figures`: the acceptance tests named below, which check "
            f"these figures against their bars); written by that script.\n\n{provenance_line(info)}")
    written = []
    for name, (section, needs) in SECTIONS.items():
        if all(k in figures for k in needs):
            write_section(docs / name, section, RENDER[name](figures, head))
            written.append(f"{name}:{section}")
    return written


def main(argv: list[str] | None = None) -> list[str]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="src", help="figure files of an earlier run (no tests are run)")
    p.add_argument("--docs", default=str(REPO / "docs"), help="the docs folder to write [docs/]")
    p.add_argument("--keep", help="keep the figure files in this folder")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = p.parse_args(argv)
    info = provenance(SCRIPT, argv)
    if not Path(args.docs).is_dir():  # checked before the tests run, not after 15 minutes of them
        raise SystemExit(f"error: --docs {args.docs}: no such folder")
    if args.src:
        src = Path(args.src)
        if not src.is_dir():
            raise SystemExit(f"error: --from {src}: no such folder")
    else:
        src = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bertforge-figures-"))
        env = {**os.environ, "BERTFORGE_FIGURES_DIR": str(src)}
        env.setdefault("BERTFORGE_REAL_DATA", str(REPO.parent / "shared/data"))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-skips", *TESTS, *args.pytest_args]
        print("+ " + " ".join(cmd), flush=True)
        r = subprocess.run(cmd, cwd=REPO, env=env)
        if r.returncode != 0:
            raise SystemExit(f"error: the acceptance tests failed (pytest exit {r.returncode}); docs/ left as it was")
        info["load_end"] = round(os.getloadavg()[0], 2)
        (src / "_provenance.json").write_text(json.dumps(info))
    if (src / "_provenance.json").exists():  # the run that measured them, not this rendering
        info = json.loads((src / "_provenance.json").read_text())
    figures = {f.stem: json.loads(f.read_text()) for f in sorted(src.glob("*.json")) if not f.stem.startswith("_")}
    written = write_docs(figures, Path(args.docs), info)
    print("wrote " + (", ".join(written) or "nothing (no complete set of figures)"))
    return written


if __name__ == "__main__":
    main()
