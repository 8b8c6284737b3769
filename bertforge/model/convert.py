"""Checkpoint interop: Hugging Face directories, NVIDIA/NGC files, bertforge files.

* HF: a directory with ``config.json`` and ``model.safetensors`` (preferred) or
  ``pytorch_model.bin``. Both ``BertModel`` checkpoints (keys without ``bert.``) and task
  checkpoints load; old ``LayerNorm.gamma/beta`` names are renamed.
* NGC / NVIDIA: ``{"model": state_dict}`` with ``dense_act`` module names and the vocab
  padded to 30528 (plus ``module.`` prefixes from DDP); needs a ``bert_config.json``.
* bertforge: one torch file ``{"model": state_dict, "config": <bert_config dict>, ...}``.

Loading is strict: a missing or unexpected key is an error that lists the keys, except the
keys a caller explicitly allows (e.g. ``cls.*`` when a fine-tuning model drops the
pretraining heads), which are reported.
"""

from __future__ import annotations

import fnmatch
import json
import os
import pickle
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bertforge.config import ModelConfig, pad_vocab_size
from bertforge.errors import CheckpointError, ConfigError, UserError
from bertforge.files import atomic_path, ensure_dir, torch_save, unpickling_refusal

__all__ = [
    "torch_load",
    "read_state_dict",
    "detect_format",
    "normalize_state_dict",
    "load_state_dict_strict",
    "load_pretrained",
    "load_task_model",
    "export_hf",
    "to_ngc_state_dict",
    "save_bertforge",
    "LoadReport",
]


def torch_load(path: str | os.PathLike, trust: bool = False) -> object:
    """``torch.load`` that never runs code from the file unless ``trust`` is set.

    With ``trust=False`` the file is read with ``weights_only=True``: a pickle that would
    import or call anything (a malicious file, or an old NGC checkpoint holding an
    ``argparse.Namespace``) is refused with a CheckpointError naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist" if not p.exists()
                              else f"checkpoint {p} is not a file")
    try:
        with warnings.catch_warnings():  # a pickle that is no torch file: refused below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        raise unpickling_refusal(p, e, hint=" (if you trust its origin, convert it once with "
                                          "`python -m bertforge.convert --trust_checkpoint`, "
                                          "which lets the file run code)") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError ... on random bytes
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise CheckpointError(f"checkpoint {p} is truncated or not a torch checkpoint: {msg}") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {' '.join(str(e).split())[:200]}") from None


def detect_format(path: str | os.PathLike) -> str:
    """'hf' for a directory with config.json, 'safetensors' for a .safetensors file, else 'torch'."""
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CheckpointError(f"checkpoint directory {p} has no config.json")
        return "hf"
    if p.suffix == ".safetensors":
        return "safetensors"
    return "torch"


def _state_dict_from(obj: object, source: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj:
            if not isinstance(obj[key], dict):
                raise CheckpointError(f"checkpoint {source} does not hold a state dict "
                                      f"(its '{key}' entry is a {type(obj[key]).__name__})")
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"checkpoint {source} does not hold a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {source} is not a state dict: entries {bad[:5]} are not tensors")
    return obj  # type: ignore[return-value]


def read_state_dict(path: str | os.PathLike, trust: bool = False) -> tuple[dict[str, torch.Tensor], ModelConfig | None]:
    """Read weights and (when the checkpoint carries one) the model config from any format."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "hf":
        config = ModelConfig.from_json_file(p / "config.json")
        if (p / "model.safetensors").is_file():
            sd = _load_safetensors(p / "model.safetensors")
        elif (p / "pytorch_model.bin").is_file():
            sd = _state_dict_from(torch_load(p / "pytorch_model.bin", trust), p / "pytorch_model.bin")
        else:
            raise CheckpointError(f"checkpoint directory {p} has neither model.safetensors nor pytorch_model.bin")
        return sd, config
    if fmt == "safetensors":
        return _load_safetensors(p), None
    obj = torch_load(p, trust)
    config = None
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        config = ModelConfig.from_dict(obj["config"], source=f"config stored in {p}")
    return _state_dict_from(obj, p), config


#: Entries with one row per vocabulary token (the only ones padding may change).
_VOCAB_KEYS = ("bert.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight",
               "cls.predictions.decoder.weight", "cls.predictions.bias", "cls.predictions.decoder.bias")

_RENAMES = (
    ("LayerNorm.gamma", "LayerNorm.weight"),
    ("LayerNorm.beta", "LayerNorm.bias"),
    (".dense_act.", ".dense."),  # NVIDIA's fused bias-GELU linear layers
)


def normalize_state_dict(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map HF / NVIDIA naming variants onto ``model``'s names and fit vocab padding.

    - strips ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes;
    - renames NVIDIA ``dense_act`` and old ``gamma/beta`` keys;
    - adds ``bert.`` to bare-encoder checkpoints (HF ``BertModel``) loaded into a task model;
    - drops non-persistent buffers some exports carry (``position_ids``);
    - pads or trims vocabulary-sized rows (embeddings, decoder, MLM bias) to the model's size
      when only padding differs: the checkpoint holds every row of the model's real vocab and
      at most NVIDIA's padding to a multiple of 8 beyond it (30528 -> 30522). Any other
      difference is left for :func:`load_state_dict_strict` to refuse, naming both sizes.
    """
    expected = model.state_dict()
    has_bert = any(k.startswith("bert.") for k in expected)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        for old, new in _RENAMES:
            k = k.replace(old, new)
        if k.endswith("position_ids"):
            continue
        if has_bert and k.split(".")[0] in ("embeddings", "encoder", "pooler"):
            k = "bert." + k
        if not has_bert and k.startswith("bert."):
            k = k[len("bert."):]
        out[k] = v
    vocab_keys = _VOCAB_KEYS
    real_vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    for k in vocab_keys:
        if k in out and k in expected and out[k].shape != expected[k].shape:
            have, want = out[k], expected[k]
            if (have.shape[1:] != want.shape[1:] or real_vocab is None
                    or min(have.shape[0], want.shape[0]) < real_vocab
                    or have.shape[0] > max(want.shape[0], pad_vocab_size(real_vocab, 8))):
                continue  # a genuine mismatch; refused by load_state_dict_strict
            if have.shape[0] > want.shape[0]:
                out[k] = have[: want.shape[0]]
            else:
                pad = have.new_zeros((want.shape[0] - have.shape[0], *have.shape[1:]))
                out[k] = torch.cat([have, pad], 0)
    return out


@dataclass
class LoadReport:
    """What a strict load did: keys allowed to be missing/unexpected are listed here."""

    missing_allowed: list[str] = field(default_factory=list)
    unexpected_allowed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.missing_allowed:
            parts.append(f"newly initialised: {_abbrev(self.missing_allowed)}")
        if self.unexpected_allowed:
            parts.append(f"dropped from checkpoint: {_abbrev(self.unexpected_allowed)}")
        return "; ".join(parts) or "all weights loaded"


def _abbrev(keys: list[str], n: int = 6) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def load_state_dict_strict(model: nn.Module, sd: dict[str, torch.Tensor], *, source: str = "checkpoint",
                           allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = ()) -> LoadReport:
    """Load ``sd`` into ``model``; any key outside the allow-lists missing/unexpected is an error.

    Tied parameters (``cls.predictions.decoder.weight`` / ``.bias``) may be absent from the
    checkpoint when their tie partner is present.
    """
    allow_missing, allow_unexpected = tuple(allow_missing), tuple(allow_unexpected)
    expected = model.state_dict()
    tied = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias"}
    sd = dict(sd)
    for k, partner in tied.items():
        if k in expected and k not in sd and partner in sd:
            sd[k] = sd[partner]
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    bad_missing = [k for k in missing if not _matches(k, allow_missing)]
    bad_unexpected = [k for k in unexpected if not _matches(k, allow_unexpected)]
    if bad_missing or bad_unexpected:
        parts = []
        if bad_missing:
            parts.append(f"missing keys: {_abbrev(bad_missing)}")
        if bad_unexpected:
            parts.append(f"unexpected keys: {_abbrev(bad_unexpected)}")
        raise CheckpointError(f"{source} does not match the model ({'; '.join(parts)})")
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    vocab_key = next((k for k in _VOCAB_KEYS if k in sd and k in expected
                      and sd[k].shape[1:] == expected[k].shape[1:]
                      and sd[k].shape[0] != expected[k].shape[0]), None)
    if vocab_key is not None:
        have, want = sd[vocab_key].shape[0], expected[vocab_key].shape[0]
        real = getattr(getattr(model, "config", None), "vocab_size", want)
        raise CheckpointError(
            f"{source} has a vocabulary of {have} rows but the model's config has vocab_size "
            f"{real}: only NVIDIA's padding rows (up to {pad_vocab_size(real, 8)}) may be dropped "
            "or added; use the config the checkpoint was made with")
    if shapes:
        raise CheckpointError(f"{source} has wrong shapes: {_abbrev(shapes, 3)}")
    for k in unexpected:
        sd.pop(k)
    model.load_state_dict(sd, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return LoadReport(missing_allowed=missing, unexpected_allowed=unexpected)


def load_pretrained(path: str | os.PathLike, model_cls, *, config: ModelConfig | None = None,
                    allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = (),
                    trust: bool = False, **model_kwargs):
    """Build ``model_cls`` and load weights from a bertforge file, an HF directory or an NGC file.

    ``config`` is needed for NGC files (they carry none); otherwise the checkpoint's config is
    used, and a given config must agree with it on the architecture.
    Returns (model, LoadReport).
    """
    sd, ckpt_config = read_state_dict(path, trust)
    if ckpt_config is None and config is None:
        raise CheckpointError(f"checkpoint {path} carries no model config; pass --config_file")
    if ckpt_config is not None and config is not None:
        a, b = ckpt_config.to_dict(), config.to_dict()
        arch = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings")
        diff = [k for k in arch if a[k] != b[k]]
        if pad_vocab_size(a["vocab_size"]) != pad_vocab_size(b["vocab_size"]):
            diff.append("vocab_size")  # beyond padding: rows would be cut off or made up
        if diff:
            raise CheckpointError(f"checkpoint {path} was made for another config: "
                                  + ", ".join(f"{k} {a[k]} vs {b[k]}" for k in diff))
    cfg = config if config is not None else ckpt_config
    model = model_cls(cfg, **model_kwargs)
    report = load_state_dict_strict(model, normalize_state_dict(sd, model), source=f"checkpoint {path}",
                                    allow_missing=allow_missing, allow_unexpected=allow_unexpected)
    return model, report


_PRETRAINING_HEADS = ("cls.*",)


def load_task_model(init_checkpoint: str | Path, model_cls, *, head: tuple[str, ...], training: bool,
                    config_file: str | Path | None = None, drop: tuple[str, ...] = (), **model_kwargs):
    """The task model with weights from ``init_checkpoint`` (any format ``load_pretrained`` reads).

    Args:
        head: name patterns of the task head (``qa_outputs.*``, ``classifier.*``). When
            ``training`` they may be missing (freshly initialised); for prediction only they
            must be in the checkpoint, else CheckpointError ("missing keys: ...").
        drop: further checkpoint entries this model has no place for (e.g. the pooler for QA).
            Pretraining heads (``cls.*``) are always dropped.
        config_file: a bert_config.json; needed for NGC files, else checked against the
            checkpoint's own config.

    Returns (model, LoadReport).
    """
    if not Path(init_checkpoint).exists():
        raise ConfigError(f"--init_checkpoint {init_checkpoint}: no such file or directory")
    config = ModelConfig.from_json_file(config_file) if config_file else None
    allow_missing = head if training else ()
    other_heads = ("qa_outputs.*", "classifier.*")
    allow_unexpected = _PRETRAINING_HEADS + drop + tuple(h for h in other_heads if h not in head)
    try:
        return load_pretrained(init_checkpoint, model_cls, config=config, allow_missing=allow_missing,
                               allow_unexpected=allow_unexpected, **model_kwargs)
    except CheckpointError as e:
        if not training and any(h.rstrip("*") in str(e) for h in head):
            raise CheckpointError(f"{e}: it has no fine-tuned {model_cls.__name__} head; fine-tune it "
                                  "first (--do_train)") from None
        raise


def to_ngc_state_dict(model: nn.Module, pad_to: int = 8) -> dict[str, torch.Tensor]:
    """Our weights under NVIDIA's modeling.py names: ``dense_act`` for the fused
    linear+activation layers (intermediate, pooler, MLM transform), no
    ``cls.predictions.decoder.bias`` (NVIDIA's decoder has none; its bias is
    ``cls.predictions.bias``), vocab rows padded to a multiple of ``pad_to`` (30528).
    The result loads with ``strict=True`` into NVIDIA's model of the same head."""
    out = {}
    for k, v in model.state_dict().items():
        if k == "cls.predictions.decoder.bias":
            continue  # tied to cls.predictions.bias; NVIDIA's decoder is bias-free
        if (".intermediate.dense." in k or "cls.predictions.transform.dense." in k
                or k.startswith(("bert.pooler.dense.", "pooler.dense."))):
            k = k.replace(".dense.", ".dense_act.")
        if k in ("bert.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight",
                 "cls.predictions.decoder.weight", "cls.predictions.bias"):
            n = pad_vocab_size(v.shape[0], pad_to)
            if n != v.shape[0]:
                v = torch.cat([v, v.new_zeros((n - v.shape[0], *v.shape[1:]))], 0)
        out[k] = v.clone()
    return out


def export_hf(model: nn.Module, out_dir: str | os.PathLike, vocab_file: str | os.PathLike | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``vocab.txt``) that
    ``transformers.<Class>.from_pretrained`` loads. Each file is written atomically."""
    from safetensors.torch import save_file

    out = ensure_dir(out_dir, "export directory")
    hf_config = model.config.to_hf_dict()
    hf_config["architectures"] = [type(model).__name__]
    if hasattr(model, "num_labels"):
        hf_config["id2label"] = {str(i): f"LABEL_{i}" for i in range(model.num_labels)}
        hf_config["label2id"] = {f"LABEL_{i}": i for i in range(model.num_labels)}
    # safetensors refuses aliased tensors: store every entry as its own contiguous copy.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    if vocab_file is not None:
        src = Path(vocab_file)
        if not src.is_file():
            raise UserError(f"vocab file {src} does not exist")
        with atomic_path(out / "vocab.txt") as tmp:
            tmp.write_bytes(src.read_bytes())
    return out


def save_bertforge(model: nn.Module, path: str | os.PathLike, **extra) -> Path:
    """A bertforge weights file: ``{"model": state_dict, "config": dict, **extra}`` (atomic)."""
    obj = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
           "config": model.config.to_dict(), **extra}
    with atomic_path(path) as tmp:
        torch_save(obj, tmp)
    return Path(path)
