"""The pretraining objective as the trainer uses it: batches from shards to the device, the
MLM + NSP loss of a training step, and the held-out MLM evaluation.

A batch flows: shard files (HDF5/Parquet) -> :class:`bertforge.data.loader.PretrainingDataLoader`
(a rank's share, masked, padded; a dict of CPU tensors) -> :func:`to_device` (checked against
``--max_seq_length``) -> :class:`PretrainingLoss` inside :class:`bertforge.train.loop.TrainStep`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from bertforge.config import DataConfig, EvalConfig
from bertforge.distributed import DistInfo
from bertforge.errors import DataError
from bertforge.precision import Precision
from bertforge.train.loop import SummedLoss

__all__ = ["EVAL_SEED", "PretrainingLoss", "make_loader", "to_device", "check_first_batch",
           "evaluate_mlm"]

EVAL_SEED = 12345
"""Seed of the held-out batches: the same for every run, so evaluations are comparable."""


class PretrainingLoss(SummedLoss):
    """The pretraining loss for TrainStep: MLM (over masked tokens) + NSP (over sequences).

    With ``dense_sequence_output`` (default) the model computes MLM logits only at the masked
    positions ([M, V]); otherwise at every position ([B, L, V]) with ignored labels.
    ``fused=False`` (--disable_jit_fusions) computes the MLM loss with ``F.cross_entropy``
    also where the fused CPU block would run. ``__call__`` is NVIDIA's micro-batch mean;
    ``counts``/``sums`` give TrainStep what it needs to normalise over the global batch.
    ``last_parts`` holds the [mlm, nsp] means of the last ``__call__``.
    """

    terms = ("mlm_loss", "nsp_loss")

    def __init__(self, dense_sequence_output: bool = True, fused: bool = True) -> None:
        from bertforge.model.bert import masked_lm_count, pretraining_loss

        self._loss = pretraining_loss
        self._count = masked_lm_count
        self.dense = dense_sequence_output
        self.fused = fused
        self.last_parts: torch.Tensor | None = None

    def _scores(self, model, batch: dict):
        return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                     masked_lm_labels=batch["masked_lm_labels"] if self.dense else None)

    def __call__(self, model, batch: dict) -> torch.Tensor:
        scores, nsp_scores = self._scores(model, batch)
        total, mlm, nsp = self._loss(scores, nsp_scores, batch["masked_lm_labels"],
                                     batch["next_sentence_labels"], fused=self.fused)
        self.last_parts = torch.stack([mlm.detach(), nsp.detach()])
        return total

    def counts(self, batch: dict) -> torch.Tensor:
        nsp = batch["next_sentence_labels"]
        return torch.stack([self._count(batch["masked_lm_labels"]),
                            torch.full((), nsp.numel(), dtype=torch.long, device=nsp.device)]).float()

    def sums(self, model, batch: dict) -> torch.Tensor:
        scores, nsp_scores = self._scores(model, batch)
        _, mlm, nsp = self._loss(scores, nsp_scores, batch["masked_lm_labels"],
                                 batch["next_sentence_labels"], fused=self.fused, reduction="sum")
        return torch.stack([mlm, nsp])


def make_loader(input_dir: str, data: DataConfig, batch_size: int, info: DistInfo, seed: int, *,
                accumulation_steps: int = 1, rank_order: bool = False):
    """This rank's loader over the shards in ``input_dir`` (checked against --vocab_file): its
    share of every global batch (``batch_size`` x ``accumulation_steps`` x ranks sequences), in
    the global sample order, the same for any number of ranks. ``rank_order`` (``--loss_normalization
    micro_batch``): a new run takes NVIDIA's rank-sharded order (one lane per rank) and the
    earlier per-rank dynamic masks instead, as bertforge did before the global order."""
    from bertforge.data.loader import PretrainingDataLoader, discover_shards
    from bertforge.data.vocab import check_shards_vocab

    files = discover_shards(input_dir)
    if not files:
        raise DataError(f"no training shards (.hdf5/.h5/.parquet) in {input_dir}")
    check_shards_vocab(input_dir, data.vocab_file)
    return PretrainingDataLoader(
        files, batch_size=batch_size, accumulation_steps=accumulation_steps,
        vocab_file=data.vocab_file, rank=info.rank, world_size=info.world_size, seed=seed,
        masking=data.masking, max_predictions_per_seq=data.max_predictions_per_seq,
        num_workers=data.num_workers,
        **({"lanes": info.world_size, "mask_seeding": "rank_step"} if rank_order else {}))


def to_device(batch: dict, device: torch.device, max_seq_length: int, source: str) -> dict:
    """The batch's tensors on ``device``; DataError when it is longer than --max_seq_length."""
    length = batch["input_ids"].shape[1]
    if length > max_seq_length:
        raise DataError(f"{source} has sequences of length {length} > --max_seq_length "
                        f"{max_seq_length}")
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) for k, v in batch.items()}


def check_first_batch(batch: dict, *, vocab_size: int, config_file: str,
                      max_predictions_per_seq: int, source: str) -> None:
    """The data against the flags, once (host syncs): token ids inside the model's vocabulary,
    masked positions per sequence within --max_predictions_per_seq."""
    vmax = int(batch["input_ids"].max())
    if vmax >= vocab_size:
        raise DataError(f"{source}: token id {vmax} is outside the vocabulary of "
                        f"{config_file} ({vocab_size})")
    npred = int((batch["masked_lm_labels"] != -1).sum(1).max())
    if npred > max_predictions_per_seq:
        raise DataError(f"{source}: a sequence has {npred} masked tokens > "
                        f"--max_predictions_per_seq {max_predictions_per_seq}")


@torch.no_grad()
def evaluate_mlm(model, evaluation: EvalConfig, data: DataConfig, info: DistInfo,
                 precision: Precision, batch_size: int, rank_order: bool = False) -> dict:
    """Held-out MLM accuracy / loss and NSP accuracy over ``--num_eval_batches`` batches per rank.

    The loader is rebuilt with a fixed seed (:data:`EVAL_SEED`, not ``--seed``) every time, so
    every evaluation, of this run or of another run on the same held-out shards and global
    batch (``batch_size`` x ranks), sees the same sequences and masks (``rank_order``: the
    earlier rank-sharded order, see :func:`make_loader`). Counts are summed over ranks.
    """
    was_training = model.training
    model.eval()
    core = model.module if hasattr(model, "module") else model
    loader = make_loader(evaluation.eval_dir, data, batch_size, info, seed=EVAL_SEED,
                         rank_order=rank_order)
    it = iter(loader)
    sums = torch.zeros(5, dtype=torch.float64)  # correct, masked, loss*masked, nsp correct, seqs
    for _ in range(evaluation.num_eval_batches):
        batch = to_device(next(it), info.device, data.max_seq_length, f"--eval_dir {evaluation.eval_dir}")
        sums += _eval_counts(core, batch, precision)
    if hasattr(loader, "close"):
        loader.close()
    if info.distributed:
        sums = sums.to(info.device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    model.train(was_training)
    correct, masked, loss_sum, nsp_correct, seqs = sums.tolist()
    return {"eval_mlm_accuracy": correct / max(masked, 1.0),
            "eval_mlm_loss": loss_sum / max(masked, 1.0),
            "eval_nsp_accuracy": nsp_correct / max(seqs, 1.0),
            "eval_masked_tokens": int(masked)}


def _eval_counts(model, batch: dict, precision: Precision) -> torch.Tensor:
    """[MLM correct, masked tokens, MLM loss sum, NSP correct, sequences] of one batch."""
    from bertforge.model.bert import masked_rows

    labels = batch["masked_lm_labels"]
    with precision.autocast():
        scores, nsp = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                            masked_lm_labels=labels)
    target = labels.flatten().index_select(0, masked_rows(labels)).long()  # [M]
    scores = scores.float()
    loss = torch.nn.functional.cross_entropy(scores, target, reduction="sum")
    return torch.tensor([
        float((scores.argmax(-1) == target).sum()), float(target.numel()), float(loss),
        float((nsp.float().argmax(-1) == batch["next_sentence_labels"].long()).sum()),
        float(labels.shape[0])], dtype=torch.float64)
