"""Models: loading checkpoints (hub id, folder or GGUF file), models built in code for the demo and
the tests, batched generation, and the demo base's phase-0 pre-training (`cft.models.pretrain`)."""

from cft.models.build import CHAT_TEMPLATE, SPECIAL_TOKENS, build_model, build_tokenizer, save_built_model
from cft.models.checkpoints import count_parameters, load_model, num_layers, precision, resolve_dtype

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_model",
    "build_tokenizer",
    "count_parameters",
    "load_model",
    "num_layers",
    "precision",
    "resolve_dtype",
    "save_built_model",
]
