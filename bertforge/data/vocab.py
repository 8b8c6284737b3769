"""WordPiece vocabularies: read and validate a ``vocab.txt``, or train one with HF ``tokenizers``.

A vocab file is Google's format: one token per line, the line number is the id.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from bertforge.errors import DataError
from bertforge.files import atomic_path, read_input_bytes

#: A vocab file above this size is not one (Google's multilingual vocab is ~1 MB).
MAX_VOCAB_BYTES = 256 * 2**20

__all__ = ["SPECIAL_TOKENS", "DATA_META", "load_vocab", "train_wordpiece_vocab", "write_vocab",
           "vocab_digest", "check_shards_vocab"]

#: The five special tokens BERT pretraining needs, in Google's order of ids 0, 100-103.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

DATA_META = ".bertforge_data.json"
"""Written next to the shards: the settings they were made with, including ``vocab_digest``."""


def load_vocab(
    vocab_file: str | os.PathLike, required: Sequence[str] = ("[UNK]",)
) -> OrderedDict[str, int]:
    """Read ``vocab_file`` into an ordered ``token -> id`` map, validating it.

    Raises DataError (naming the file and line) when the file is missing, empty, not
    UTF-8, has an empty line, a token with whitespace, a duplicate token, or lacks one
    of ``required``.
    """
    path = Path(vocab_file)
    if not path.exists():
        raise DataError(f"vocab file {path} does not exist")
    data = read_input_bytes(path, f"vocab file {path}", max_bytes=MAX_VOCAB_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"vocab file {path} is not UTF-8 (byte {e.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataError(f"vocab file {path} is empty")
    vocab: OrderedDict[str, int] = OrderedDict()
    for i, line in enumerate(lines):
        token = line.rstrip("\r")
        parts = token.split()  # C-fast: exactly [token] when it has no whitespace
        if not parts:
            raise DataError(f"vocab file {path}: line {i + 1} is empty")
        if len(parts) != 1 or parts[0] != token:
            raise DataError(f"vocab file {path}: line {i + 1} holds whitespace ({token!r})")
        if token in vocab:
            raise DataError(f"vocab file {path}: token {token!r} appears twice (lines "
                            f"{vocab[token] + 1} and {i + 1})")
        vocab[token] = i
    missing = [t for t in required if t not in vocab]
    if missing:
        raise DataError(f"vocab file {path} lacks the special token(s) {', '.join(missing)}")
    return vocab


def vocab_digest(vocab_file: str | os.PathLike) -> str:
    """A short digest of the vocab file's bytes (recorded in the shards' ``DATA_META``)."""
    return hashlib.sha256(Path(vocab_file).read_bytes()).hexdigest()[:16]


def check_shards_vocab(input_dir: str | os.PathLike, vocab_file: str | os.PathLike | None) -> None:
    """DataError when ``vocab_file`` is not the vocab the shards in ``input_dir`` were made with.

    Shards made by bertforge record their vocab's digest in ``DATA_META``; a different vocab
    would mask with the wrong [MASK]/random ids (dynamic masking) or mislabel the vocab,
    silently. NVIDIA's and LDDL's shards carry no digest and pass.
    """
    meta_file = Path(input_dir) / DATA_META
    if vocab_file is None or not meta_file.is_file():
        return
    try:
        recorded = json.loads(meta_file.read_text()).get("vocab_digest")
    except (OSError, ValueError, AttributeError):
        return
    if recorded and recorded != vocab_digest(vocab_file):
        raise DataError(f"--vocab_file {vocab_file} is not the vocab the shards in {input_dir} "
                        f"were made with (digest {recorded} in {meta_file})")


def write_vocab(tokens: Iterable[str], out_path: str | os.PathLike) -> Path:
    """Write tokens (in id order) to ``out_path``, one per line, atomically."""
    out = Path(out_path)
    with atomic_path(out) as tmp:
        tmp.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return out


def train_wordpiece_vocab(
    files: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    vocab_size: int = 30522,
    lowercase: bool = True,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> int:
    """Train a WordPiece vocabulary with HF ``tokenizers`` and write it as ``vocab.txt``.

    ``files`` are text files (one sentence per line). ``lowercase`` also strips accents,
    as Google's uncased models do; cased vocabularies keep both. Returns the number of
    tokens written (at most ``vocab_size``; a small corpus can give fewer). Specials come
    first (ids 0-4), then the tokens in sorted order.
    """
    from tokenizers import BertWordPieceTokenizer

    paths = [str(f) for f in files]
    if not paths:
        raise DataError("no text files to train a vocabulary on")
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"text file {p} does not exist")
    if vocab_size < len(special_tokens) + 1:
        raise DataError(f"--vocab_size {vocab_size} is too small")
    tok = BertWordPieceTokenizer(
        lowercase=lowercase, strip_accents=lowercase, clean_text=True, handle_chinese_chars=True
    )
    tok.train(
        paths,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        limit_alphabet=limit_alphabet,
        special_tokens=list(special_tokens),
        wordpieces_prefix="##",
        show_progress=False,
    )
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    # The trainer lists tokens of equal counts in hash-map order, which changes from run
    # to run; WordPiece only needs the set, so write specials first, then the rest sorted:
    # the same token set always gives the same file. (Which of several equal-count merges
    # makes the cut at exactly ``vocab_size`` can still vary between runs: a handful of
    # rare tokens. Pass a fixed vocab file where bit-exact reruns matter.)
    specials = [t for t in special_tokens if t in vocab]
    tokens = specials + sorted(t for t in tokens if t not in set(special_tokens))
    if len(tokens) <= len(special_tokens):
        raise DataError(f"the text in {paths[0]}... is empty: no vocabulary learned")
    write_vocab(tokens, out_path)
    return len(tokens)
