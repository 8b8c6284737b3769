"""Drop-in for the official SQuAD evaluation scripts.

    python -m bertforge.evaluate_squad dev-v1.1.json predictions.json
        {"exact_match": 81.2, "f1": 88.5}                (as evaluate-v1.1.py prints it)
    python -m bertforge.evaluate_squad dev-v2.0.json predictions.json [--na_prob_file null_odds.json]
        {"exact": .., "f1": .., "total": .., "HasAns_exact": .., ..., "best_f1_thresh": ..}
                                                           (as evaluate-v2.0.py prints it)

The version comes from the data file (``"version"``, else whether any question is
unanswerable); ``--version`` forces it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bertforge.cli.args import ArgumentParser
from bertforge.errors import DataError, cli_entry
from bertforge.files import atomic_write_json
from bertforge.tasks.squad_metrics import evaluate_v1, evaluate_v2, is_v2_dataset, load_squad_json

__all__ = ["build_parser", "main", "evaluate_files"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m bertforge.evaluate_squad",
        description="Official SQuAD v1.1 / v2.0 evaluation (EM, F1; v2.0 HasAns/NoAns and best thresholds).")
    p.add_argument("data_file", help="SQuAD data JSON (dev-v1.1.json or dev-v2.0.json)")
    p.add_argument("pred_file", help="predictions JSON: question id -> answer text")
    p.add_argument("--na_prob_file", "--na-prob-file", "-n", dest="na_prob_file", default=None,
                   help="v2.0: question id -> no-answer probability/odds (run_squad's null_odds.json)")
    p.add_argument("--na_prob_thresh", "--na-prob-thresh", "-t", dest="na_prob_thresh", type=float,
                   default=1.0, help="v2.0: predict '' when the no-answer value exceeds this (default 1.0)")
    p.add_argument("--out_file", "--out-file", "-o", dest="out_file", default=None,
                   help="write the metrics JSON here instead of stdout")
    p.add_argument("--version", choices=("1.1", "2.0"), default=None,
                   help="force the evaluation version (default: from the data file)")
    return p.check(outputs={"out_file": "file"})


def _load_mapping(path: str, what: str, value_type) -> dict:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {p}: no such file")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{what} {p}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {p}: cannot read ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{what} {p}: expected a JSON object mapping question ids to values")
    for k, v in obj.items():
        if not isinstance(v, value_type) or isinstance(v, bool):
            raise DataError(f"{what} {p}: value for {k!r} must be {value_type}, got {type(v).__name__}")
    return obj


def evaluate_files(data_file: str, pred_file: str, na_prob_file: str | None = None,
                   na_prob_thresh: float = 1.0, version: str | None = None) -> dict:
    """The metrics dict the official script of the data's version prints."""
    dataset_json = load_squad_json(data_file)
    preds = _load_mapping(pred_file, "predictions file", str)
    v2 = is_v2_dataset(dataset_json) if version is None else version == "2.0"
    try:
        if not v2:
            if na_prob_file:
                raise DataError("--na_prob_file applies to SQuAD 2.0 data only")
            return evaluate_v1(dataset_json["data"], preds)
        na_probs = _load_mapping(na_prob_file, "na_prob file", (int, float)) if na_prob_file else None
        return evaluate_v2(dataset_json["data"], preds, na_probs, na_prob_thresh)
    except KeyError as e:
        raise DataError(f"{data_file}: malformed SQuAD data or incomplete na_prob file ({e})") from None
    except TypeError as e:
        raise DataError(f"{data_file}: malformed SQuAD data ({e})") from None


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    result = evaluate_files(args.data_file, args.pred_file, args.na_prob_file, args.na_prob_thresh,
                            args.version)
    if args.out_file:
        atomic_write_json(args.out_file, result)
    elif "exact_match" in result:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
