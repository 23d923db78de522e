"""Packing: the examples of a micro-batch in as few rows as fit, without attention across examples.

`PackingCollator` builds on transformers' `DataCollatorWithFlattening`: it concatenates the
examples of a row with no padding between them, restarts `position_ids` at 0 for every example
and returns no `attention_mask`. transformers' mask builder (`masking_utils.find_packed_sequence_indices`) then
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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import DataCollatorWithFlattening


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit decreasing: the indices of `lengths`, placed into rows of at most `width` tokens
    (an example longer than `width` gets a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([i])
            room.append(width - lengths[i])
        else:
            rows[row].append(i)
            room[row] -= lengths[i]
    return rows


class PackingCollator(DataCollatorWithFlattening):
    """Micro-batch -> rows {input_ids, labels, position_ids} without attention across examples.

    By default the examples go first-fit-decreasing into rows as wide as the micro-batch's longest
    example, and the rows are padded to that width. Without a variable-length attention kernel
    (CPU, sdpa, eager) the block-diagonal mask is computed in full, so attention costs
    rows x width^2: one row of all the tokens (width = the sum) would cost more than the padded
    batch. Rows no wider than the longest example never cost more than padding, in attention or in
    the linear layers, and hold most of the padding's slots with real tokens.

    `single_row=True` puts the whole micro-batch in one row with no padding at all: the right choice
    for variable-length kernels (flash-attention reads the example boundaries from position_ids and
    skips the masked blocks), which fit() picks by the model's attention implementation.
    """

    def __init__(self, pad_id: int = 0, single_row: bool = False, width_multiple: int = 1):
        super().__init__(return_position_ids=True, separator_id=-100, return_tensors="pt")
        self.pad_id, self.single_row = pad_id, single_row
        # Rows padded to a multiple of this width (train.pack_width_multiple): fewer distinct shapes, so a
        # kernel that plans per shape (cuDNN's attention) plans a few times instead of at every step.
        self.width_multiple = max(int(width_multiple), 1)

    def __call__(self, features, return_tensors=None, separator_id=None) -> dict[str, torch.Tensor]:
        features = [{"input_ids": list(f["input_ids"]), "labels": list(f["labels"])} for f in features]
        lengths = [len(f["input_ids"]) for f in features]
        rows = [list(range(len(features)))] if self.single_row else pack_rows(lengths, max(lengths))
        packed = [
            super(PackingCollator, self).__call__(
                [features[i] for i in row], return_tensors=return_tensors, separator_id=separator_id
            )
            for row in rows
        ]
        width = max(p["input_ids"].shape[1] for p in packed)
        width = -(-width // self.width_multiple) * self.width_multiple
        if len(packed) == 1 and packed[0]["input_ids"].shape[1] == width:
            return packed[0]
        out = {"input_ids": [], "labels": [], "position_ids": []}
        for p in packed:
            extra = width - p["input_ids"].shape[1]
            # Padding at the end of a row is a sequence of its own (positions restart at 0): no real
            # token attends to it (causal), and its labels are ignored.
            out["input_ids"].append(torch.cat([p["input_ids"][0], torch.full((extra,), self.pad_id, dtype=torch.long)]))
            out["labels"].append(torch.cat([p["labels"][0], torch.full((extra,), -100, dtype=torch.long)]))
            out["position_ids"].append(torch.cat([p["position_ids"][0], torch.arange(extra, dtype=torch.long)]))
        return {k: torch.stack(v) for k, v in out.items()}


def padding_fraction(
    lengths: Sequence[int], batches: Sequence[Sequence[int]], packed: bool = False, single_row: bool = False
) -> float:
    """Share of the token slots of these micro-batches that are padding: padded to the longest
    example (PadCollator), or packed (PackingCollator: rows as wide as the longest example; a
    single row has none)."""
    real = sum(lengths[i] for b in batches for i in b)
    if real == 0 or (packed and single_row):
        return 0.0
    slots = 0
    for b in batches:
        if b:
            longest = max(lengths[i] for i in b)
            n_rows = len(pack_rows([lengths[i] for i in b], longest)) if packed else len(b)
            slots += n_rows * longest
    return 1.0 - real / slots


def uses_varlen_attention(model) -> bool:
    """Whether the model's attention kernel skips the masked blocks of a packed row by itself
    (flash-attention's variable-length path), so one row per micro-batch costs nothing extra."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    return "flash" in impl


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
