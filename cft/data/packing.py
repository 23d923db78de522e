"""Packing: the examples of a micro-batch as one sequence, without attention across examples.

`PackingCollator` is transformers' `DataCollatorWithFlattening`: it concatenates the micro-batch
into one row with no padding, restarts `position_ids` at 0 for every example and returns no
`attention_mask`. transformers' mask builder (`masking_utils.find_packed_sequence_indices`) then
reads the example boundaries from the position ids and builds a block-diagonal causal mask
(eager and sdpa; flash-attention reads the same position ids), so no token attends to another
example. The first label of every example is -100, so no example is trained to predict the
next one's first token. The mean loss over a packed micro-batch equals the padded one's.

transformers only looks for packed sequences when the forward pass has no KV cache: with
`config.use_cache=True` (the default of most checkpoints) a training forward creates a cache and
the examples of a packed row silently attend to each other. `no_kv_cache(model)` switches the
cache off for the training loop (fit() uses it whenever packing is on).

Models whose attention ignores `position_ids` for masking would attend across examples; the
test in tests/test_data_format.py checks the Llama/Mistral path against unpacked forward passes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from transformers import DataCollatorWithFlattening


class PackingCollator(DataCollatorWithFlattening):
    """Micro-batch -> one row {input_ids, labels, position_ids} of shape (1, total tokens)."""

    def __init__(self):
        super().__init__(return_position_ids=True, separator_id=-100, return_tensors="pt")

    def __call__(self, features, return_tensors=None, separator_id=None) -> dict[str, torch.Tensor]:
        features = [{"input_ids": list(f["input_ids"]), "labels": list(f["labels"])} for f in features]
        return super().__call__(features, return_tensors=return_tensors, separator_id=separator_id)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the token slots of these micro-batches that are padding when each is padded to its
    longest example (PadCollator). Packed (PackingCollator), a micro-batch is one row of exactly
    its tokens, so the share is 0."""
    real = sum(lengths[i] for b in batches for i in b)
    if real == 0:
        return 0.0
    slots = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return 1.0 - real / slots


@contextmanager
def no_kv_cache(model) -> Iterator[None]:
    """Set config.use_cache=False for the duration (restored afterwards, also on errors)."""
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None)
    if config is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if config is not None:
            config.use_cache = old
