"""The WordPiece tokenizer shared by the fine-tuning tasks.

We use the Rust ``tokenizers`` implementation of Google's BERT tokenizer (same basic
tokenization: text cleaning, CJK splitting, optional lower-casing + accent stripping,
punctuation splitting, greedy longest-match WordPiece) because it also returns, for every
token, the character span it came from in the *original* string. SQuAD uses those spans
to map answers to tokens and predictions back to text without Google's alignment
heuristics.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import BertWordPieceTokenizer

from bertforge.data.vocab import MAX_VOCAB_BYTES
from bertforge.errors import DataError
from bertforge.io import read_input_text

__all__ = ["load_tokenizer", "special_ids", "find_vocab", "lower_case"]

_REQUIRED = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")


def load_tokenizer(vocab_file: str | os.PathLike, do_lower_case: bool = True) -> BertWordPieceTokenizer:
    """A BERT WordPiece tokenizer for ``vocab_file`` (one token per line).

    Raises DataError (one line, naming the file) when the file is missing, unreadable or
    lacks one of the special tokens BERT inputs need.
    """
    path = Path(vocab_file)
    tokens = read_input_text(path, f"--vocab_file {path}", max_bytes=MAX_VOCAB_BYTES).splitlines()
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        tok = tok.rstrip("\r")
        if tok and tok not in vocab:  # first occurrence wins, like Google's load_vocab
            vocab[tok] = i
    missing = [t for t in _REQUIRED if t not in vocab]
    if missing:
        raise DataError(f"--vocab_file {path}: not a BERT WordPiece vocabulary (missing {', '.join(missing)})")
    return BertWordPieceTokenizer(vocab, lowercase=do_lower_case)


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(cls_id, sep_id, pad_id) of ``tokenizer``."""
    return (tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]"),
            tokenizer.token_to_id("[PAD]"))


def find_vocab(vocab_file: str | None, init_checkpoint: str | None) -> str:
    """``vocab_file`` if given, else ``vocab.txt`` inside an HF checkpoint directory."""
    if vocab_file:
        return vocab_file
    if init_checkpoint and Path(init_checkpoint).is_dir() and (Path(init_checkpoint) / "vocab.txt").is_file():
        return str(Path(init_checkpoint) / "vocab.txt")
    raise DataError("--vocab_file is required (no vocab.txt next to --init_checkpoint)")


def lower_case(do_lower_case: bool, bert_model: str | None) -> bool:
    """Whether to lower-case: ``--do_lower_case``, or a ``--bert_model`` name ending in "uncased"
    (NVIDIA's scripts name the model, e.g. ``bert-large-uncased``)."""
    return bool(do_lower_case) or bool(bert_model and bert_model.rstrip("/").lower().endswith("uncased"))
