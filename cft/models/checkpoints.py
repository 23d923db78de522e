"""Loading base and Instruct checkpoints: a hub id, a local folder, or a GGUF file in one.

Errors name the checkpoint and say what to do (for instance, pass a local path when offline).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from cft.errors import CftError

log = logging.getLogger(__name__)


def resolve_dtype(dtype: str) -> torch.dtype:
    """'auto' means bf16 on a GPU that supports it and fp32 everywhere else (CPU bf16 is slow)."""
    if dtype == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
            "fp16": torch.float16,
            "float16": torch.float16,
            "fp32": torch.float32,
            "float32": torch.float32,
        }[dtype]
    except KeyError:
        raise CftError(f"model.dtype={dtype!r} is not one of auto, bf16, fp16, fp32") from None


def load_model(ref: str, *, gguf_file: str | None = None, dtype: str = "auto", what: str = "checkpoint"):
    """Load a causal LM and its tokenizer from a hub id or a local folder (optionally a GGUF file in it).

    A GGUF checkpoint is dequantised into a plain model that can be trained and saved.
    Errors name the checkpoint and say what to do (for instance pass a local path when offline).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if ref is None:
        raise CftError(f"No {what} is configured (set it in the model config, e.g. model.base=<hub id or path>)")
    ref = str(ref)
    local = Path(ref).expanduser()
    if (ref.startswith((".", "/", "~")) or local.exists()) and not local.exists():
        raise CftError(f"{what} path does not exist: {local}")
    kwargs: dict[str, Any] = {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=resolve_dtype(dtype), **kwargs)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
        hint = (
            "It is not a local folder and could not be fetched from the hub"
            + (" (HF_HUB_OFFLINE=1 is set)" if offline else "")
            + f": download it once and pass its local path instead (e.g. model.base=/path/to/{Path(ref).name})."
        )
        raise CftError(f"Could not load {what} '{ref}'. {hint}\nCause: {exc}".strip()) from exc
    if gguf_file:
        # GGUF weights arrive dequantised but flagged as quantized, which blocks training and saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
    if tokenizer.pad_token is None:
        # Padding positions are masked out of the loss and attention, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def read_config(ref: str, *, gguf_file: str | None = None, what: str = "checkpoint"):
    """The model config alone (no weights), so a checkpoint that cannot load fails before any training."""
    from transformers import AutoConfig

    local = Path(str(ref)).expanduser()
    looks_local = str(ref).startswith((".", "/", "~")) or local.exists()
    if looks_local and not local.exists():
        raise CftError(f"{what} path does not exist: {local}")
    if local.is_dir() and not gguf_file and not (local / "config.json").is_file():
        raise CftError(
            f"{what} folder {local} has no config.json: it is not a checkpoint saved with save_pretrained "
            "(or give model.gguf_file=<file> for a GGUF file in it)"
        )
    if gguf_file and local.is_dir() and not (local / gguf_file).is_file():
        raise CftError(f"{what}: no GGUF file {gguf_file} in {local}")
    try:
        return AutoConfig.from_pretrained(str(ref), **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as exc:
        raise CftError(
            f"Could not load the config of {what} '{ref}': {str(exc).splitlines()[0]}\n"
            "Offline? Download the checkpoint and pass its local path (e.g. model.base=/path/to/model)."
        ) from exc


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def num_layers(model) -> int:
    return int(model.config.num_hidden_layers)
