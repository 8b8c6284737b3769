"""Fill-mask: a pretrained BERT's top predictions for each ``[MASK]`` in a sentence.

    python -m bertforge.cli.fill_mask --init_checkpoint results/checkpoints/ckpt_200.pt \\
        --vocab_file results/data/vocab.txt --text "Paris is the [MASK] of France."

    python -m bertforge.cli.fill_mask --init_checkpoint ckpt.pt --vocab_file vocab.txt \\
        --from_text results/data/text/holdout --num_examples 5 --output fill_mask.json

``--from_text`` picks ``--num_examples`` sentences of held-out text shards (one sentence per
line) with a fixed ``--seed`` and hides one whole word of each (a word that is a single
WordPiece of the vocabulary), so the original word can be compared with the predictions.
The checkpoint is any file or directory :func:`bertforge.model.convert.load_pretrained`
reads that has the MLM head (``cls.predictions.*``): a bertforge pretraining checkpoint,
an NGC file (with ``--config_file``) or an HF ``BertForPreTraining``/``BertForMaskedLM``
directory. ``--output`` writes the predictions as JSON (atomically).
"""

from __future__ import annotations

import argparse
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from bertforge.cli.args import ArgumentParser
from bertforge.cli.environment import read_environment, use_cpu_gemm
from bertforge.errors import CheckpointError, ConfigError, DataError, cli_entry
from bertforge.files import read_input_bytes, read_input_text

__all__ = ["Example", "MaskPrediction", "pick_examples", "FillMask", "format_example", "build_parser",
           "main"]

MASK = "[MASK]"
_WORD = re.compile(r"^([\"'(]*)([A-Za-z]{3,})([\"'),.;:!?]*)$")  # a word with outer punctuation


@dataclass
class MaskPrediction:
    """The ``top`` (token, probability) pairs at one [MASK]; ``rank`` (1 = best) and
    ``probability`` of the hidden word among all fillable tokens, when it is known."""

    top: list[tuple[str, float]]
    rank: int | None = None
    probability: float | None = None


@dataclass
class Example:
    """A text holding one or more ``[MASK]``; ``answer`` is the hidden word when known."""

    text: str
    answer: str | None = None


def _read_sentences(path: Path) -> list[str]:
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise DataError(f"--from_text {path}: no files")
    out = []
    for f in files:
        data = read_input_bytes(f, f"--from_text {f}")
        out.extend(line.strip() for line in data.decode("utf-8", errors="replace").splitlines())
    return [s for s in out if s]


def pick_examples(sentences: list[str], vocab: dict[str, int], n: int, seed: int,
                  lower: bool = True, min_words: int = 8, max_words: int = 30) -> list[Example]:
    """``n`` sentences (deterministic for ``seed``) with one whole word replaced by [MASK].

    Only plain sentences (``min_words``..``max_words`` words, no brackets or quotes left
    empty by the text extraction) are used, and only words that are one vocabulary token
    are hidden, so a single [MASK] stands for exactly the hidden word.
    """
    rng = random.Random(seed)
    pool = [s for s in sentences if min_words <= len(s.split()) <= max_words
            and "(;" not in s and "()" not in s and "[" not in s]
    rng.shuffle(pool)
    out: list[Example] = []
    for s in pool:
        words = s.split()
        cands = []
        for i, w in enumerate(words):
            m = _WORD.match(w)
            if m and (m.group(2).lower() if lower else m.group(2)) in vocab:
                cands.append((i, m))
        if not cands:
            continue
        i, m = cands[rng.randrange(len(cands))]
        words[i] = m.group(1) + MASK + m.group(3)
        out.append(Example(" ".join(words), m.group(2)))
        if len(out) == n:
            break
    return out


class FillMask:
    """A BertForMaskedLM with its tokenizer; :meth:`predict` gives the top-k per [MASK]."""

    #: special tokens that can never be a fill (never predicted)
    EXCLUDED = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")

    def __init__(self, init_checkpoint: str, vocab_file: str, do_lower_case: bool = True,
                 config_file: str | None = None, device: str | torch.device = "cpu") -> None:
        from bertforge.config import ModelConfig
        from bertforge.data.tokenization import load_tokenizer
        from bertforge.model.bert import BertForMaskedLM
        from bertforge.model.convert import load_pretrained

        if not Path(init_checkpoint).exists():
            raise ConfigError(f"--init_checkpoint {init_checkpoint}: no such file or directory")
        self.tokenizer = load_tokenizer(vocab_file, do_lower_case)
        self.lower = do_lower_case
        config = ModelConfig.from_json_file(config_file) if config_file else None
        try:
            model, _ = load_pretrained(init_checkpoint, BertForMaskedLM, config=config,
                                       allow_unexpected=("cls.seq_relationship.*", "bert.pooler.*",
                                                         "qa_outputs.*", "classifier.*"))
        except CheckpointError as e:
            if "cls.predictions" in str(e):
                raise CheckpointError(f"--init_checkpoint {init_checkpoint} has no MLM head "
                                      "(cls.predictions.*): fill-mask needs a pretraining "
                                      "checkpoint") from None
            raise
        vocab = self.tokenizer.get_vocab()
        if len(vocab) > model.config.vocab_size:
            raise ConfigError(f"--vocab_file {vocab_file} has {len(vocab)} tokens but the model "
                              f"only {model.config.vocab_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.id_to_token = {i: t for t, i in vocab.items()}
        # ids the model can score but the vocab has no token for (a model vocab padded to a
        # multiple of 8, or larger than this vocab file) and tokens that never fill a blank
        self.excluded = torch.ones(model.config.vocab_size, dtype=torch.bool)
        self.excluded[list(self.id_to_token)] = False
        self.excluded[[vocab[t] for t in self.EXCLUDED if t in vocab]] = True
        self.mask_id = vocab.get(MASK)
        if self.mask_id is None:
            raise DataError(f"--vocab_file {vocab_file} has no {MASK} token")

    @torch.no_grad()
    def predict(self, texts: list[str], top_k: int = 5,
                answers: list[str | None] | None = None) -> list[list[MaskPrediction]]:
        """For each text, for each [MASK] in it (left to right), the ``top_k`` fills.

        ``answers`` (one per text, or None) are hidden words: for a text with one [MASK] and
        an answer that is one vocabulary token, its rank among all fillable tokens is given.
        One padded batch: input_ids [B, L] (L = the longest text + [CLS]/[SEP]),
        scores [B, L, V] from the MLM head, softmax over V at the mask positions.
        """
        enc = self.tokenizer.encode_batch(texts)  # adds [CLS] ... [SEP]
        max_pos = self.model.config.max_position_embeddings
        L = max(len(e.ids) for e in enc)
        if L > max_pos:
            raise DataError(f"a text has {L} tokens, more than the model's {max_pos}")
        ids = torch.zeros(len(enc), L, dtype=torch.long)
        mask = torch.zeros(len(enc), L, dtype=torch.long)
        for b, e in enumerate(enc):
            ids[b, :len(e.ids)] = torch.tensor(e.ids)
            mask[b, :len(e.ids)] = 1
        for t, row in zip(texts, ids, strict=True):
            if not bool((row == self.mask_id).any()):
                raise DataError(f"no {MASK} in the text {t!r}")
        ids, mask = ids.to(self.device), mask.to(self.device)
        scores = self.model(ids, torch.zeros_like(ids), mask).float()  # [B, L, V]
        scores = scores.masked_fill(self.excluded.to(scores.device), float("-inf"))
        probs = scores.softmax(-1)
        vocab = self.tokenizer.get_vocab()
        out = []
        for b in range(len(texts)):
            positions = (ids[b] == self.mask_id).nonzero().flatten().tolist()
            target = None
            if answers is not None and answers[b] is not None and len(positions) == 1:
                target = vocab.get(answers[b].lower() if self.lower else answers[b])
            per_mask = []
            for pos in positions:
                p, i = probs[b, pos].topk(top_k)
                pred = MaskPrediction([(self.id_to_token[int(j)], float(q))
                                       for q, j in zip(p.tolist(), i.tolist(), strict=True)])
                if target is not None:
                    pt = probs[b, pos, target]
                    pred.rank = 1 + int((probs[b, pos] > pt).sum())
                    pred.probability = float(pt)
                per_mask.append(pred)
            out.append(per_mask)
        return out


def format_example(ex: Example, preds: list[MaskPrediction], vocab_size: int | None = None) -> str:
    """Readable lines: the input, then one line of top predictions per [MASK]."""
    lines = [f"  input:  {ex.text}"]
    for k, pred in enumerate(preds):
        tag = "  top:   " if len(preds) == 1 else f"  [MASK] {k + 1}:"
        lines.append(f"{tag} " + "  ".join(f"{t} {p:.3g}" for t, p in pred.top))
    if ex.answer is not None and len(preds) == 1:
        r = preds[0].rank
        of = f" of {vocab_size}" if vocab_size else ""
        lines.append(f"  hidden: {ex.answer}" + (f"  (rank {r}{of}, probability {preds[0].probability:.3g})"
                                                  if r is not None else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m bertforge.cli.fill_mask",
                                description="Top predictions of a pretrained BERT for [MASK] tokens.")
    a = p.add_argument
    a("--init_checkpoint", required=True,
      help="pretrained weights with the MLM head: a bertforge/NGC file or an HF directory")
    a("--vocab_file", default=None, help="vocab.txt (default: the one in an HF --init_checkpoint)")
    a("--config_file", default=None, help="bert_config.json (needed for NGC files)")
    case = p.add_mutually_exclusive_group()
    case.add_argument("--do_lower_case", dest="do_lower_case", action="store_true", default=True,
                      help="lower-case the input (default; uncased vocabularies)")
    case.add_argument("--no_lower_case", dest="do_lower_case", action="store_false",
                      help="keep the case (cased vocabularies)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text with [MASK] (repeatable)")
    src.add_argument("--input_file", help="texts with [MASK], one per line")
    src.add_argument("--from_text", help="text shard file or folder: mask one word of sampled sentences")
    a("--num_examples", type=int, default=5, help="with --from_text: how many sentences")
    a("--seed", type=int, default=1, help="with --from_text: which sentences and words")
    a("--top_k", type=int, default=5, help="predictions shown per [MASK]")
    a("--output", default=None, help="also write the predictions here as JSON")
    a("--device", choices=("cpu", "cuda"), default=None, help="default: CUDA when available")
    return p.check(limits={"num_examples": "[1,100000]", "top_k": ">=1"}, outputs={"output": "file"})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from bertforge.data.tokenization import find_vocab
    from bertforge.files import atomic_write_json

    args = build_parser().parse_args(argv)
    use_cpu_gemm(read_environment())
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    vocab_file = find_vocab(args.vocab_file, args.init_checkpoint)
    fm = FillMask(args.init_checkpoint, vocab_file, args.do_lower_case, args.config_file, device)
    if args.text:
        examples = [Example(t) for t in args.text]
    elif args.input_file:
        path = Path(args.input_file)
        if not path.is_file():
            raise DataError(f"--input_file {path}: no such file")
        examples = [Example(t.strip()) for t in read_input_text(path, f"--input_file {path}").splitlines()
                    if t.strip()]
        if not examples:
            raise DataError(f"--input_file {path} is empty")
    else:
        path = Path(args.from_text)
        if not path.exists():
            raise DataError(f"--from_text {path}: no such file or directory")
        examples = pick_examples(_read_sentences(path), fm.tokenizer.get_vocab(), args.num_examples,
                                 args.seed, lower=args.do_lower_case)
        if not examples:
            raise DataError(f"--from_text {path}: no sentence of 8-30 plain words to mask")
    fillable = int((~fm.excluded).sum())
    if args.top_k > fillable:
        raise ConfigError(f"--top_k {args.top_k} is more than the {fillable} tokens the model "
                          "can fill in")
    preds = fm.predict([e.text for e in examples], args.top_k, [e.answer for e in examples])
    for ex, p in zip(examples, preds, strict=True):
        print(format_example(ex, p, fillable), flush=True)
    if args.output:
        atomic_write_json(args.output, [
            {"text": ex.text, "hidden_word": ex.answer,
             "hidden_word_rank": p[0].rank if len(p) == 1 else None,
             "predictions": [[{"token": t, "probability": q} for t, q in m.top] for m in p]}
            for ex, p in zip(examples, preds, strict=True)])
    return 0


if __name__ == "__main__":
    main()
