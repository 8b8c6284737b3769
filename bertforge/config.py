"""Configuration dataclasses: the model's architecture and the settings of a run.

:class:`ModelConfig` reads and writes Google/NVIDIA ``bert_config.json`` files and the
``config.json`` of Hugging Face BERT checkpoints.

:class:`PretrainConfig` (``run_pretraining.py``) and :class:`FinetuneConfig` (``run_squad.py``,
``run_glue.py``) hold every setting of a run, in frozen dataclasses grouped by concern. The
command lines build them once, from NVIDIA's flags and the environment
(:mod:`bertforge.cli.environment`); nothing below the CLI sees the flags themselves. Values
derived from several fields are methods (:meth:`TrainingConfig.micro_batch_size`), never
fields written back mid-run.

Fields are documented where declared, with the flag that sets them. Each flag's own range is
checked when the command line is parsed (``LIMITS`` in :mod:`bertforge.cli.pretrain`); the
``__post_init__`` of a run config checks the rules that join several fields, in one line
naming the flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertforge.errors import ConfigError

__all__ = [
    "ModelConfig", "BertConfig", "pad_vocab_size", "CPU_GEMM_BACKENDS", "CPU_GEMM_POLICIES",
    "DataConfig", "EvalConfig", "ModelSetupConfig", "OptimizerConfig", "TrainingConfig",
    "PrecisionConfig", "CheckpointConfig", "PhaseConfig", "LoggingConfig", "LaunchConfig",
    "PretrainConfig", "FinetuneConfig", "LOSS_NORMALIZATIONS",
]


def pad_vocab_size(vocab_size: int, multiple: int = 8) -> int:
    """The vocab size rounded up to ``multiple`` (NVIDIA pads 30522 -> 30528 for tensor cores).

    This is the ONE place vocab padding is computed.
    """
    if multiple <= 1:
        return vocab_size
    return ((vocab_size + multiple - 1) // multiple) * multiple


#: Deepest encoder a config may ask for (the deepest BERT-like models have ~100 layers; a
#: million would take an hour just to build).
MAX_LAYERS = 1024

_ACTS = ("gelu", "gelu_new", "gelu_tanh", "relu", "tanh", "bias_gelu", "gelu_pytorch_tanh")

# Keys of HF config.json files that describe the checkpoint, not the architecture; accepted
# and ignored when reading an HF directory (never when reading a bert_config.json).
_HF_META_KEYS = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
    "pad_token_id", "position_embedding_type", "use_cache", "classifier_dropout",
    "gradient_checkpointing", "_name_or_path", "id2label", "label2id", "output_past",
    "bos_token_id", "eos_token_id", "directionality", "pooler_fc_size",
    "pooler_num_attention_heads", "pooler_num_fc_layers", "pooler_size_per_head",
    "pooler_type", "is_decoder", "add_cross_attention", "tie_word_embeddings",
    "problem_type", "finetuning_task", "torchscript", "return_dict",
}


@dataclass
class ModelConfig:
    """BERT architecture, field for field as in Google's ``bert_config.json``."""

    vocab_size: int = 30522
    """WordPiece vocabulary size (before any padding; see ``padded_vocab_size``)."""
    hidden_size: int = 768
    """H: width of every hidden state."""
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    """Width of the feed-forward layer (4H in Google's configs)."""
    hidden_act: str = "gelu"
    """'gelu' is the exact erf GELU of Google's and HF's checkpoints; 'gelu_tanh' the tanh approximation."""
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_vocab_to_multiple: int = 1
    """Pad the embedding matrix to a multiple of this (NVIDIA uses 8); 1 keeps it exact."""

    def __post_init__(self) -> None:
        ints = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size",
                "pad_vocab_to_multiple")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"model config: {name} must be a positive integer, got {v!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ConfigError(f"model config: {name} must be in [0, 1), got {v!r}")
        if self.num_hidden_layers > MAX_LAYERS:
            raise ConfigError(f"model config: num_hidden_layers {self.num_hidden_layers} is more "
                              f"than {MAX_LAYERS}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model config: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in _ACTS:
            raise ConfigError(f"model config: hidden_act {self.hidden_act!r} is not one of {', '.join(_ACTS)}")
        for name in ("layer_norm_eps", "initializer_range"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ConfigError(f"model config: {name} must be a positive finite number, got {v!r}")

    # -- derived values -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def padded_vocab_size(self) -> int:
        return pad_vocab_size(self.vocab_size, self.pad_vocab_to_multiple)

    def num_parameters(self) -> int:
        """Parameters of ``BertForPreTraining`` with this config (the task models have
        fewer), counted from the config alone: what :mod:`bertforge.memory` checks before
        anything is allocated."""
        V, H, L, I = self.padded_vocab_size, self.hidden_size, self.num_hidden_layers, self.intermediate_size  # noqa: E741
        embeddings = (V + self.max_position_embeddings + self.type_vocab_size) * H + 2 * H
        layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
        pooler = H * H + H
        heads = (H * H + H) + 2 * H + V + (2 * H + 2)  # MLM transform + LayerNorm + bias, NSP
        return embeddings + L * layer + pooler + heads

    # -- (de)serialisation ----------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model config", hf: bool = False) -> ModelConfig:
        """Build from a dict; unknown or missing keys are errors naming ``source``.

        ``hf=True`` accepts (and drops) the bookkeeping keys of HF ``config.json`` files.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        if hf:
            if d.get("model_type", "bert") != "bert":
                raise ConfigError(f"{source}: model_type {d['model_type']!r} is not 'bert'")
            if d.get("position_embedding_type", "absolute") != "absolute":
                raise ConfigError(f"{source}: only absolute position embeddings are supported")
            for k in list(d):
                if k in _HF_META_KEYS or k.startswith("_"):
                    d.pop(k)
            d.pop("chunk_size_feed_forward", None)
            d.pop("output_attentions", None)
            d.pop("output_hidden_states", None)
        names = set(cls.field_names())
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
        optional = {"pad_vocab_to_multiple", "layer_norm_eps"}
        missing = sorted(names - set(d) - optional)
        if missing:
            raise ConfigError(f"{source}: missing key(s) {', '.join(missing)}")
        if d.get("hidden_act") == "gelu_new" or d.get("hidden_act") == "gelu_pytorch_tanh":
            d["hidden_act"] = "gelu_tanh"
        if d.get("hidden_act") == "bias_gelu":
            d["hidden_act"] = "gelu"
        return cls(**d)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ModelConfig:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist" if not p.exists() else f"config file {p} is not a file")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {p} is not valid JSON: {e}") from None
        return cls.from_dict(d, source=f"config file {p}", hf=(p.name == "config.json"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` for ``transformers.BertConfig``."""
        d = self.to_dict()
        d.pop("pad_vocab_to_multiple")
        d["vocab_size"] = self.padded_vocab_size
        if d["hidden_act"] == "gelu_tanh":
            d["hidden_act"] = "gelu_new"
        d.update(model_type="bert", architectures=["BertForPreTraining"], pad_token_id=0,
                 position_embedding_type="absolute")
        return d

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# NVIDIA's and Google's name for it.
BertConfig = ModelConfig


# == run configuration ==========================================================================

LOSS_NORMALIZATIONS = ("global_batch", "micro_batch")
"""--loss_normalization: each loss term summed over the whole global batch and divided by its
count there (the same update however the batch is split into processes and micro-batches), or
NVIDIA's mean per micro-batch; see bertforge.train.loop."""


def _check_loss_normalization(value: str) -> None:
    if value not in LOSS_NORMALIZATIONS:
        raise ConfigError(f"--loss_normalization must be one of {', '.join(LOSS_NORMALIZATIONS)}, "
                          f"got {value!r}")


CPU_GEMM_BACKENDS = ("onednn", "aten")
"""fp32 CPU matrix products: oneDNN's GEMM or PyTorch's own (MKL); see bertforge.model.gemm."""
CPU_GEMM_POLICIES = ("auto", *CPU_GEMM_BACKENDS)
"""``auto``: the faster backend on this machine, measured once and cached (bertforge.model.gemm)."""


@dataclass(frozen=True)
class DataConfig:
    """The training shards and how batches are made from them."""

    input_dir: str
    """--input_dir: directory of training shards (NVIDIA HDF5 or LDDL Parquet)."""
    vocab_file: str | None = None
    """--vocab_file: WordPiece vocab; needed for Parquet shards and dynamic masking."""
    max_seq_length: int = 512
    """--max_seq_length: the longest sequence the data may hold (a longer batch is an error)."""
    max_predictions_per_seq: int = 80
    """--max_predictions_per_seq: the most masked positions per sequence."""
    masking: str = "static"
    """--masking: 'static' (masks stored in the shards) or 'dynamic' (new masks at load time)."""
    num_workers: int = 4
    """--num_workers: data loader worker processes."""


@dataclass(frozen=True)
class EvalConfig:
    """Held-out MLM evaluation: at the start, every ``eval_freq`` steps and at the end."""

    eval_dir: str | None = None
    """--eval_dir: held-out shards (None: no evaluation)."""
    eval_freq: int = 0
    """--eval_freq: evaluate every N steps (0: only at the start and the end)."""
    num_eval_batches: int = 50
    """--num_eval_batches: held-out batches per evaluation, per rank."""
    eval_batch_size: int | None = None
    """--eval_batch_size: held-out batch size (None: the training micro-batch size)."""


@dataclass(frozen=True)
class ModelSetupConfig:
    """Which model is trained and how its forward pass runs."""

    config_file: str
    """--config_file: the model's bert_config.json."""
    init_checkpoint: str | None = None
    """--init_checkpoint: initial weights (a bertforge/NVIDIA file or an HF directory)."""
    checkpoint_activations: bool = False
    """--checkpoint_activations: recompute each layer's activations in backward."""
    dense_sequence_output: bool = True
    """MLM logits only at the masked positions (False: --no_dense_sequence_output)."""
    fused: bool = True
    """bertforge's fused training blocks and fused MLM loss (False: --disable_jit_fusions)."""
    cuda_graphs: bool = False
    """--cuda_graphs: on CUDA, compile the model with CUDA graphs (torch.compile
    mode reduce-overhead); elsewhere one line says it has no effect."""


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer and its learning-rate schedule (linear warmup, then poly decay)."""

    name: str = "lamb"
    """--optimizer: lamb (NVIDIA's), adamw or bertadam."""
    learning_rate: float = 5e-5
    """--learning_rate: the peak learning rate."""
    warmup_proportion: float = 0.01
    """--warmup_proportion: fraction of the phase's steps of linear warmup."""
    weight_decay: float = 0.01
    """--weight_decay: decoupled weight decay of matrices (biases and LayerNorm: none)."""
    max_grad_norm: float = 1.0
    """--max_grad_norm: global gradient-norm clipping threshold (0 disables)."""


@dataclass(frozen=True)
class TrainingConfig:
    """Steps and batches. ``train_batch_size`` is per rank and before accumulation (NVIDIA's
    meaning): each rank runs ``gradient_accumulation_steps`` micro-batches per optimizer step."""

    train_batch_size: int = 32
    """--train_batch_size: sequences per rank per optimizer step."""
    gradient_accumulation_steps: int = 1
    """--gradient_accumulation_steps: micro-batches per optimizer step; divides train_batch_size."""
    max_steps: int | float = 1000
    """--max_steps: optimizer steps of this phase (skipped fp16 steps not counted); NVIDIA's
    flag is a float, and a fraction rounds up (the loop runs while step < max_steps)."""
    steps_this_run: int = -1
    """--steps_this_run: NVIDIA's absolute cap: stop (with a checkpoint) once this phase's step
    reaches it (-1: max_steps)."""
    seed: int = 42
    """--seed: weights, dropout and the data order derive from it."""
    do_train: bool = True
    """--do_train: train (False: only evaluate the initial weights on --eval_dir)."""
    loss_normalization: str = "global_batch"
    """--loss_normalization: 'global_batch' (MLM over every masked token of the global batch,
    NSP over its sequences, in the global sample order) or 'micro_batch' (NVIDIA's mean per
    micro-batch, in NVIDIA's rank-sharded order); see :data:`LOSS_NORMALIZATIONS`."""

    def __post_init__(self) -> None:
        _check_loss_normalization(self.loss_normalization)
        if self.train_batch_size % self.gradient_accumulation_steps:
            raise ConfigError(f"--train_batch_size {self.train_batch_size} is not divisible by "
                              f"--gradient_accumulation_steps {self.gradient_accumulation_steps}")

    def micro_batch_size(self) -> int:
        """Sequences per forward/backward on one rank."""
        return self.train_batch_size // self.gradient_accumulation_steps

    def global_batch_size(self, world_size: int) -> int:
        """Sequences per optimizer step over all ranks."""
        return self.train_batch_size * world_size

    def end_step(self) -> int | float:
        """The step of this phase at which this run stops (both generations of NVIDIA's code
        compare --steps_this_run with the phase's step after each step)."""
        if self.steps_this_run < 0:
            return self.max_steps
        return min(self.max_steps, self.steps_this_run)


@dataclass(frozen=True)
class PrecisionConfig:
    """Numeric precision of the model's computation."""

    fp16: bool = False
    """--fp16/--amp: fp16 autocast with dynamic loss scaling (CUDA only)."""
    bf16: bool = False
    """--bf16: bf16 autocast (CUDA or CPU)."""
    init_loss_scale: float = 2.0**20
    """--init_loss_scale: the initial fp16 loss scale."""
    loss_scale: float = 0.0
    """--loss_scale: fp16 with 0 = dynamic scaling (from init_loss_scale), > 0 = this static
    scale (overflowing steps are still skipped)."""
    tf32: bool = False
    """--tf32: TF32 tensor-core math for fp32 matmuls and convolutions (CUDA, Ampere or newer)."""
    cpu_gemm: str = "auto"
    """fp32 CPU matrix products: 'auto' (the faster of oneDNN and MKL on this machine, measured
    once and cached; on resume the checkpoint's), 'onednn' or 'aten' (--cpu_gemm, else the
    environment's BERTFORGE_CPU_GEMM)."""

    def __post_init__(self) -> None:
        if self.cpu_gemm not in CPU_GEMM_POLICIES:
            raise ConfigError(f"cpu_gemm {self.cpu_gemm!r}: expected one of {', '.join(CPU_GEMM_POLICIES)}")


@dataclass(frozen=True)
class CheckpointConfig:
    """Where checkpoints go, how often, how many are kept, and which one a run resumes from."""

    output_dir: str
    """--output_dir: checkpoints ckpt_<global step>.pt (and by default the dllogger file)."""
    num_steps_per_checkpoint: int = 100
    """--num_steps_per_checkpoint: save every N steps (and at the end)."""
    keep_checkpoints: int = 3
    """--keep_checkpoints: keep only the last K checkpoints."""
    skip_checkpoint: bool = False
    """--skip_checkpoint: save none."""
    resume_from_checkpoint: bool = False
    """--resume_from_checkpoint: continue from the latest checkpoint in output_dir."""
    resume_step: int = -1
    """--resume_step: with resume_from_checkpoint, load ckpt_<resume_step>.pt (-1: the latest)."""

    def __post_init__(self) -> None:
        if self.resume_step != -1 and not self.resume_from_checkpoint:
            raise ConfigError("--resume_step needs --resume_from_checkpoint")


@dataclass(frozen=True)
class PhaseConfig:
    """NVIDIA's two pretraining phases (phase 2 starts from phase 1's last checkpoint)."""

    phase2: bool = False
    """--phase2: this run is phase 2."""
    resume_phase2: bool = False
    """--resume_phase2: with phase2, continue a phase-2 checkpoint instead of refusing it."""
    phase1_end_step: int | None = None
    """--phase1_end_step: phase 1's last step, the offset of phase-2 step numbers (None: from
    the phase-1 checkpoint)."""

    def __post_init__(self) -> None:
        if self.resume_phase2 and not self.phase2:
            raise ConfigError("--resume_phase2 needs --phase2")

    @property
    def phase(self) -> int:
        return 2 if self.phase2 else 1

    def data_seed(self, seed: int) -> int:
        """The data order's seed: phase 2 reads its shards in an order of its own."""
        return seed + (1000 if self.phase2 else 0)


@dataclass(frozen=True)
class LoggingConfig:
    """What is logged where, and how often."""

    log_freq: int | float = 1
    """--log_freq: log when step % log_freq == 0 (NVIDIA's flag is a float)."""
    json_summary: str | None = None
    """--json-summary: dllogger JSON-lines file (None: <output_dir>/dllogger.json)."""
    tensorboard_dir: str | None = None
    """--tensorboard_dir: also write TensorBoard scalars there."""
    progress_bar: bool = True
    """A tqdm progress bar on rank 0 (False: --disable_progress_bar)."""
    profile: bool = False
    """--profile: record a torch.profiler trace of a few optimizer steps
    (<output_dir>/profile_rank<R>.json)."""
    profile_start: int = 0
    """--profile-start: with profile, the step after which recording starts."""


@dataclass(frozen=True)
class LaunchConfig:
    """Where the processes run and how they talk."""

    local_rank: int = -1
    """--local_rank of the legacy torch.distributed.launch (LOCAL_RANK takes precedence)."""
    device: str | None = None
    """--device: 'cpu' or 'cuda' (None: CUDA when available)."""
    dist_timeout: float = 1800.0
    """--dist_timeout (or BERTFORGE_DIST_TIMEOUT): seconds a collective waits for a dead rank."""
    allreduce_post_accumulation: bool = True
    """--allreduce_post_accumulation: all-reduce once per step, after accumulation."""
    allreduce_post_accumulation_fp16: bool = False
    """--allreduce_post_accumulation_fp16: all-reduce gradients in fp16."""


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a pretraining run (``run_pretraining.py``)."""

    data: DataConfig
    model: ModelSetupConfig
    checkpoint: CheckpointConfig
    training: TrainingConfig = TrainingConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    precision: PrecisionConfig = PrecisionConfig()
    phase: PhaseConfig = PhaseConfig()
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()
    launch: LaunchConfig = LaunchConfig()

    def __post_init__(self) -> None:
        if not self.training.do_train and self.eval.eval_dir is None:
            raise ConfigError("nothing to do: pass --do_train to train (or --eval_dir to only evaluate)")

    def json_summary(self) -> str:
        """The dllogger file: --json-summary, else <output_dir>/dllogger.json."""
        return self.logging.json_summary or os.path.join(self.checkpoint.output_dir, "dllogger.json")

    def eval_batch_size(self) -> int:
        return self.eval.eval_batch_size or self.training.micro_batch_size()

    def to_dict(self) -> dict[str, Any]:
        """Plain values, nested by concern (what a checkpoint records of its run)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of a fine-tuning run (NVIDIA's flag names and defaults)."""

    learning_rate: float = 5e-5
    """--learning_rate: the peak learning rate (BertAdam, linear warmup then linear decay)."""
    num_train_epochs: float = 3.0
    """--num_train_epochs: fractional epochs stop part-way through the last one."""
    max_steps: int = -1
    """--max_steps: when > 0, the number of optimizer steps (overrides num_train_epochs)."""
    warmup_proportion: float = 0.1
    """--warmup_proportion: fraction of the steps of linear warmup."""
    train_batch_size: int = 32
    """--train_batch_size: sequences per optimizer step and process; split into
    gradient_accumulation_steps micro-batches."""
    gradient_accumulation_steps: int = 1
    """--gradient_accumulation_steps."""
    weight_decay: float = 0.01
    """Decoupled weight decay of matrices."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clipping threshold."""
    seed: int = 42
    """--seed: the data order (and the new head's initial weights) derive from it."""
    log_freq: int = 50
    """--log_freq: log every N steps."""
    loss_normalization: str = "global_batch"
    """--loss_normalization: 'global_batch' (the mean over the examples of the whole global
    batch, for any split into processes and micro-batches) or 'micro_batch' (NVIDIA's mean of
    per-micro-batch means); see :data:`LOSS_NORMALIZATIONS`."""

    def __post_init__(self) -> None:
        _check_loss_normalization(self.loss_normalization)
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.gradient_accumulation_steps < 1:
            raise ConfigError(f"--gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        if self.train_batch_size < self.gradient_accumulation_steps:
            raise ConfigError(f"--train_batch_size {self.train_batch_size} is smaller than "
                              f"--gradient_accumulation_steps {self.gradient_accumulation_steps}")
        if not 0.0 <= self.warmup_proportion < 1.0:
            raise ConfigError(f"--warmup_proportion must be in [0, 1), got {self.warmup_proportion}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("--num_train_epochs must be positive (or give --max_steps)")
        if self.log_freq < 1:
            raise ConfigError(f"--log_freq must be >= 1, got {self.log_freq}")

    def micro_batch_size(self) -> int:
        return self.train_batch_size // self.gradient_accumulation_steps

    def total_steps(self, num_examples: int, world_size: int = 1) -> int:
        """Optimizer steps of the run: ``max_steps``, else epochs x steps per epoch."""
        if self.max_steps > 0:
            return int(self.max_steps)
        per_rank = math.ceil(num_examples / world_size)
        per_epoch = math.ceil(per_rank / self.train_batch_size)
        return max(1, math.ceil(per_epoch * self.num_train_epochs))
