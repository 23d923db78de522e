"""Turning instruction records into model inputs: the chat template (or an Alpaca prompt for
models without one), tokenisation, loss masking of the prompt, truncation and padding.

The loss is on the response tokens (and the end-of-turn token) only, unless `loss_on_prompt`.
Every response ends with the chat template's end-of-turn token (`end_of_turn_id`: Llama-3's
`<|eot_id|>`, ChatML's `<|im_end|>`), which is what the model emits at the end of a reply at
inference; the tokenizer's EOS only where the template has none (or there is no template).
An example longer than `max_length` keeps its whole prompt and a truncated response; one whose
prompt alone fills `max_length` is dropped (it would teach nothing). Both are counted.
Packing lives in cft/data/packing.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cft.data.records import Example

if TYPE_CHECKING:
    import torch

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


_MARK = "CFT-REPLY-MARK"  # a reply no template changes, to find what the template writes after it


def end_of_turn(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant reply (Llama-3's
    `<|eot_id|>`, ChatML's `<|im_end|>`, the built-in `<|end|>`), or None: no template, or one that
    closes a reply with plain text. Read by rendering a reply, so no template is special-cased."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    from jinja2.exceptions import TemplateError

    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False)
    except TemplateError:
        return None
    after = text[text.rfind(_MARK) + len(_MARK) :] if _MARK in text else ""
    special = sorted((t for t in tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()) if t), key=len, reverse=True)
    return next((t for t in special if after.lstrip(" ").startswith(t)), None)


def end_of_turn_id(tokenizer) -> int:
    """The token that ends every training response: the template's end of turn, else EOS."""
    token = end_of_turn(tokenizer)
    return tokenizer.convert_tokens_to_ids(token) if token is not None else tokenizer.eos_token_id


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Where generation stops: the model's generation-config EOS id(s), the tokenizer's EOS and the
    template's end of turn (so a chat model stops at its end of turn, whatever EOS says)."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for x in [*(configured if isinstance(configured, (list, tuple)) else [configured]), tokenizer.eos_token_id]:
        if x is not None and int(x) not in ids:
            ids.append(int(x))
    eot = end_of_turn_id(tokenizer)
    if eot is not None and eot not in ids:
        ids.append(int(eot))
    return ids


@dataclass
class TokenizeStats:
    total: int = 0
    truncated: int = 0
    dropped: int = 0  # prompt alone filled max_length, so no response token would be learned
    tokens: int = 0  # tokens of the kept examples
    padding_fraction: float | None = None  # share of padding in the epoch's micro-batches, padded
    padding_fraction_packed: float | None = None  # the same packed (rows as wide as the longest example)
    packing: bool = False


def tokenize_example(
    tokenizer, ex: Example, max_length: int, loss_on_prompt: bool = False, end_id: int | None = None
) -> tuple[dict | None, bool]:
    """Returns ({input_ids, labels} or None if dropped, whether it was truncated). `end_id` closes
    the response (default: `end_of_turn_id`; pass it when tokenizing many examples)."""
    prompt = tokenizer(render_prompt(tokenizer, ex), add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        prompt = [tokenizer.bos_token_id] + prompt
    response = tokenizer(ex.output, add_special_tokens=False)["input_ids"] + [
        end_of_turn_id(tokenizer) if end_id is None else end_id
    ]
    if len(prompt) >= max_length:
        return None, True
    truncated = len(prompt) + len(response) > max_length
    response = response[: max_length - len(prompt)]
    labels = (list(prompt) if loss_on_prompt else [IGNORE] * len(prompt)) + response
    return {"input_ids": prompt + response, "labels": labels}, truncated


def tokenize_examples(
    tokenizer, examples: Sequence[Example], max_length: int, loss_on_prompt: bool = False
) -> tuple[list[dict], TokenizeStats]:
    """Tokenized examples; each item's `example` is its position in `examples` (dropped ones leave gaps),
    so the training loop can say which examples it fed (Strategy.on_examples_trained)."""
    stats = TokenizeStats(total=len(examples))
    out = []
    end_id = end_of_turn_id(tokenizer)
    for position, ex in enumerate(examples):
        item, truncated = tokenize_example(tokenizer, ex, max_length, loss_on_prompt, end_id)
        if item is not None:
            item["example"] = position
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
        import torch

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
