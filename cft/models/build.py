"""Models built in code, with no download: a byte-level tokenizer with a chat template
(`build_tokenizer`) and a small Llama-architecture model from a config dict (`build_model`).
The demo and the tests use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    import torch

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
