"""``python -m bertforge.convert --from {hf,ngc,bertforge} --to {bertforge,hf,ngc} SRC DST``.

The head (pretraining, MLM, QA, classification or bare encoder) is detected from the weights,
so a fine-tuned SQuAD model converts as a QA model and an HF ``BertModel`` as an encoder.
``--to ngc`` writes what NVIDIA's code loads: ``{"model": state_dict}`` with NVIDIA's
modeling.py names (``dense_act``, no decoder bias) and the vocab padded to a multiple of 8
(30528), which NVIDIA's ``load_state_dict(..., strict=True)`` accepts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bertforge.cli.args import ArgumentParser
from bertforge.config import ModelConfig
from bertforge.errors import CheckpointError, UserError, cli_entry
from bertforge.files import atomic_path, torch_save
from bertforge.model.bert import (
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
)
from bertforge.model.convert import (
    export_hf,
    load_state_dict_strict,
    normalize_state_dict,
    read_state_dict,
    save_bertforge,
    to_ngc_state_dict,
)
from bertforge.outputs import atomic_dir, check_output_path

__all__ = ["build_parser", "main", "model_for_state_dict", "save_ngc"]


def model_for_state_dict(sd, config: ModelConfig):
    """An (uninitialised-weights) model whose heads match the keys of ``sd``."""
    keys = {k.replace("module.", "", 1) for k in sd}
    if any(k.startswith("qa_outputs.") for k in keys):
        return BertForQuestionAnswering(config)
    if "classifier.weight" in keys:
        return BertForSequenceClassification(config, num_labels=sd.get("classifier.weight",
                                             sd.get("module.classifier.weight")).shape[0])
    if any(k.startswith("cls.seq_relationship.") for k in keys):
        return BertForPreTraining(config)
    if any(k.startswith("cls.predictions.") for k in keys):
        return BertForMaskedLM(config)
    return BertModel(config)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m bertforge.convert", description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="src_format", required=True, choices=("hf", "ngc", "bertforge"),
                   help="format of SRC: an HF directory, an NVIDIA/NGC .pt file, or a bertforge file")
    p.add_argument("--to", dest="dst_format", required=True, choices=("bertforge", "hf", "ngc"),
                   help="format of DST: a bertforge file, an HF directory, or an NVIDIA/NGC .pt "
                        "file for NVIDIA's code (dense_act names, vocab padded to a multiple of 8)")
    p.add_argument("src", help="source checkpoint (file or HF directory)")
    p.add_argument("dst", help="destination (file for bertforge, directory for hf)")
    p.add_argument("--config_file", help="bert_config.json (required for NGC files, which carry no config)")
    p.add_argument("--vocab_file", help="vocab.txt to place in an exported HF directory")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow pickles that run code on load (old NGC files); only for files you trust")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing DST (a folder is replaced as a whole, once the new "
                        "one is complete)")
    return p


def save_ngc(model, path) -> Path:
    """``{"model": <NVIDIA-named state dict>}`` as NGC's checkpoints hold it (atomic)."""
    with atomic_path(path) as tmp:
        torch_save({"model": to_ngc_state_dict(model)}, tmp)
    return Path(path)


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    src = Path(args.src)
    dst = check_output_path(args.dst, "DST", "dir" if args.dst_format == "hf" else "file")
    if not args.overwrite and (dst.is_file() or (dst.is_dir() and any(dst.iterdir()))):
        raise UserError(f"DST {dst} exists{' and holds files' if dst.is_dir() else ''}; pass "
                        "--overwrite to replace it")
    if args.src_format == "hf" and not src.is_dir():
        raise CheckpointError(f"--from hf expects a directory with config.json, got {src}")
    if args.src_format != "hf" and src.is_dir():
        raise CheckpointError(f"--from {args.src_format} expects a file, got directory {src}")
    sd, config = read_state_dict(src, trust=args.trust_checkpoint)
    if args.config_file:
        config = ModelConfig.from_json_file(args.config_file)
    if config is None:
        raise CheckpointError(f"{src} carries no model config: pass --config_file")
    if args.src_format == "ngc" and config.pad_vocab_to_multiple == 1:
        config = config.replace(pad_vocab_to_multiple=1)  # keep the exact vocab; padding rows are trimmed
    model = model_for_state_dict(sd, config)
    report = load_state_dict_strict(model, normalize_state_dict(sd, model), source=f"checkpoint {src}")
    if args.dst_format == "hf":
        with atomic_dir(dst, "DST") as tmp:  # replaced as a whole, never partly
            export_hf(model, tmp, vocab_file=args.vocab_file)
        out = dst
    elif args.dst_format == "ngc":
        out = save_ngc(model, dst)
    else:
        out = save_bertforge(model, args.dst)
    print(f"converted {src} ({args.src_format}, {type(model).__name__}) -> {out} ({args.dst_format}); {report.summary()}")
    return 0


if __name__ == "__main__":
    main()
