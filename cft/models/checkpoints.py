"""Loading base and Instruct checkpoints: a hub id, a local folder, or a GGUF file in one.

Errors name the checkpoint and say what to do (for instance, pass a local path when offline).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cft.errors import CftError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def resolve_dtype(dtype: str) -> torch.dtype:
    """'auto' means bf16 on a GPU that supports it and fp32 everywhere else (CPU bf16 is slow)."""
    import torch

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


def precision(dtype: str) -> str:
    """`dtype` (auto included) as the short name of what it resolves to on this machine: bf16, fp16 or fp32."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(resolve_dtype(dtype), "fp32")


# What transformers reads as a model's weights, in a folder saved with save_pretrained.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def local_path(ref: str, what: str) -> Path | None:
    """The local path `ref` names, or None for a hub id. A ref that can only be a path (it starts with
    '.', '/' or '~', or is not a valid hub id such as `a/b/c`) and does not exist is an error naming it."""
    local = Path(ref).expanduser()
    if local.exists():
        return local
    looks_local = ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") > 1
    if not looks_local:
        try:
            from huggingface_hub.utils import validate_repo_id

            validate_repo_id(ref)
        except Exception:  # the hub client's validation error: this is no hub id, so it was meant as a path
            looks_local = True
    if looks_local:
        raise CftError(f"{what} path does not exist: {local.absolute()}")
    return None


def check_folder(folder: Path, what: str, *, gguf_file: str | None = None) -> None:
    """A local checkpoint folder must hold what loading it reads: config.json and model weights (or the
    GGUF file named), every shard of a sharded index, and safetensors files whose header and size agree.
    Reads headers only, so it is cheap for any size; the error names the file and what is wrong with it."""
    if not folder.is_dir():
        if gguf_file:
            raise CftError(f"{what} {folder} is not a folder (model.gguf_file={gguf_file} must be a file in a folder)")
        raise CftError(f"{what} {folder} is a file, not a checkpoint folder saved with save_pretrained")
    if gguf_file:
        if not (folder / gguf_file).is_file():
            raise CftError(f"{what}: no GGUF file {gguf_file} in {folder}")
        return
    if not (folder / "config.json").is_file():
        raise CftError(
            f"{what} folder {folder} has no config.json: it is not a checkpoint saved with save_pretrained "
            "(or give model.gguf_file=<file> for a GGUF file in it)"
        )
    present = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        held = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise CftError(
            f"{what} folder {folder} has no model weights: none of {', '.join(WEIGHT_FILES)} is there (it holds {held})"
        )
    from cft.run.artifacts import safetensors_problem

    files = []
    for name in present:
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CftError(f"{what}: {folder / name} cannot be read ({type(exc).__name__}); truncated?") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CftError(f"{what}: {folder / name} lists {len(missing)} missing shard(s): {', '.join(missing[:3])}")
            files += [folder / s for s in shards]
        else:
            files.append(folder / name)
    for path in files:
        if path.suffix == ".safetensors":
            problem = safetensors_problem(path)
            if problem:
                raise CftError(f"{what}: {path} cannot be read: {problem}")
        elif path.stat().st_size == 0:
            raise CftError(f"{what}: {path} is empty")


def load_model(
    ref: str, *, gguf_file: str | None = None, dtype: str = "auto", what: str = "checkpoint", setting: str = "model.base"
):
    """Load a causal LM and its tokenizer from a hub id or a local folder (optionally a GGUF file in it).

    A GGUF checkpoint is dequantised into a plain model that can be trained and saved.
    Errors name the checkpoint (the file, for a local folder) and say what to do (for instance pass a
    local path when offline, with `setting`, the key that points at it).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if ref is None:
        raise CftError(f"No {what} is configured (set it in the model config: {setting}=<hub id or path>)")
    ref = str(ref)
    local = local_path(ref, what)
    if local is not None:
        check_folder(local, what, gguf_file=gguf_file)
    kwargs: dict[str, Any] = {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=resolve_dtype(dtype), **kwargs)
    except CftError:
        raise
    except Exception as exc:  # transformers, tokenizers and safetensors raise many types; a local folder: name it
        if local is not None:
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CftError(f"Could not load {what} from {local}: {type(exc).__name__}: {cause[:300]}") from exc
        if not isinstance(exc, (OSError, ValueError)):
            raise
        hint = (
            "It is not a local folder and could not be fetched from the hub"
            + (" (HF_HUB_OFFLINE=1 is set)" if _offline() else "")
            + f": download it once and pass its local path instead ({setting}=/path/to/{Path(ref).name})."
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


def read_config(ref: str, *, gguf_file: str | None = None, what: str = "checkpoint", setting: str = "model.base"):
    """The model config alone (no weights), so a checkpoint that cannot load fails before any training.
    A local folder is checked as loading would read it (`check_folder`: config, weights, headers)."""
    from transformers import AutoConfig

    local = local_path(str(ref), what)
    if local is not None:
        check_folder(local, what, gguf_file=gguf_file)
    gguf_key = None
    if local is not None and gguf_file:
        stat = (local / gguf_file).stat()
        gguf_key = (str((local / gguf_file).resolve()), stat.st_mtime_ns, stat.st_size)
        if gguf_key in _GGUF_CONFIGS:
            return copy.deepcopy(_GGUF_CONFIGS[gguf_key])
    try:
        config = AutoConfig.from_pretrained(str(ref), **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as exc:
        if local is not None:
            raise CftError(f"Could not read the config of {what} {local}: {str(exc).splitlines()[0]}") from exc
        raise CftError(
            f"Could not load the config of {what} '{ref}' (no local folder {Path(str(ref)).absolute()}; as a hub id: "
            f"{str(exc).splitlines()[0]})\n"
            f"Offline? Download the checkpoint and pass its local path ({setting}=/path/to/{Path(str(ref)).name})."
        ) from exc
    if gguf_key is not None:
        _GGUF_CONFIGS[gguf_key] = copy.deepcopy(config)
    return config


# A GGUF file's config, by (file, mtime, size): reading it parses all of the file's metadata (the tokenizer's
# vocabulary included), about 2 s of CPU for SmolLM2-135M, and a run asks for it up to four times (the
# preflight's check and shape, the recipe's); each caller gets its own copy.
_GGUF_CONFIGS: dict[tuple[str, int, int], Any] = {}


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def num_layers(model) -> int:
    return int(model.config.num_hidden_layers)
