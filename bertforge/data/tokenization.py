"""NVIDIA/Google-compatible BERT tokenizer on top of the Rust ``tokenizers`` library.

``BertTokenizer(vocab_file, do_lower_case=True)`` has the API of NVIDIA's
``tokenization.BertTokenizer`` (``tokenize``, ``convert_tokens_to_ids``,
``convert_ids_to_tokens``, ``vocab``, ``ids_to_tokens``) and gives the same tokens as
Google's pure-Python BasicTokenizer + WordpieceTokenizer (lower-casing strips accents,
punctuation and CJK characters are split, words over 100 characters become [UNK]),
but runs in Rust and can encode batches (``encode_batch_ids``).

The fine-tuning tasks use the library's own tokenizer object (:func:`load_tokenizer`), which
also gives each token's character span in the original text; :func:`special_ids`,
:func:`find_vocab` and :func:`lower_case` go with it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from bertforge.data.vocab import MAX_VOCAB_BYTES, load_vocab
from bertforge.errors import DataError
from bertforge.files import read_input_text

__all__ = ["BertTokenizer", "BasicTokenizer", "WordpieceTokenizer", "whitespace_tokenize",
           "load_tokenizer", "special_ids", "find_vocab", "lower_case"]


def whitespace_tokenize(text: str) -> list[str]:
    """Split on whitespace after stripping (Google's helper)."""
    return text.strip().split()


class BasicTokenizer:
    """Punctuation splitting, lower-casing and accent stripping (no WordPiece).

    Same contract as Google's ``BasicTokenizer.tokenize``; used e.g. by SQuAD's answer
    realignment (``get_final_text``).
    """

    def __init__(self, do_lower_case: bool = True):
        from tokenizers import normalizers, pre_tokenizers

        self.do_lower_case = do_lower_case
        self._norm = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=do_lower_case,
            lowercase=do_lower_case,
        )
        self._pre = pre_tokenizers.BertPreTokenizer()

    def tokenize(self, text: str) -> list[str]:
        return [w for w, _ in self._pre.pre_tokenize_str(self._norm.normalize_str(text))]


class WordpieceTokenizer:
    """Greedy longest-match-first WordPiece over already basic-tokenized text."""

    def __init__(self, vocab: dict[str, int], unk_token: str = "[UNK]",
                 max_input_chars_per_word: int = 100):
        from tokenizers import Tokenizer, pre_tokenizers
        from tokenizers.models import WordPiece

        self.vocab = vocab
        self.unk_token = unk_token
        self._tok = Tokenizer(WordPiece(dict(vocab), unk_token=unk_token,
                                        max_input_chars_per_word=max_input_chars_per_word))
        self._tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens


def _wordpiece(vocab: dict[str, int], do_lower_case: bool, unk_token: str = "[UNK]"):
    """The library's BERT WordPiece tokenizer (Google's basic tokenization: text cleaning, CJK
    splitting, lower-casing with accent stripping when ``do_lower_case``), both classes' engine."""
    from tokenizers import BertWordPieceTokenizer

    return BertWordPieceTokenizer(
        dict(vocab), unk_token=unk_token, sep_token="[SEP]", cls_token="[CLS]", pad_token="[PAD]",
        mask_token="[MASK]", clean_text=True, handle_chinese_chars=True,
        strip_accents=do_lower_case, lowercase=do_lower_case, wordpieces_prefix="##")


class BertTokenizer:
    """End-to-end BERT tokenizer: ``BertTokenizer(vocab_file, do_lower_case=True)``.

    Attributes:
        vocab: OrderedDict token -> id, in file order.
        ids_to_tokens: OrderedDict id -> token.
        max_len: longest sequence the model takes (informational, as in NVIDIA's class).
    """

    def __init__(self, vocab_file: str | os.PathLike, do_lower_case: bool = True,
                 max_len: int | None = None, unk_token: str = "[UNK]"):
        self.vocab_file = str(vocab_file)
        self.do_lower_case = do_lower_case
        self.vocab: OrderedDict[str, int] = load_vocab(vocab_file, required=(unk_token,))
        self.ids_to_tokens: OrderedDict[int, str] = OrderedDict(
            (i, t) for t, i in self.vocab.items()
        )
        self.max_len = max_len if max_len is not None else int(1e12)
        self.unk_token = unk_token
        self.unk_id = self.vocab[unk_token]
        self._tok = _wordpiece(self.vocab, do_lower_case, unk_token)._tokenizer  # raw tokenizers.Tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()
        self.basic_tokenizer = BasicTokenizer(do_lower_case=do_lower_case)
        self.wordpiece_tokenizer = WordpieceTokenizer(self.vocab, unk_token=unk_token)

    def __len__(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of ``text`` (no [CLS]/[SEP] added)."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """Ids of ``tokens``; tokens not in the vocab map to [UNK]."""
        get, unk = self.vocab.get, self.unk_id
        return [get(t, unk) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        itt = self.ids_to_tokens
        return [itt[int(i)] for i in ids]

    def encode_batch_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts at once (Rust, multi-threaded); no special tokens."""
        if not texts:
            return []
        enc = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in enc]


# -- the tokenizer of the fine-tuning tasks ---------------------------------------------------
_REQUIRED = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")


def load_tokenizer(vocab_file: str | os.PathLike, do_lower_case: bool = True):
    """The ``tokenizers`` BERT WordPiece tokenizer of ``vocab_file``, for the fine-tuning tasks.

    Unlike :class:`BertTokenizer` it returns, for every token, the character span it came
    from in the *original* string (``encode(...).offsets``): SQuAD maps answers to tokens and
    predictions back to text with them, without Google's alignment heuristics.

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
    return _wordpiece(vocab, do_lower_case)


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
