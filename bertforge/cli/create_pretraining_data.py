"""create_pretraining_data.py: text shards -> NVIDIA HDF5 or LDDL Parquet pretraining shards.

NVIDIA's flags plus --do_whole_word_mask, --num_workers, --output_format, --bin_size,
--num_shards, --rank/--world_size (default SLURM_PROCID/SLURM_NTASKS) and --balance.

    python create_pretraining_data.py --input_file results/text/train \\
        --output_file results/hdf5/phase1 --vocab_file results/vocab.txt \\
        --max_seq_length 128 --max_predictions_per_seq 20 --dupe_factor 5 --num_workers 2

On a cluster, each task takes its share of the input files, then one balance step
(``--balance``, any number of tasks) writes the same shards a single task would have.
"""

from __future__ import annotations

import argparse
import sys

from bertforge.cli.args import ArgumentParser
from bertforge.cli.nvidia import add_dry_run, argv_of, given, note
from bertforge.errors import cli_entry

__all__ = ["build_parser", "main"]


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="create_pretraining_data.py",
        description="Make BERT pretraining shards (NSP pairs + masked LM) from text in "
                    "Google's format (one sentence per line, blank line between documents) "
                    "or JSONL with a 'text' field.",
    )
    io = p.add_argument_group("input and output")
    io.add_argument("--input_file", nargs="+", help="text file(s) or folder(s) of .txt/.jsonl")
    io.add_argument("--output_file", required=True,
                    help="output directory, or one .hdf5/.h5 file (NVIDIA's form: all instances "
                         "in that one file)")
    io.add_argument("--vocab_file", required=True, help="vocab.txt (one WordPiece per line)")
    io.add_argument("--do_lower_case", type=_bool, nargs="?", const=True, default=True,
                    metavar="BOOL", help="lower-case and strip accents (default true; "
                    "--do_lower_case false or --no_lower_case for cased vocabularies)")
    io.add_argument("--no_lower_case", dest="do_lower_case", action="store_false",
                    help="same as --do_lower_case false")
    io.add_argument("--output_format", choices=("hdf5", "parquet"), default="hdf5")
    io.add_argument("--num_shards", type=int, default=0,
                    help="number of output shards (per bin); 0 = one per input file")
    io.add_argument("--bin_size", type=int, default=None,
                    help="Parquet only: bin instances by length in steps of this many tokens")
    io.add_argument("--masking", choices=("static", "none"), default="static",
                    help="Parquet only: 'none' writes no masks (the loader masks dynamically)")
    alg = p.add_argument_group("instances (Google's algorithm)")
    alg.add_argument("--max_seq_length", type=int, default=128)
    alg.add_argument("--max_predictions_per_seq", type=int, default=20)
    alg.add_argument("--masked_lm_prob", type=float, default=0.15)
    alg.add_argument("--random_seed", type=int, default=12345)
    alg.add_argument("--dupe_factor", type=int, default=10,
                     help="number of times to duplicate the input with different masks")
    alg.add_argument("--short_seq_prob", type=float, default=0.1)
    alg.add_argument("--do_whole_word_mask", action="store_true",
                     help="mask whole words (all WordPieces of a word together)")
    run = p.add_argument_group("parallelism")
    run.add_argument("--num_workers", type=int, default=1,
                     help="worker processes (output is identical for any value)")
    run.add_argument("--rank", type=int, default=None,
                     help="this task's rank (default $SLURM_PROCID or 0)")
    run.add_argument("--world_size", type=int, default=None,
                     help="number of tasks (default $SLURM_NTASKS or 1)")
    run.add_argument("--balance", action="store_true",
                     help="only run the balance step: per-task outputs in --output_file "
                          "-> final shards")
    run.add_argument("--keep_parts", action="store_true",
                     help="with --balance: keep the per-task outputs")
    io.add_argument("--overwrite", "--overwrite_output_dir", dest="overwrite", action="store_true",
                    help="replace a dataset already in --output_file (as a whole, once the new "
                         "one is complete; without it such an output is refused)")
    run.add_argument("--progress", type=_bool, default=None, metavar="BOOL",
                     help="progress bar (default: when stderr is a terminal)")
    p.add_argument("--bert_model", default="bert-large-uncased",
                   help="NVIDIA's flag; the tokenizer is --vocab_file and --do_lower_case: one "
                        "line says so")
    add_dry_run(p, "any instance is made")
    return p.check(limits=LIMITS)


#: The range of every numeric flag (checked by bertforge.cli.args; NaN/inf never pass).
LIMITS = {
    "num_shards": "[0,1048576]", "bin_size": ">=1", "max_seq_length": "[5,1048576]",
    "max_predictions_per_seq": "[1,1048576]", "masked_lm_prob": "(0,1)",
    "dupe_factor": "[1,100000]", "short_seq_prob": "[0,1]", "num_workers": "[1,1024]",
    "rank": ">=0", "world_size": "[1,1048576]",
}


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from bertforge.cli.environment import one_tokenizer_thread_per_process
    from bertforge.data.create import balance_parts, create_pretraining_shards, resolve_rank
    from bertforge.data.instances import InstanceConfig
    from bertforge.errors import UserError

    argv = argv_of(argv)
    args = build_parser().parse_args(argv)
    if given(argv, "--bert_model"):
        note("--bert_model", f"the tokenizer is --vocab_file {args.vocab_file} with --do_lower_case "
                             f"{str(args.do_lower_case).lower()}")
    rank, world_size = resolve_rank(args.rank, args.world_size)
    if args.output_format == "hdf5" and args.masking != "static":
        raise UserError("--masking none needs --output_format parquet")
    if args.bin_size is not None and args.output_format != "parquet":
        raise UserError("--bin_size needs --output_format parquet")
    if args.num_workers > 1:
        one_tokenizer_thread_per_process()
    if args.balance:
        if args.num_shards < 1:
            raise UserError("--balance needs --num_shards >= 1")
        sizes = balance_parts(args.output_file, output_format=args.output_format,
                              num_shards=args.num_shards, vocab_file=args.vocab_file,
                              bin_size=args.bin_size, rank=rank, world_size=world_size,
                              num_workers=args.num_workers, keep_parts=args.keep_parts,
                              overwrite=args.overwrite)
        print(f"balanced {sum(sizes.values())} instances into {len(sizes)} files in "
              f"{args.output_file}", file=sys.stderr)
        return 0
    if not args.input_file:
        raise UserError("--input_file is required (unless --balance)")
    if args.dry_run:
        from pathlib import Path

        from bertforge.data.create import input_units

        units = input_units(args.input_file)
        if not Path(args.vocab_file).is_file():
            raise UserError(f"--vocab_file {args.vocab_file}: no such file")
        print(f"dry run: {len(units)} input file(s) -> {args.output_format} in {args.output_file}: "
              "flags and inputs OK", file=sys.stderr)
        return 0
    cfg = InstanceConfig(
        max_seq_length=args.max_seq_length, max_predictions_per_seq=args.max_predictions_per_seq,
        masked_lm_prob=args.masked_lm_prob, short_seq_prob=args.short_seq_prob,
        dupe_factor=args.dupe_factor, random_seed=args.random_seed,
        do_whole_word_mask=args.do_whole_word_mask, masking=args.masking,
    )
    res = create_pretraining_shards(
        args.input_file, args.output_file, vocab_file=args.vocab_file, cfg=cfg,
        do_lower_case=args.do_lower_case, output_format=args.output_format,
        num_shards=args.num_shards, bin_size=args.bin_size, num_workers=args.num_workers,
        rank=rank, world_size=world_size, progress=args.progress, overwrite=args.overwrite,
    )
    st = res.stats
    notes = []
    if st.bad_bytes:
        notes.append(f"{st.bad_bytes} undecodable byte sequence(s) replaced by U+FFFD")
    if st.empty_files:
        notes.append(f"{len(st.empty_files)} empty input file(s): {', '.join(st.empty_files[:3])}")
    for n in notes:
        print(f"warning: {n}", file=sys.stderr)
    if res.parts_dir is not None:
        print(f"task {rank}/{world_size}: {res.num_instances} instances from {st.files} files "
              f"in {res.seconds:.1f}s -> {res.parts_dir}; run --balance when all tasks are done",
              file=sys.stderr)
    else:
        print(f"{res.num_instances} instances from {st.files} files ({st.documents} documents) "
              f"-> {len(res.shards)} {args.output_format} shard(s) in {args.output_file} "
              f"in {res.seconds:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
