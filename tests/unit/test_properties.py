"""Property-based tests (hypothesis): random inputs round-trip through the data writers and
readers and through the SQuAD feature mapping.

* Google-format text: random documents -> ``format_documents`` -> file -> ``read_text_documents``.
* vocab: random tokens -> ``write_vocab`` -> ``load_vocab`` (same ids).
* shards: a random ``InstanceSet`` -> NVIDIA HDF5 / LDDL Parquet -> the readers give the
  same ids, masks, segments, labels and masked positions.
* SQuAD: random contexts with a random answer -> ``features_from`` -> the training labels of
  every window that holds the answer point at exactly the answer's characters, and
  ``decode`` of logits peaked there gives back exactly the answer text and offset.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bertforge.data.hdf5 import read_hdf5_shard, write_hdf5_shard
from bertforge.data.instances import InstanceSet
from bertforge.data.parquet import parquet_to_arrays, read_parquet_shard, write_parquet_shard
from bertforge.data.text import Document, format_documents, read_text_documents
from bertforge.data.vocab import load_vocab, write_vocab

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

# Sentences as the pipeline makes them: stripped, no line feed inside, anything else allowed
# but NUL (a NUL byte marks a binary file, which the reader refuses).
_LINE_BREAKS = "\n\r"  # the format's own separators; \x85, \u2028, \x0b ... may occur in text
sentence = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=_LINE_BREAKS + "\x00"),
                   min_size=1, max_size=40).map(str.strip).filter(bool)
documents = st.lists(st.lists(sentence, min_size=1, max_size=6), min_size=1, max_size=6)


@SETTINGS
@given(documents)
def test_google_text_format_round_trips(docs):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "part-00000.txt"
        path.write_text(format_documents(Document("", s) for s in docs), encoding="utf-8")
        back, stats = read_text_documents(path)
    assert [b.sentences for b in back] == docs
    assert stats.documents == len(docs) and stats.bad_bytes == 0


@SETTINGS
@given(st.lists(st.text(min_size=1, max_size=200).filter(lambda t: "\n" not in t), min_size=1,
                max_size=4))
def test_split_sentences_then_text_format_round_trips(paragraphs):
    """Sentences from the splitter (blingfire) survive being written and read back."""
    from bertforge.data.text import split_sentences

    docs = [sents for sents in (split_sentences(p) for p in paragraphs) if sents]
    assume(docs)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "part-00000.txt"
        path.write_text(format_documents(Document("", s) for s in docs), encoding="utf-8")
        back, _ = read_text_documents(path)
    assert [b.sentences for b in back] == docs


token = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")),
                min_size=1, max_size=12).filter(lambda t: t.split() == [t])


@SETTINGS
@given(st.lists(token, min_size=1, max_size=50, unique=True))
def test_vocab_round_trips(tokens):
    with tempfile.TemporaryDirectory() as d:
        path = write_vocab(tokens, Path(d) / "vocab.txt")
        vocab = load_vocab(path, required=())
    assert list(vocab) == tokens and list(vocab.values()) == list(range(len(tokens)))


SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + [f"w{i}" for i in range(40)] + [f"##s{i}" for i in range(20)]
CLS, SEP, MASK = 2, 3, 4


@st.composite
def instance_sets(draw) -> InstanceSet:
    """[CLS] A [SEP] B [SEP] rows of random lengths, 1..P sorted masked positions each."""
    n = draw(st.integers(1, 12))
    L = draw(st.integers(8, 48))
    P = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids = np.zeros((n, L), np.int32)
    pos = np.zeros((n, P), np.int32)
    lab = np.zeros((n, P), np.int32)
    la = np.zeros(n, np.int32)
    nt = np.zeros(n, np.int32)
    for i in range(n):
        total = int(rng.integers(2, L - 3 + 1))           # len(A) + len(B)
        a = int(rng.integers(1, total))
        b = total - a
        row = [CLS, *rng.integers(5, len(VOCAB), a), SEP, *rng.integers(5, len(VOCAB), b), SEP]
        ids[i, :len(row)] = row
        la[i], nt[i] = a, len(row)
        cand = [j for j in range(1, len(row) - 1) if j != a + 1]
        k = int(rng.integers(1, min(P, len(cand)) + 1))
        chosen = np.sort(rng.choice(cand, size=k, replace=False))
        pos[i, :k] = chosen
        lab[i, :k] = ids[i, chosen]
        ids[i, chosen] = np.where(rng.random(k) < 0.8, MASK, rng.integers(5, len(VOCAB), k))
    nsl = rng.integers(0, 2, n).astype(np.int8)
    return InstanceSet(ids, la, nt, pos, lab, nsl)


@SETTINGS
@given(instance_sets())
def test_hdf5_shard_round_trips(inst):
    with tempfile.TemporaryDirectory() as d:
        path = write_hdf5_shard(Path(d) / "training_shard_0.hdf5", inst)
        back = read_hdf5_shard(path)
    np.testing.assert_array_equal(back["input_ids"], inst.input_ids)
    np.testing.assert_array_equal(back["input_mask"], inst.input_mask())
    np.testing.assert_array_equal(back["segment_ids"], inst.segment_ids())
    np.testing.assert_array_equal(back["masked_lm_positions"], inst.masked_lm_positions)
    np.testing.assert_array_equal(back["masked_lm_ids"], inst.masked_lm_ids)
    np.testing.assert_array_equal(back["next_sentence_labels"], inst.next_sentence_labels)


@SETTINGS
@given(instance_sets(), st.one_of(st.none(), st.integers(0, 3)))
def test_parquet_shard_round_trips(inst, bin_id):
    vocab = {t: i for i, t in enumerate(VOCAB)}
    with tempfile.TemporaryDirectory() as d:
        path = write_parquet_shard(Path(d) / "shard-0.parquet", inst, VOCAB, bin_id=bin_id)
        table = read_parquet_shard(path)
        back = parquet_to_arrays(table, vocab, path=str(path), max_seq_length=inst.max_seq_length)
    assert ("bin_id" in table.column_names) == (bin_id is not None)
    np.testing.assert_array_equal(back["input_ids"], inst.input_ids)
    np.testing.assert_array_equal(back["input_mask"], inst.input_mask())
    np.testing.assert_array_equal(back["segment_ids"], inst.segment_ids())
    np.testing.assert_array_equal(back["num_tokens"], inst.num_tokens)
    np.testing.assert_array_equal(back["len_a"], inst.len_a)
    np.testing.assert_array_equal(back["next_sentence_labels"], inst.next_sentence_labels)
    P = back["masked_lm_positions"].shape[1]  # the most masks of any row
    assert (inst.masked_lm_positions[:, P:] == 0).all()
    np.testing.assert_array_equal(back["masked_lm_positions"], inst.masked_lm_positions[:, :P])
    np.testing.assert_array_equal(back["masked_lm_ids"], inst.masked_lm_ids[:, :P])


# -- SQuAD ---------------------------------------------------------------------------------
WORDS = ("the of and to in a is was city school world university national government "
         "photosynthesis electromagnetic counterrevolutionary unbelievable "
         "café naïve Zürich 1984 3.14 e-mail U.S. (note) \"quoted\" it's x² αβγ 東京").split()
SEPARATORS = [" ", " ", " ", "  ", "\n", "\t", " \u00a0 "]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from bertforge.data.tokenization import load_tokenizer
    from tests.unit.data_fixtures import make_text_dir, make_vocab

    root = tmp_path_factory.mktemp("squad_props")
    return load_tokenizer(make_vocab(root, make_text_dir(root, n_files=2, n_docs=10)), True)


@st.composite
def squad_cases(draw):
    """A context of random words and separators; the answer is a run of 1-4 words in it."""
    n = draw(st.integers(3, 60))
    words = [draw(st.sampled_from(WORDS)) for _ in range(n)]
    seps = [draw(st.sampled_from(SEPARATORS)) for _ in range(n - 1)]
    lead = draw(st.sampled_from(["", " ", "\n"]))
    starts, context = [], lead
    for i, w in enumerate(words):
        starts.append(len(context))
        context += w + (seps[i] if i < n - 1 else "")
    i = draw(st.integers(0, n - 1))
    j = draw(st.integers(i, min(n - 1, i + 3)))
    answer = context[starts[i]:starts[j] + len(words[j])]
    question = " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12)))
    return context, question, answer, starts[i]


@SETTINGS
@given(case=squad_cases(), L=st.integers(24, 64), stride=st.integers(1, 24))
def test_squad_answer_maps_to_tokens_and_back(tokenizer, case, L, stride):
    from bertforge.tasks import squad

    context, question, answer, start = case
    ex = squad.SquadExample("q", question, context, [(answer, start)])
    feats = squad.features_from([ex], tokenizer, max_seq_length=L, doc_stride=stride,
                                max_query_length=8, is_training=True)
    assert len(feats) >= 1 and (feats.example_index == 0).all()
    holding = np.nonzero(feats.start_positions)[0]
    for f in holding:  # every label points at exactly the answer's characters
        sp, ep = int(feats.start_positions[f]), int(feats.end_positions[f])
        assert sp <= ep and feats.attention_mask[f, ep] == 1 and feats.token_type_ids[f, sp] == 1
        assert context[feats.offsets[f, sp, 0]:feats.offsets[f, ep, 1]] == answer
    # Windows of max_ctx context tokens start `stride` apart: a span of at most
    # max_ctx - stride + 1 tokens lies wholly inside at least one of them.
    enc = tokenizer.encode(context, add_special_tokens=False)
    off = np.asarray(enc.offsets)
    n_ans = int(((off[:, 0] < start + len(answer)) & (off[:, 1] > start)).sum())
    max_ctx = L - min(len(tokenizer.encode(question, add_special_tokens=False).ids), 8) - 3
    if n_ans <= max_ctx - min(stride, max_ctx) + 1:
        assert len(holding) >= 1
    # decoding logits peaked at the labels of a window where the answer's start has its
    # maximum context gives back the answer text and its offset exactly
    best = [f for f in holding if feats.max_context[f, feats.start_positions[f]]]
    assume(best)
    f = best[0]
    s = np.full(feats.input_ids.shape, -10.0)
    e = np.full(feats.input_ids.shape, -10.0)
    s[f, feats.start_positions[f]] = e[f, feats.end_positions[f]] = 10.0
    (pred,) = squad.decode([ex], feats, s, e, n_best_size=1, max_answer_length=64)
    assert (pred.text, pred.start_char, pred.end_char) == (answer, start, start + len(answer))
