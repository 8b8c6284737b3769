"""Configuration dataclasses.

:class:`ModelConfig` reads and writes Google/NVIDIA ``bert_config.json`` files and the
``config.json`` of Hugging Face BERT checkpoints. Fields are documented where declared;
validation happens in ``__post_init__`` so a bad file fails at load time with one line.
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

__all__ = ["ModelConfig", "BertConfig", "pad_vocab_size"]


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
