"""Google's pretraining instances (NSP pairs + masked LM), built fast and deterministically.

Dimensions: N instances, L = max_seq_length, P = max_predictions_per_seq, T tokens in a file.

The algorithm is Google's ``create_pretraining_data.py`` (also NVIDIA's and LDDL's):
per document, a target length (``max_seq_length - 3``, or with ``short_seq_prob`` a random
one in [2, max]) is drawn once; sentences are gathered until the target is reached; a
random split point makes segment A; B is the actual continuation or, half of the time
(always when the chunk has one sentence), a run of sentences from a random start in
another document, in which case the unused sentences are put back. The pair is trimmed
to ``L - 3`` tokens by removing from the longer side, from the front or back at random.
Then ``min(P, max(1, round(len * masked_lm_prob)))`` positions that are not [CLS]/[SEP]
are masked (whole words with ``whole_word_mask``): 80% [MASK], 10% random token,
10% unchanged.

What is different, and why:
  * Segments are token *ranges* of one flat array of the file's token ids, so a pair is
    four integers; trimming is computed in closed form (the number of tokens removed
    from each side is exactly what Google's loop removes; the front/back choices are
    fair coin flips drawn at once).
  * Masking is vectorized over all instances of a file with numpy.
  * Randomness is keyed per *input file* (seed + the file's name), never per process,
    so any number of workers or Slurm tasks gives the same instances.
  * When no other document exists for a random B, the actual next sentences are used
    (label 0) instead of a mislabeled pair from the same document.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

__all__ = [
    "InstanceConfig",
    "TokenizedCorpus",
    "InstanceSet",
    "file_seed",
    "tokenize_documents",
    "build_pairs",
    "build_instances",
    "mask_instances",
    "concat_instance_sets",
]


@dataclass(frozen=True)
class InstanceConfig:
    """Settings of the instance algorithm (NVIDIA's flag names)."""

    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    dupe_factor: int = 10
    random_seed: int = 12345
    do_whole_word_mask: bool = False
    masking: str = "static"  # "static": masks in the data; "none": no masks (dynamic later)

    def __post_init__(self):
        from bertforge.errors import ConfigError

        if self.max_seq_length < 5:
            raise ConfigError(f"--max_seq_length must be >= 5, got {self.max_seq_length}")
        if self.max_seq_length > 65535:
            raise ConfigError("--max_seq_length must fit uint16 (<= 65535)")
        if self.masking not in ("static", "none"):
            raise ConfigError(f"masking must be 'static' or 'none', got {self.masking!r}")
        if self.masking == "static" and self.max_predictions_per_seq < 1:
            raise ConfigError("--max_predictions_per_seq must be >= 1")
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ConfigError(f"--masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ConfigError(f"--short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if self.dupe_factor < 1:
            raise ConfigError(f"--dupe_factor must be >= 1, got {self.dupe_factor}")

    @property
    def num_predictions(self) -> int:
        """P: columns of the masked arrays (0 without static masking)."""
        return self.max_predictions_per_seq if self.masking == "static" else 0

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def file_seed(seed: int, key: str, stream: str = "") -> int:
    """A 64-bit seed for one input file (``key`` = its name relative to the input root)."""
    h = hashlib.blake2b(f"{seed}\x00{key}\x00{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


@dataclass
class TokenizedCorpus:
    """All token ids of a file: ``tokens[sent_offsets[s]:sent_offsets[s+1]]`` is sentence s,
    ``doc_offsets[d]:doc_offsets[d+1]`` are the sentences of document d."""

    tokens: np.ndarray  # [T] int32
    sent_offsets: np.ndarray  # [S+1] int64
    doc_offsets: np.ndarray  # [D+1] int64

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1


def tokenize_documents(documents: Sequence[Sequence[str]], tokenizer,
                       batch_size: int = 8192) -> TokenizedCorpus:
    """Tokenize documents (lists of sentences) in batches with the Rust tokenizer.

    Sentences without tokens and documents without sentences are dropped (as Google does).
    ``tokenizer`` is a :class:`bertforge.data.tokenization.BertTokenizer`.
    """
    import itertools

    flat = [s for doc in documents for s in doc]
    ids: list[list[int]] = []
    for i in range(0, len(flat), batch_size):
        ids.extend(tokenizer.encode_batch_ids(flat[i : i + batch_size]))
    sent_lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    # documents: count the non-empty sentences of each
    doc_sent_counts = []
    pos = 0
    for doc in documents:
        n = len(doc)
        doc_sent_counts.append(int(np.count_nonzero(sent_lens[pos : pos + n])))
        pos += n
    keep = sent_lens > 0
    lens = sent_lens[keep]
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32,
                         count=int(sent_lens.sum()))
    sent_offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=sent_offsets[1:])
    counts = np.asarray([c for c in doc_sent_counts if c > 0], dtype=np.int64)
    doc_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=doc_offsets[1:])
    return TokenizedCorpus(tokens, sent_offsets, doc_offsets)


def build_pairs(corpus: TokenizedCorpus, cfg: InstanceConfig, rng: random.Random
                ) -> np.ndarray:
    """Google's sentence-pair algorithm over all documents, ``dupe_factor`` times.

    Returns int64 [N, 5]: a_start, a_end, b_start, b_end (token offsets into
    ``corpus.tokens``, already trimmed to ``max_seq_length - 3``) and is_random_next.
    """
    off = corpus.sent_offsets.tolist()
    doff = corpus.doc_offsets.tolist()
    n_docs = len(doff) - 1
    max_num = cfg.max_seq_length - 3
    short_p = cfg.short_seq_prob
    rnd, getrandbits = rng.random, rng.getrandbits

    def randint(lo: int, hi: int) -> int:  # uniform in [lo, hi]; random.randint is slow
        return lo + int(rnd() * (hi - lo + 1))

    out: list[tuple[int, int, int, int, int]] = []
    append = out.append
    for _ in range(cfg.dupe_factor):
        for d in range(n_docs):
            s0, s1 = doff[d], doff[d + 1]
            target = max_num
            if rnd() < short_p:
                target = randint(2, max_num)
            chunk_start = s0
            i = s0
            while i < s1:
                cur_len = off[i + 1] - off[chunk_start]
                if i == s1 - 1 or cur_len >= target:
                    n_chunk = i - chunk_start + 1
                    a_end = randint(1, n_chunk - 1) if n_chunk >= 2 else 1
                    a_lo, a_hi = off[chunk_start], off[chunk_start + a_end]
                    is_random = 0
                    b_lo = b_hi = 0
                    if n_chunk == 1 or rnd() < 0.5:
                        rd = d
                        if n_docs > 1:
                            for _try in range(10):
                                rd = randint(0, n_docs - 1)
                                if rd != d:
                                    break
                        if rd != d:
                            is_random = 1
                            target_b = target - (a_hi - a_lo)
                            r0, r1 = doff[rd], doff[rd + 1]
                            j = randint(r0, r1 - 1)
                            b_lo = off[j]
                            j += 1
                            while j < r1 and off[j] - b_lo < target_b:
                                j += 1
                            b_hi = off[j]
                            i -= n_chunk - a_end  # put the unused sentences back
                        elif n_chunk >= 2:  # no other document: use the actual next
                            b_lo, b_hi = off[chunk_start + a_end], off[i + 1]
                        # else: a one-sentence chunk in a one-document corpus has no B
                    else:
                        b_lo, b_hi = off[chunk_start + a_end], off[i + 1]
                    la, lb = a_hi - a_lo, b_hi - b_lo
                    if lb > 0:
                        excess = la + lb - max_num
                        if excess > 0:
                            # Google trims the longer side one token at a time (B on ties):
                            # first the difference, then alternately B, A, B, ...
                            if la > lb:
                                k = min(excess, la - lb)
                                ra, rb = k, 0
                            else:
                                k = min(excess, lb - la)
                                ra, rb = 0, k
                            rest = excess - k
                            rb += (rest + 1) // 2
                            ra += rest // 2
                            fa = getrandbits(ra).bit_count() if ra else 0  # from the front
                            fb = getrandbits(rb).bit_count() if rb else 0
                            a_lo += fa
                            a_hi -= ra - fa
                            b_lo += fb
                            b_hi -= rb - fb
                        append((a_lo, a_hi, b_lo, b_hi, is_random))
                    chunk_start = i + 1
                i += 1
    if not out:
        return np.zeros((0, 5), dtype=np.int64)
    return np.asarray(out, dtype=np.int64)


@dataclass
class InstanceSet:
    """Instances in (almost) NVIDIA's HDF5 layout, plus the lengths needed for Parquet.

    input_ids: [N, L] int32, [CLS] A [SEP] B [SEP] then 0 padding; masked where selected.
    len_a: [N] int32 tokens of A; num_tokens: [N] int32 = len_a + len_b + 3.
    masked_lm_positions: [N, P] int32 sorted, 0 = padding; masked_lm_ids: [N, P] int32
    (the original token ids); next_sentence_labels: [N] int8 (1 = B is random).
    """

    input_ids: np.ndarray
    len_a: np.ndarray
    num_tokens: np.ndarray
    masked_lm_positions: np.ndarray
    masked_lm_ids: np.ndarray
    next_sentence_labels: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_seq_length(self) -> int:
        return int(self.input_ids.shape[1])

    def take(self, rows: np.ndarray) -> InstanceSet:
        return InstanceSet(*(getattr(self, f.name)[rows] for f in fields(self)))

    def input_mask(self) -> np.ndarray:
        """[N, L] int8: 1 for tokens, 0 for padding."""
        j = np.arange(self.max_seq_length, dtype=np.int32)[None, :]
        return (j < self.num_tokens[:, None]).astype(np.int8)

    def segment_ids(self) -> np.ndarray:
        """[N, L] int8: 0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding."""
        j = np.arange(self.max_seq_length, dtype=np.int32)[None, :]
        return ((j >= self.len_a[:, None] + 2) & (j < self.num_tokens[:, None])).astype(np.int8)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays) -> InstanceSet:
        return cls(*(np.asarray(arrays[f.name]) for f in fields(cls)))

    @classmethod
    def empty(cls, max_seq_length: int, num_predictions: int) -> InstanceSet:
        return cls(np.zeros((0, max_seq_length), np.int32), np.zeros(0, np.int32),
                   np.zeros(0, np.int32), np.zeros((0, num_predictions), np.int32),
                   np.zeros((0, num_predictions), np.int32), np.zeros(0, np.int8))


def concat_instance_sets(sets: Sequence[InstanceSet]) -> InstanceSet:
    """Concatenate sets in the given order (all with the same L and P)."""
    if len(sets) == 1:
        return sets[0]
    return InstanceSet(*(np.concatenate([getattr(s, f.name) for s in sets])
                         for f in fields(InstanceSet)))


def _pair_matrix(corpus: TokenizedCorpus, pairs: np.ndarray, max_seq_length: int,
                 cls_id: int, sep_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[N, L] ids of ``[CLS] A [SEP] B [SEP]`` + padding, and the A/B-token mask."""
    p32 = pairs[:, :4].astype(np.int32)  # a file holds < 2**31 tokens
    a_lo, a_hi, b_lo, b_hi = (p32[:, k : k + 1] for k in range(4))
    la, lb = a_hi - a_lo, b_hi - b_lo
    j = np.arange(max_seq_length, dtype=np.int32)[None, :]
    end = la + lb + 2  # position of the last [SEP]
    cand = (j >= 1) & (j < end) & (j != la + 1)
    src = np.where(j <= la, a_lo - 1 + j, b_lo - la - 2 + j)
    np.clip(src, 0, len(corpus.tokens) - 1, out=src)
    ids = corpus.tokens[src]
    ids[~cand] = 0
    ids[:, 0] = cls_id
    rows = np.arange(len(pairs))
    ids[rows, la[:, 0] + 1] = sep_id
    ids[rows, end[:, 0]] = sep_id
    return ids, cand, (end[:, 0] + 1).astype(np.int32)


def mask_instances(ids: np.ndarray, candidates: np.ndarray, num_tokens: np.ndarray,
                   cfg: InstanceConfig, vocab_size: int, mask_id: int,
                   gen: np.random.Generator, continuation: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mask ``ids`` [N, L] in place; return (positions [N, P], original ids [N, P]).

    ``candidates`` [N, L] bool marks maskable positions (A and B tokens). With
    ``continuation`` ([N, L] bool, "##" pieces) whole words are masked: a word is taken
    only if it fits in the remaining budget, as Google does.
    """
    n, L = ids.shape
    P = cfg.max_predictions_per_seq
    k = np.minimum(P, np.maximum(1, np.rint(num_tokens * cfg.masked_lm_prob).astype(np.int64)))
    k = np.minimum(k, candidates.sum(axis=1))
    if continuation is None:
        keys = gen.random((n, L), dtype=np.float32)
        keys[~candidates] = 2.0
        kk = min(P, L)
        part = np.argpartition(keys, kk - 1, axis=1)[:, :kk]
        order = np.take_along_axis(part, np.argsort(np.take_along_axis(keys, part, 1), 1), 1)
        selected = np.zeros((n, L), dtype=bool)
        take = np.arange(kk)[None, :] < k[:, None]
        np.put_along_axis(selected, order, take, axis=1)
    else:
        # a "##" piece right after [CLS]/[SEP] (a trimmed word) starts a word of its own
        prev_cand = np.zeros_like(candidates)
        prev_cand[:, 1:] = candidates[:, :-1]
        starts = candidates & (~continuation | ~prev_cand)
        word = np.cumsum(starts, axis=1) - 1  # word index of each token (within the row)
        keys = gen.random((n, L), dtype=np.float32)
        keys[~starts] = 2.0
        order = np.argsort(keys, axis=1)  # word starts in random order, then the rest
        wsize = np.zeros((n, L + 1), dtype=np.int64)
        np.add.at(wsize, (np.nonzero(candidates)[0], word[candidates]), 1)
        n_words = starts.sum(axis=1)
        chosen_word = np.zeros((n, L + 1), dtype=bool)
        filled = np.zeros(n, dtype=np.int64)
        rows = np.arange(n)
        for r in range(int(n_words.max(initial=0))):  # greedy, vectorized over rows
            pos = order[:, r]
            live = r < n_words
            w = word[rows, pos]
            size = wsize[rows, w]
            fits = live & (filled + size <= k)
            filled += np.where(fits, size, 0)
            chosen_word[rows[fits], w[fits]] = True
        selected = candidates & np.take_along_axis(chosen_word, np.maximum(word, 0), 1)
    count = selected.sum(axis=1)
    # positions sorted ascending (row-major nonzero), padded with 0
    r_idx, c_idx = np.nonzero(selected)
    slot = np.arange(len(r_idx)) - np.repeat(np.cumsum(count) - count, count)
    positions = np.zeros((n, P), dtype=np.int32)
    labels = np.zeros((n, P), dtype=np.int32)
    positions[r_idx, slot] = c_idx
    labels[r_idx, slot] = ids[r_idx, c_idx]
    # 80% [MASK], 10% random token, 10% unchanged (decided per masked token)
    u = gen.random(len(r_idx))
    rand_tok = gen.integers(0, vocab_size, size=len(r_idx), dtype=np.int64)
    new = np.where(u < 0.8, mask_id, np.where(u < 0.9, ids[r_idx, c_idx], rand_tok))
    ids[r_idx, c_idx] = new.astype(np.int32)
    return positions, labels


def build_instances(corpus: TokenizedCorpus, cfg: InstanceConfig, *, key: str,
                    special_ids: dict[str, int], vocab_size: int,
                    continuation_ids: np.ndarray | None = None) -> InstanceSet:
    """Pairs + masking for one file's corpus, seeded by (cfg.random_seed, key).

    ``special_ids`` maps [CLS], [SEP], [MASK] to ids; ``continuation_ids`` is a bool
    array over the vocab marking "##" pieces (needed for whole-word masking).
    """
    L = cfg.max_seq_length
    P = cfg.num_predictions
    if corpus.num_documents == 0:
        return InstanceSet.empty(L, P)
    rng = random.Random(file_seed(cfg.random_seed, key, "pairs"))
    pairs = build_pairs(corpus, cfg, rng)
    if len(pairs) == 0:
        return InstanceSet.empty(L, P)
    gen = np.random.Generator(np.random.PCG64(file_seed(cfg.random_seed, key, "mask")))
    # Google shuffles the instances of its input; so do we (per file).
    pairs = pairs[gen.permutation(len(pairs))]
    ids, cand, num_tokens = _pair_matrix(corpus, pairs, L, special_ids["[CLS]"],
                                         special_ids["[SEP]"])
    len_a = (pairs[:, 1] - pairs[:, 0]).astype(np.int32)
    nsp = pairs[:, 4].astype(np.int8)
    if cfg.masking == "static":
        cont = None
        if cfg.do_whole_word_mask:
            if continuation_ids is None:
                raise ValueError("whole-word masking needs continuation_ids")
            cont = continuation_ids[ids]
        positions, labels = mask_instances(ids, cand, num_tokens, cfg, vocab_size,
                                           special_ids["[MASK]"], gen, continuation=cont)
    else:
        positions = np.zeros((len(pairs), 0), np.int32)
        labels = np.zeros((len(pairs), 0), np.int32)
    return InstanceSet(ids, len_a, num_tokens, positions, labels, nsp)
