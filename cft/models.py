"""Loading base and Instruct checkpoints (hub id, local folder or GGUF file), and tiny models built in code.

The demo and the tests never download anything: `build_tokenizer` makes a byte-level tokenizer
with a chat template, and `build_model` a small Llama-architecture model from a config dict.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from cft.errors import CftError

log = logging.getLogger(__name__)

# Role markers of the built-in chat template; each is one special token.
SPECIAL_TOKENS = ["<|end|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer():
    """A byte-level tokenizer (256 byte symbols, no merges) with a chat template: any text in any
    script tokenizes without unknown tokens, which is all the demo languages need."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>", pad_token="<|pad|>")
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[2:]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(architecture: dict[str, Any], tokenizer, seed: int = 0):
    """A Llama-architecture causal LM with the given shape, randomly initialised from `seed`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        **architecture,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_built_model(out_dir: str | Path, architecture: dict[str, Any], seed: int = 0) -> Path:
    """Build a tokenizer and a model from `architecture` and save both to `out_dir`."""
    tokenizer = build_tokenizer()
    model = build_model(architecture, tokenizer, seed=seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def resolve_dtype(dtype: str) -> torch.dtype:
    """'auto' means bf16 on a GPU that supports it and fp32 everywhere else (CPU bf16 is slow)."""
    if dtype == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[dtype]
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


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def num_layers(model) -> int:
    return int(model.config.num_hidden_layers)
