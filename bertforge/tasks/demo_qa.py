"""A small SQuAD v1.1-format QA set that bertforge writes itself from the Wikipedia sample.

``make demo-qa`` fine-tunes and queries a QA model offline: the questions come from
sentences of the sample's text shards (training shards -> ``train-v1.1.json``, held-out
shards -> ``dev-v1.1.json``, so the dev questions are about articles never seen in
fine-tuning). Each question is a template applied to one sentence, and its answer is an
exact span of the context paragraph (``context[answer_start:][:len(text)] == text``):

* ``X was founded in 1840 by Y.``   -> "X was founded in what year by Y?"  (1840)
* ``The city has 3,000 inhabitants.`` -> "The city has how many inhabitants?"  (3,000)
* ``It was written by Karl Marx.``  -> "It was written by whom?"  (Karl Marx)
* ``The battle took place in Paris.`` -> "The battle took place where?"  (Paris)
* first sentence ``Anarchism is a political philosophy that ...`` -> "What is Anarchism?"
  (a political philosophy)

These "echo" questions keep the sentence's word order, so they are easy (a model mostly
has to find the sentence and the slot); they exist to show the fine-tuning and inference
path end to end, not to measure reading comprehension. For real use download SQuAD
(``bash data/squad/squad_download.sh``; see docs/finetuning.md).

Everything is deterministic for a given text and ``seed``.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

from bertforge.errors import DataError

__all__ = ["read_documents", "questions_from_sentence", "definition_question", "build_squad",
           "TEMPLATES", "count_questions"]

_MONTHS = ("January February March April May June July August September October November "
           "December").split()
_NAME = r"[A-Z][a-z]+(?:[ -](?:[A-Z][a-z]+|de|of|von|van|the))*?(?: [A-Z][a-z]+)?"
_NOT_PLACES = {"The", "This", "That", "These", "Those", "His", "Her", "Their", "It", "In", "At",
               "A", "An", "Greek", "English", "Latin", "French", "German", "Christian", "Roman"}

# (name, pattern, replacement of the matched text, group holding the answer)
TEMPLATES: tuple[tuple[str, re.Pattern, str, int], ...] = (
    ("year", re.compile(r"\bin (1[0-9]{3}|20[0-2][0-9])\b(?! ?[-–])"), "in what year", 1),
    ("count", re.compile(r"(?<= )((?:[1-9][0-9]{0,2}(?:,[0-9]{3})+|[1-9][0-9]*))"
                         r" ([a-z]{4,}s)\b"), r"how many \2", 1),
    ("agent", re.compile(r"\bby (" + _NAME + r")(?=[,.;]| and | in | on )"), "by whom", 1),
    ("place", re.compile(r"(?<=[a-z]) (?:in|at) (" + _NAME + r")(?=[.;]$|\.$)"), " where", 1),
)
_DEFINITION = re.compile(r"^([A-Z][A-Za-z\- ]{1,40}?) (is|was|are|were) ((?:an?|the) [^,;:()\"]{3,80}?)"
                         r"(?:,| that | which | who | in | of the |\.)")


def read_documents(path: str | os.PathLike) -> list[list[str]]:
    """Documents of text shards (one sentence per line, blank line between documents).

    ``path`` is a shard file or a folder of them (read in name order).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"text {p}: no such file or directory")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix == ".txt") if p.is_dir() else [p]
    if not files:
        raise DataError(f"text {p}: no .txt shards there")
    docs: list[list[str]] = []
    for f in files:
        cur: list[str] = []
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line:
                cur.append(line)
            elif cur:
                docs.append(cur)
                cur = []
        if cur:
            docs.append(cur)
    return docs


def _plain(sentence: str) -> bool:
    """A sentence worth asking about: 6-40 words, ends with a period, no extraction debris."""
    n = len(sentence.split())
    return (6 <= n <= 40 and sentence.endswith(".") and sentence[0].isupper()
            and not any(c in sentence for c in "()[]{}|=\"“”;"))


def _ask(sentence: str, start: int, end: int, replacement: str) -> str:
    q = sentence[:start] + replacement + sentence[end:]
    return q.rstrip(" .") + "?"


def questions_from_sentence(sentence: str) -> Iterator[tuple[str, str, str, int]]:
    """(template, question, answer, answer offset in ``sentence``) for each template that fits.

    >>> next(questions_from_sentence("The treaty was signed in 1648 by both sides."))
    ('year', 'The treaty was signed in what year by both sides?', '1648', 25)
    """
    if not _plain(sentence):
        return
    for name, pat, repl, group in TEMPLATES:
        m = pat.search(sentence)
        if m is None or m.start() == 0:
            continue
        answer = m.group(group)
        if name == "place" and (answer.split()[0] in _NOT_PLACES or answer in _MONTHS):
            continue
        if name == "count":
            before = sentence[:m.start()].split()
            if not (before and before[-1].isalpha() and before[-1].islower()):
                continue  # "Highway 3 joins", "September 11 attacks": names, not counts
            if len(answer) == 4 and 1000 <= int(answer) <= 2029:
                continue  # "1990 elections" is a year, not a count
        question = _ask(sentence, m.start(), m.end(), m.expand(repl))
        yield name, question, answer, m.start(group)


def definition_question(first_sentence: str) -> tuple[str, str, int] | None:
    """("What is X?", answer, offset) from a Wikipedia first sentence ``X is a ...``."""
    m = _DEFINITION.match(first_sentence)
    if m is None:
        return None
    subject, verb, answer = m.group(1), m.group(2), m.group(3).strip()
    if len(answer.split()) < 2 or len(answer.split()) > 10:
        return None
    first, _, rest = subject.partition(" ")
    if first in ("A", "An", "The") and rest:
        subject = first.lower() + " " + rest
    wh = "What " + verb + " " + subject
    return wh + "?", answer, m.start(3)


def build_squad(docs: list[list[str]], *, title: str, sentences_per_context: int = 4,
                max_questions: int | None = None, seed: int = 12345) -> dict:
    """A SQuAD v1.1 dict: one article per document, paragraphs of consecutive sentences.

    Each sentence gives at most one question (the first template that fits, in the order
    of :data:`TEMPLATES`; a document's first sentence tries the definition first). With
    ``max_questions`` a seeded sample of that many questions is kept (in document order).
    """
    data, ids = [], []
    for d, doc in enumerate(docs):
        paragraphs = []
        for p0 in range(0, len(doc), sentences_per_context):
            sents = doc[p0:p0 + sentences_per_context]
            context, offsets = "", []
            for s in sents:
                if context:
                    context += " "
                offsets.append(len(context))
                context += s
            qas = []
            for k, (s, off) in enumerate(zip(sents, offsets, strict=True)):
                found = None
                if p0 + k == 0 and (dq := definition_question(s)) is not None:
                    found = ("definition", *dq)
                if found is None:
                    found = next(questions_from_sentence(s), None)
                if found is None:
                    continue
                kind, question, answer, a_off = found
                start = off + a_off
                assert context[start:start + len(answer)] == answer  # exact span, by construction
                qid = f"{title}-{d:03d}-{p0 + k:04d}-{kind}"
                qas.append({"id": qid, "question": question,
                            "answers": [{"text": answer, "answer_start": start}]})
                ids.append(qid)
            if qas:
                paragraphs.append({"context": context, "qas": qas})
        if paragraphs:
            name = " ".join(docs[d][0].split()[:3])
            data.append({"title": f"{title} {d}: {name}", "paragraphs": paragraphs})
    if max_questions is not None and len(ids) > max_questions:
        keep = set(random.Random(seed).sample(ids, max_questions))
        for art in data:
            for par in art["paragraphs"]:
                par["qas"] = [q for q in par["qas"] if q["id"] in keep]
            art["paragraphs"] = [p for p in art["paragraphs"] if p["qas"]]
        data = [a for a in data if a["paragraphs"]]
    return {"version": "1.1", "data": data}


def count_questions(squad: dict) -> int:
    return sum(len(p["qas"]) for a in squad["data"] for p in a["paragraphs"])
