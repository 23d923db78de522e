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
    """Micro-batch -> rows {input_ids, labels, position_ids} without attention across examples.

    With `max_row_tokens=None` the whole micro-batch is one row. With a limit (fit() passes
    train.max_length), examples are placed first-fit-decreasing into rows of at most that many
    tokens and the rows are padded to the longest row: attention without a variable-length kernel
    (CPU, sdpa) costs rows x width^2 instead of (all tokens)^2, while the padding stays small.
    """

    def __init__(self, max_row_tokens: int | None = None, pad_id: int = 0):
        super().__init__(return_position_ids=True, separator_id=-100, return_tensors="pt")
        self.max_row_tokens, self.pad_id = max_row_tokens, pad_id

    def _rows(self, features: list[dict]) -> list[list[dict]]:
        if not self.max_row_tokens:
            return [features]
        rows: list[list[dict]] = []
        room: list[int] = []
        for f in sorted(features, key=lambda f: len(f["input_ids"]), reverse=True):
            n = len(f["input_ids"])
            i = next((i for i, r in enumerate(room) if r >= n), None)
            if i is None:
                rows.append([f])
                room.append(self.max_row_tokens - n)
            else:
                rows[i].append(f)
                room[i] -= n
        return rows

    def __call__(self, features, return_tensors=None, separator_id=None) -> dict[str, torch.Tensor]:
        features = [{"input_ids": list(f["input_ids"]), "labels": list(f["labels"])} for f in features]
        packed = [super(PackingCollator, self).__call__(row, return_tensors=return_tensors, separator_id=separator_id)
                  for row in self._rows(features)]
        if len(packed) == 1:
            return packed[0]
        width = max(p["input_ids"].shape[1] for p in packed)
        out = {"input_ids": [], "labels": [], "position_ids": []}
        for p in packed:
            extra = width - p["input_ids"].shape[1]
            # Padding at the end of a row is a sequence of its own (positions restart at 0): no real
            # token attends to it (causal), and its labels are ignored.
            out["input_ids"].append(torch.cat([p["input_ids"][0], torch.full((extra,), self.pad_id, dtype=torch.long)]))
            out["labels"].append(torch.cat([p["labels"][0], torch.full((extra,), -100, dtype=torch.long)]))
            out["position_ids"].append(torch.cat([p["position_ids"][0], torch.arange(extra, dtype=torch.long)]))
        return {k: torch.stack(v) for k, v in out.items()}


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
