"""Train a WordPiece vocabulary (vocab.txt) on text shards with HF ``tokenizers``.

    python -m bertforge.cli.prepare_vocab --input results/text/train \\
        --output results/vocab.txt --vocab_size 30522

``--no_lower_case`` makes a cased vocabulary (no lower-casing, accents kept).
"""

from __future__ import annotations

import argparse
import sys

from bertforge.cli.args import ArgumentParser
from bertforge.errors import cli_entry

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m bertforge.cli.prepare_vocab",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="text file(s) or folder(s)")
    p.add_argument("--output", required=True, help="vocab.txt to write")
    p.add_argument("--vocab_size", type=int, default=30522)
    p.add_argument("--min_frequency", type=int, default=2)
    p.add_argument("--limit_alphabet", type=int, default=1000)
    case = p.add_mutually_exclusive_group()
    case.add_argument("--do_lower_case", dest="lowercase", action="store_true", default=True,
                      help="uncased vocabulary (default)")
    case.add_argument("--no_lower_case", dest="lowercase", action="store_false",
                      help="cased vocabulary")
    return p.check(limits={"vocab_size": "[1,16777216]", "min_frequency": ">=0",
                           "limit_alphabet": "[0,16777216]"},
                   outputs={"output": "file"})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from bertforge.data.text import list_input_files
    from bertforge.data.vocab import train_wordpiece_vocab

    args = build_parser().parse_args(argv)
    files = list_input_files(args.input, (".txt",))
    n = train_wordpiece_vocab(files, args.output, vocab_size=args.vocab_size,
                              lowercase=args.lowercase, min_frequency=args.min_frequency,
                              limit_alphabet=args.limit_alphabet)
    print(f"wrote {n} tokens to {args.output} ({'uncased' if args.lowercase else 'cased'})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
