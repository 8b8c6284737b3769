"""NVIDIA-compatible tokenizer module: ``from tokenization import BertTokenizer``.

The implementation lives in :mod:`bertforge.data.tokenization`.
"""

from bertforge.data.tokenization import (
    BasicTokenizer,
    BertTokenizer,
    WordpieceTokenizer,
    whitespace_tokenize,
)

__all__ = ["BertTokenizer", "BasicTokenizer", "WordpieceTokenizer", "whitespace_tokenize"]
