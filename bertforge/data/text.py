"""Raw corpora to documents of sentences, and documents to text shards in Google's format.

Google's pretraining text format: one sentence per line, a blank line between documents.

Sources:
  * a Wikipedia XML dump (``.xml.bz2`` or ``.xml``): pages are parsed here (streaming),
    cleaned with ``wikiextractor`` (3.0.6, the package's ``Extractor``) and split into
    sentences with ``blingfire`` (see docs/data.md for why blingfire over Punkt);
  * ``.txt`` files already in Google's format (any folder of them);
  * ``.jsonl`` files with a ``text`` field per line (one document per line).

Non-UTF-8 bytes are replaced with U+FFFD and counted, never fatal. Everything is
deterministic and independent of ``num_workers`` (results are gathered in input order).
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import heapq
import json
import multiprocessing as mp
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bertforge.errors import DataError
from bertforge.files import atomic_path, ensure_dir

__all__ = [
    "Document",
    "ReadStats",
    "decode_utf8_counting",
    "split_sentences",
    "iter_wiki_pages",
    "extract_wikipedia",
    "read_text_documents",
    "read_jsonl_documents",
    "list_input_files",
    "read_corpus",
    "write_text_shards",
    "format_documents",
]


@dataclass
class Document:
    """One document: a title (may be empty) and its sentences (no newlines inside)."""

    title: str
    sentences: list[str]

    @property
    def num_bytes(self) -> int:
        return sum(len(s) for s in self.sentences) + len(self.sentences)


@dataclass
class ReadStats:
    """What reading a corpus met: counts for the user, not errors."""

    files: int = 0
    documents: int = 0
    sentences: int = 0
    bad_bytes: int = 0  # undecodable byte sequences replaced by U+FFFD
    empty_files: list[str] = field(default_factory=list)

    def add(self, other: ReadStats) -> None:
        self.files += other.files
        self.documents += other.documents
        self.sentences += other.sentences
        self.bad_bytes += other.bad_bytes
        self.empty_files += other.empty_files


# ----------------------------------------------------------------------------- decoding


def decode_utf8_counting(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing each undecodable sequence by U+FFFD. Returns (text, count)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    out: list[str] = []
    count = 0
    pos = 0
    n = len(data)
    while pos < n:
        try:
            out.append(data[pos:].decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            out.append(data[pos : pos + e.start].decode("utf-8"))
            out.append("\ufffd")
            count += 1
            pos += e.end
    return "".join(out), count


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".bz2":
            with bz2.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"input file {path} does not exist") from None
    except EOFError:
        raise DataError(f"{path} is truncated (the .bz2 stream ends early)") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- sentences


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences with blingfire (offline, rule+ML based)."""
    import blingfire

    paragraph = paragraph.strip()
    if not paragraph:
        return []
    return [s.strip() for s in blingfire.text_to_sentences(paragraph).split("\n") if s.strip()]


def _paragraphs_to_sentences(paragraphs: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in paragraphs:
        out.extend(split_sentences(p))
    return out


# ----------------------------------------------------------------------------- Wikipedia

_TAG_RE = re.compile(r"(.*?)<(/?\w+)[^>]*?>(?:([^<]*)(<.*?>)?)?")


def iter_wiki_pages(dump_path: str | os.PathLike) -> Iterator[tuple[str, str, list[str]]]:
    """Stream ``(page_id, title, wikitext_lines)`` of the article pages of a dump.

    Skips redirects and pages outside the main namespace (titles with a colon). Reads
    ``.bz2`` (also multistream) or plain ``.xml``. A truncated or corrupt dump raises
    DataError naming the file.
    """
    path = Path(dump_path)
    if not path.is_file():
        raise DataError(f"Wikipedia dump {path} does not exist")
    opener = bz2.open if path.suffix == ".bz2" else open
    page: list[str] = []
    pid = ""
    title = ""
    in_text = redirect = in_page = False
    seen_mediawiki = False
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if "<" not in line:
                    if in_text:
                        page.append(line)
                    continue
                m = _TAG_RE.search(line)
                if not m:
                    continue
                tag = m.group(2)
                if tag == "mediawiki":
                    seen_mediawiki = True
                elif tag == "page":
                    page, pid, title, redirect, in_page = [], "", "", False, True
                elif tag == "id" and not pid and in_page:
                    pid = m.group(3) or ""
                elif tag == "title":
                    title = m.group(3) or ""
                elif tag == "redirect":
                    redirect = True
                elif tag == "text":
                    in_text = True
                    page.append(line[m.start(3) : m.end(3)])
                    if m.lastindex == 4:  # <text>...</text> on one line
                        in_text = False
                elif tag == "/text":
                    if m.group(1):
                        page.append(m.group(1))
                    in_text = False
                elif in_text:
                    page.append(line)
                elif tag == "/page":
                    in_page = False
                    if ":" not in title and not redirect:
                        yield pid, title, page
                    page = []
    except EOFError:
        raise DataError(f"{path} is truncated (the .bz2 stream ends early)") from None
    except OSError as e:
        raise DataError(f"cannot read Wikipedia dump {path}: {e}") from None
    if in_page:
        raise DataError(f"{path} is truncated (it ends inside a <page>)")
    if not seen_mediawiki:
        raise DataError(f"{path} is not a MediaWiki XML dump (no <mediawiki> element)")


_WX = None


def _wikiextractor():
    """Import ``wikiextractor.extract`` once, configured for plain text.

    wikiextractor 3.0.6 compiles two regexes with a global ``(?i)`` flag in mid-pattern,
    an error since Python 3.11; the flag is moved to ``re.IGNORECASE`` while it imports
    (the patterns only match URL schemes and image suffixes, so the meaning is kept).
    """
    global _WX
    if _WX is not None:
        return _WX
    orig = re.compile

    def compat_compile(pattern, flags=0):
        if isinstance(pattern, str) and "(?i)" in pattern and not pattern.startswith("(?i)"):
            pattern, flags = pattern.replace("(?i)", ""), flags | re.IGNORECASE
        return orig(pattern, flags)

    re.compile = compat_compile
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            import wikiextractor.extract as wx
    except ImportError:
        raise DataError("wikiextractor is not installed: pip install wikiextractor==3.0.6") from None
    finally:
        re.compile = orig
    wx.Extractor.keepLinks = False
    wx.Extractor.keepSections = False  # section titles are not sentences
    wx.Extractor.HtmlFormatting = False
    wx.ignoreTag("a")
    _WX = wx
    return wx


def _extract_pages(batch: list[tuple[str, str, list[str]]]) -> list[Document]:
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # wikiextractor warns per template error
    wx = _wikiextractor()
    docs = []
    for pid, title, lines in batch:
        ex = wx.Extractor(pid, "", "", title, lines)
        paragraphs = ex.clean_text("".join(lines), html_safe=False)
        sents = _paragraphs_to_sentences(paragraphs)
        if sents:
            docs.append(Document(title, sents))
    return docs


@contextlib.contextmanager
def _pool(num_workers: int):
    """A process pool (fork where available) or None for in-process work."""
    if num_workers <= 1:
        yield None
        return
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with mp.get_context(method).Pool(num_workers) as pool:
        yield pool


def _batched(it: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def extract_wikipedia(dump_path: str | os.PathLike, num_workers: int = 1,
                      progress: bool | None = None) -> list[Document]:
    """Dump -> documents (title + sentences), in dump order, for any ``num_workers``."""
    from tqdm import tqdm

    _wikiextractor()  # fail early (and import before forking)
    batches = _batched(iter_wiki_pages(dump_path), 8)
    docs: list[Document] = []
    bar = tqdm(desc=f"extract {Path(dump_path).name}", unit=" pages",
               disable=not _show_progress(progress))
    with _pool(num_workers) as pool:
        results = (pool.imap(_extract_pages, batches) if pool is not None
                   else map(_extract_pages, batches))
        for part in results:
            docs.extend(part)
            bar.update(len(part))
    bar.close()
    return docs


def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return sys.stderr.isatty()


# ----------------------------------------------------------------------------- text files


def _decode_text(p: Path, data: bytes) -> tuple[str, int]:
    """UTF-8 text with undecodable bytes replaced (counted); DataError for a binary file: a
    NUL byte, or more than 10% of its bytes undecodable (random bytes would otherwise
    become thousands of garbage instances)."""
    nul = data.find(b"\x00", 0, 1 << 20)
    if nul >= 0:
        raise DataError(f"input file {p} is a binary file, not text (a NUL byte at offset {nul})")
    text, bad = decode_utf8_counting(data)
    if bad * 10 > len(data):
        raise DataError(f"input file {p} is not text: {bad} of its {len(data)} bytes are not "
                        "UTF-8 (a binary file?)")
    return text, bad


def read_text_documents(path: str | os.PathLike) -> tuple[list[Document], ReadStats]:
    """Read a text file in Google's format (``.txt``, or ``.txt.bz2``).

    One sentence per line, blank lines between documents. Lines are stripped.
    """
    p = Path(path)
    text, bad = _decode_text(p, _read_bytes(p))
    docs: list[Document] = []
    cur: list[str] = []
    # Lines end at "\n" only: str.splitlines() would also break a sentence at \x0b, \x0c,
    # \x1c-\x1e, \x85, \u2028, \u2029, which text extraction leaves inside sentences.
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            if cur:
                docs.append(Document("", cur))
                cur = []
            continue
        cur.append(line)
    if cur:
        docs.append(Document("", cur))
    st = ReadStats(files=1, documents=len(docs), sentences=sum(len(d.sentences) for d in docs),
                   bad_bytes=bad, empty_files=[] if docs else [str(p)])
    return docs, st


def read_jsonl_documents(path: str | os.PathLike, text_field: str = "text"
                         ) -> tuple[list[Document], ReadStats]:
    """Read JSON lines, one document per line in ``text_field``; split into sentences.

    Newlines in the text separate paragraphs. A line that is not a JSON object with
    ``text_field`` raises DataError naming the file and line.
    """
    p = Path(path)
    text, bad = _decode_text(p, _read_bytes(p))
    docs: list[Document] = []
    for i, line in enumerate(text.split("\n")):  # JSON strings may hold a raw \u2028
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{i + 1}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
            raise DataError(f"{p}:{i + 1}: no string field {text_field!r}")
        sents = _paragraphs_to_sentences(obj[text_field].split("\n"))
        if sents:
            docs.append(Document(str(obj.get("title", "")), sents))
    st = ReadStats(files=1, documents=len(docs), sentences=sum(len(d.sentences) for d in docs),
                   bad_bytes=bad, empty_files=[] if docs else [str(p)])
    return docs, st


_TEXT_SUFFIXES = (".txt", ".txt.bz2", ".jsonl", ".jsonl.bz2", ".json", ".xml", ".xml.bz2", ".bz2")


def list_input_files(inputs: str | os.PathLike | Sequence[str | os.PathLike],
                     suffixes: Sequence[str] = _TEXT_SUFFIXES) -> list[Path]:
    """Files named by ``inputs`` (files, or folders searched recursively), sorted.

    Hidden files and files with other suffixes inside folders are ignored. Raises
    DataError when a path does not exist or nothing is found.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and any(f.name.endswith(s) for s in suffixes)
            )
            if not found:
                raise DataError(f"input folder {p} holds no {'/'.join(suffixes)} files")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"input {p} does not exist")
    return out


def _is_dump(p: Path) -> bool:
    name = p.name
    if name.endswith((".xml", ".xml.bz2")):
        return True
    if name.endswith(".bz2") and not name.endswith((".txt.bz2", ".jsonl.bz2")):
        return True
    return False


def read_corpus(inputs, num_workers: int = 1, text_field: str = "text",
                progress: bool | None = None) -> tuple[list[Document], ReadStats]:
    """Documents of every input (dump, .txt, .jsonl), in input order."""
    stats = ReadStats()
    docs: list[Document] = []
    for f in list_input_files(inputs):
        if _is_dump(f):
            d = extract_wikipedia(f, num_workers=num_workers, progress=progress)
            st = ReadStats(files=1, documents=len(d), sentences=sum(len(x.sentences) for x in d),
                           empty_files=[] if d else [str(f)])
        elif f.name.endswith((".jsonl", ".jsonl.bz2", ".json")):
            d, st = read_jsonl_documents(f, text_field)
        else:
            d, st = read_text_documents(f)
        docs.extend(d)
        stats.add(st)
    if not docs:
        raise DataError(f"no text found in {', '.join(stats.empty_files) or inputs}")
    return docs, stats


# ----------------------------------------------------------------------------- shards


def format_documents(docs: Iterable[Document]) -> str:
    """Google's format: sentences one per line, a blank line after each document."""
    return "".join("\n".join(d.sentences) + "\n\n" for d in docs)


def _unit_hash(*parts: object) -> float:
    h = hashlib.blake2b(":".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def write_text_shards(
    docs: Sequence[Document],
    out_dir: str | os.PathLike,
    *,
    num_shards: int = 1,
    holdout_fraction: float = 0.0,
    num_holdout_shards: int = 1,
    seed: int = 12345,
) -> dict:
    """Write ``docs`` as text shards balanced by size, with a held-out fraction.

    Layout: ``out_dir/train/part-00000.txt ...`` and ``out_dir/holdout/part-00000.txt``.
    A document goes to the held-out set when a hash of (seed, index, title) falls below
    ``holdout_fraction`` (at least one document when the fraction is positive), so the
    split does not depend on how the corpus was read. The rest is dealt to the lightest
    shard, largest documents first (LPT), then each shard keeps the corpus order.
    Returns a summary dict (also written to ``out_dir/shards.json``).
    """
    from bertforge.files import atomic_write_json

    if num_shards < 1:
        raise DataError(f"--num_shards must be >= 1, got {num_shards}")
    if not 0.0 <= holdout_fraction < 1.0:
        raise DataError(f"--holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if not docs:
        raise DataError("no documents to write")
    out = ensure_dir(out_dir)
    keys = [_unit_hash(seed, i, d.title) for i, d in enumerate(docs)]
    held = [k < holdout_fraction for k in keys]
    if holdout_fraction > 0 and not any(held) and len(docs) > 1:
        held[min(range(len(docs)), key=keys.__getitem__)] = True
    train_idx = [i for i in range(len(docs)) if not held[i]]
    hold_idx = [i for i in range(len(docs)) if held[i]]
    if len(train_idx) < num_shards:
        raise DataError(f"{len(train_idx)} training documents cannot fill {num_shards} shards")

    def deal(indices: list[int], n: int) -> list[list[int]]:
        heap = [(0, s) for s in range(n)]
        shards: list[list[int]] = [[] for _ in range(n)]
        for i in sorted(indices, key=lambda i: (-docs[i].num_bytes, i)):
            size, s = heapq.heappop(heap)
            shards[s].append(i)
            heapq.heappush(heap, (size + docs[i].num_bytes, s))
        return [sorted(s) for s in shards]

    summary: dict = {"seed": seed, "holdout_fraction": holdout_fraction, "train": [], "holdout": []}
    groups = [("train", deal(train_idx, num_shards))]
    if hold_idx:
        groups.append(("holdout", deal(hold_idx, max(1, min(num_holdout_shards, len(hold_idx))))))
    for name, shards in groups:
        sub = ensure_dir(out / name)
        for s, idx in enumerate(shards):
            path = sub / f"part-{s:05d}.txt"
            data = format_documents(docs[i] for i in idx).encode("utf-8")
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    fh.write(data)
            summary[name].append({"file": f"{name}/{path.name}", "documents": len(idx),
                                  "bytes": len(data)})
    atomic_write_json(out / "shards.json", summary)
    return summary
