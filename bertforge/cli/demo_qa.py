"""Write the self-made SQuAD v1.1 demo set from the Wikipedia sample's text shards.

    python -m bertforge.cli.demo_qa --text_dir results/demo/data/text --output_dir results/demo/qa

Reads ``<text_dir>/train`` and ``<text_dir>/holdout`` (the layout of
``data/create_datasets_from_start.sh``) and writes ``train-v1.1.json`` (questions about the
training articles) and ``dev-v1.1.json`` (about the held-out articles), atomically, in
the format ``run_squad.py`` and ``scripts/run_squad.sh`` read. The questions are templates
applied to sentences (see :mod:`bertforge.tasks.demo_qa`); deterministic for a ``--seed``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bertforge.cli.args import ArgumentParser
from bertforge.errors import DataError, cli_entry

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m bertforge.cli.demo_qa",
                                description="Write a small SQuAD v1.1 set about the sample articles.")
    p.add_argument("--text_dir", required=True, help="text shards: <text_dir>/train and /holdout")
    p.add_argument("--output_dir", required=True, help="train-v1.1.json and dev-v1.1.json go here")
    p.add_argument("--max_train", type=int, default=600, help="questions kept for training (0: all)")
    p.add_argument("--max_dev", type=int, default=100, help="questions kept for evaluation (0: all)")
    p.add_argument("--sentences_per_context", type=int, default=4,
                   help="consecutive sentences per context paragraph")
    p.add_argument("--seed", type=int, default=12345, help="which questions are kept")
    return p.check(limits={"max_train": ">=0", "max_dev": ">=0", "sentences_per_context": "[1,100000]"},
                   outputs={"output_dir": "dir"})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from bertforge.files import atomic_write_json, ensure_dir
    from bertforge.tasks.demo_qa import build_squad, count_questions, read_documents

    args = build_parser().parse_args(argv)
    text = Path(args.text_dir)
    out = ensure_dir(args.output_dir)
    for split, sub, cap in (("train", "train", args.max_train), ("dev", "holdout", args.max_dev)):
        if not (text / sub).is_dir():
            raise DataError(f"--text_dir {text}: no {sub}/ folder (make it with "
                            "data/create_datasets_from_start.sh)")
        squad = build_squad(read_documents(text / sub), title=split, seed=args.seed,
                            sentences_per_context=args.sentences_per_context,
                            max_questions=cap or None)
        n = count_questions(squad)
        if n == 0:
            raise DataError(f"--text_dir {text / sub}: no sentence fits a question template")
        path = out / f"{split}-v1.1.json"
        atomic_write_json(path, squad, indent=None)
        print(f"{path}: {n} questions about {len(squad['data'])} articles")
    return 0


if __name__ == "__main__":
    main()
