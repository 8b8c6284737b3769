"""Raw corpus -> text shards in Google's format (one sentence per line, blank line between
documents), balanced by size, with a held-out fraction.

    python -m bertforge.cli.prepare_text --input enwiki-latest-pages-articles.xml.bz2 \\
        --output_dir results/text --num_shards 8 --holdout_fraction 0.05 --num_workers 2

Inputs: Wikipedia XML dumps (.xml.bz2/.xml, extracted with wikiextractor, sentences split
with blingfire), folders of .txt files already in Google's format, or JSONL with a text
field (one document per line).
"""

from __future__ import annotations

import argparse
import sys
import time

from bertforge.cli.args import ArgumentParser
from bertforge.errors import cli_entry

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m bertforge.cli.prepare_text",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True,
                   help="dump(s) (.xml.bz2/.xml), .txt/.jsonl file(s) or folder(s)")
    p.add_argument("--output_dir", required=True, help="where train/ and holdout/ go")
    p.add_argument("--num_shards", type=int, default=8, help="training text shards")
    p.add_argument("--holdout_fraction", type=float, default=0.0,
                   help="fraction of documents held out (e.g. 0.05)")
    p.add_argument("--num_holdout_shards", type=int, default=1)
    p.add_argument("--text_field", default="text", help="JSONL field holding the text")
    p.add_argument("--seed", type=int, default=12345, help="seed of the held-out split")
    p.add_argument("--num_workers", type=int, default=1, help="extraction processes")
    p.add_argument("--min_sentences", type=int, default=1,
                   help="drop documents with fewer sentences")
    return p.check(limits={"num_shards": "[1,1048576]", "holdout_fraction": "[0,1)",
                           "num_holdout_shards": "[1,1048576]", "num_workers": "[1,1024]",
                           "min_sentences": ">=0"},
                   outputs={"output_dir": "dir"})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from bertforge.data.text import read_corpus, write_text_shards

    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    docs, stats = read_corpus(args.input, num_workers=args.num_workers,
                              text_field=args.text_field)
    docs = [d for d in docs if len(d.sentences) >= args.min_sentences]
    summary = write_text_shards(docs, args.output_dir, num_shards=args.num_shards,
                                holdout_fraction=args.holdout_fraction,
                                num_holdout_shards=args.num_holdout_shards, seed=args.seed)
    if stats.bad_bytes:
        print(f"warning: {stats.bad_bytes} undecodable byte sequence(s) replaced by U+FFFD",
              file=sys.stderr)
    if stats.empty_files:
        print(f"warning: no text in {', '.join(stats.empty_files)}", file=sys.stderr)
    n_hold = sum(s["documents"] for s in summary["holdout"])
    print(f"{len(docs)} documents, {sum(len(d.sentences) for d in docs)} sentences -> "
          f"{len(summary['train'])} training shard(s) + {n_hold} held-out document(s) in "
          f"{args.output_dir} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
