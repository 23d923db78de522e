"""Turning instruction records into model inputs: the chat template (or an Alpaca prompt for
models without one), tokenisation, loss masking of the prompt, truncation and padding.

The loss is on the response tokens (and the end-of-turn token) only, unless `loss_on_prompt`.
An example longer than `max_length` keeps its whole prompt and a truncated response; one whose
prompt alone fills `max_length` is dropped (it would teach nothing). Both are counted.
Packing lives in cft/data/packing.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cft.data.records import Example

IGNORE = -100

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def user_message(ex: Example) -> str:
    return f"{ex.instruction}\n\n{ex.input}" if ex.input else ex.instruction


def render_prompt(tokenizer, ex: Example) -> str:
    """The text the model sees before its response."""
    if getattr(tokenizer, "chat_template", None):
        from jinja2.exceptions import TemplateError

        user = [{"role": "user", "content": user_message(ex)}]
        if ex.system:
            try:
                return tokenizer.apply_chat_template(
                    [{"role": "system", "content": ex.system}, *user], tokenize=False, add_generation_prompt=True
                )
            except TemplateError:
                # Some templates (Mistral-Instruct v0.1/v0.2) reject a system turn: prepend it to the user's.
                user = [{"role": "user", "content": f"{ex.system}\n\n{user_message(ex)}"}]
        return tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    system = f"{ex.system}\n\n" if ex.system else ""
    return system + ALPACA_PROMPT.format(instruction=user_message(ex))


@dataclass
class TokenizeStats:
    total: int = 0
    truncated: int = 0
    dropped: int = 0  # prompt alone filled max_length, so no response token would be learned
    tokens: int = 0  # tokens of the kept examples
    padding_fraction: float | None = None  # share of padding in the epoch's micro-batches, padded
    padding_fraction_packed: float | None = None  # the same packed (rows as wide as the longest example)
    packing: bool = False


def tokenize_example(tokenizer, ex: Example, max_length: int, loss_on_prompt: bool = False) -> tuple[dict | None, bool]:
    """Returns ({input_ids, labels} or None if dropped, whether it was truncated)."""
    prompt = tokenizer(render_prompt(tokenizer, ex), add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        prompt = [tokenizer.bos_token_id] + prompt
    response = tokenizer(ex.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt) >= max_length:
        return None, True
    truncated = len(prompt) + len(response) > max_length
    response = response[: max_length - len(prompt)]
    labels = (list(prompt) if loss_on_prompt else [IGNORE] * len(prompt)) + response
    return {"input_ids": prompt + response, "labels": labels}, truncated


def tokenize_examples(
    tokenizer, examples: Sequence[Example], max_length: int, loss_on_prompt: bool = False
) -> tuple[list[dict], TokenizeStats]:
    stats = TokenizeStats(total=len(examples))
    out = []
    for ex in examples:
        item, truncated = tokenize_example(tokenizer, ex, max_length, loss_on_prompt)
        stats.truncated += int(truncated and item is not None)
        if item is None:
            stats.dropped += 1
        else:
            out.append(item)
            stats.tokens += len(item["input_ids"])
    return out, stats


class PadCollator:
    """Pads a batch to its longest sequence (right padding; padded labels are ignored)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
