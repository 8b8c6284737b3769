"""NVIDIA/Google-compatible BERT tokenizer on top of the Rust ``tokenizers`` library.

``BertTokenizer(vocab_file, do_lower_case=True)`` has the API of NVIDIA's
``tokenization.BertTokenizer`` (``tokenize``, ``convert_tokens_to_ids``,
``convert_ids_to_tokens``, ``vocab``, ``ids_to_tokens``) and gives the same tokens as
Google's pure-Python BasicTokenizer + WordpieceTokenizer (lower-casing strips accents,
punctuation and CJK characters are split, words over 100 characters become [UNK]),
but runs in Rust and can encode batches (``encode_batch_ids``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from bertforge.data.vocab import load_vocab

__all__ = ["BertTokenizer", "BasicTokenizer", "WordpieceTokenizer", "whitespace_tokenize"]


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


class BertTokenizer:
    """End-to-end BERT tokenizer: ``BertTokenizer(vocab_file, do_lower_case=True)``.

    Attributes:
        vocab: OrderedDict token -> id, in file order.
        ids_to_tokens: OrderedDict id -> token.
        max_len: longest sequence the model takes (informational, as in NVIDIA's class).
    """

    def __init__(self, vocab_file: str | os.PathLike, do_lower_case: bool = True,
                 max_len: int | None = None, unk_token: str = "[UNK]"):
        from tokenizers import BertWordPieceTokenizer

        self.vocab_file = str(vocab_file)
        self.do_lower_case = do_lower_case
        self.vocab: OrderedDict[str, int] = load_vocab(vocab_file, required=(unk_token,))
        self.ids_to_tokens: OrderedDict[int, str] = OrderedDict(
            (i, t) for t, i in self.vocab.items()
        )
        self.max_len = max_len if max_len is not None else int(1e12)
        self.unk_token = unk_token
        self.unk_id = self.vocab[unk_token]
        wp = BertWordPieceTokenizer(
            dict(self.vocab), unk_token=unk_token,
            sep_token="[SEP]", cls_token="[CLS]", pad_token="[PAD]", mask_token="[MASK]",
            clean_text=True, handle_chinese_chars=True,
            strip_accents=do_lower_case, lowercase=do_lower_case, wordpieces_prefix="##",
        )
        self._tok = wp._tokenizer  # the raw tokenizers.Tokenizer
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

    def encode_batch_tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """WordPiece tokens of many texts at once; no special tokens."""
        if not texts:
            return []
        return [e.tokens for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
