"""Batched greedy (or sampled) generation for generative replay and generative evaluations.

Prompts are sorted by length so that each batch pads little, generated with the KV cache, and
returned in the caller's order. Decoding stops at any of `stop_token_ids` (the model's generation
config EOS ids, the tokenizer's EOS and the chat template's end of turn) or after `max_new_tokens`;
`return_finished=True` also says which replies reached a stop token (the others hit the cap). With
`sharded=True` and several ranks, the batches are dealt out to the ranks (each batch exactly as one
rank would make it, so the outputs are those of one rank) and every rank gets all outputs back.

Throughput levers (strategy options of gr5/gr10; bench/generation.py measures each against one prompt at a
time): `batch_size`; `sort_by_length` (on by default: a batch of similar lengths pads little);
`cache="static"`, transformers' static KV cache (preallocated to prompt width + max_new_tokens, no
reallocation per token), and `"static_compiled"`, the same with transformers' own compiled decoding step
(it compiles on CUDA only: on the CPU it runs as `static`); `width_multiple` rounds each batch's prompt width
up, so a static cache's shape, and a compiled step's graph, repeats from batch to batch. None of them
changes greedy outputs (tests/test_generate.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from tqdm.auto import tqdm

from cft.errors import ConfigError

CACHES = ("dynamic", "static", "static_compiled")


def _no_grad(fn):
    """torch.no_grad() around `fn`, with torch imported at the call (config checks import this module, not torch)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


@_no_grad
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    desc: str = "generate",
    progress: bool = True,
    return_finished: bool = False,
    sharded: bool = False,
    sort_by_length: bool = True,
    cache: str = "dynamic",
    width_multiple: int = 1,
) -> list[str] | tuple[list[str], list[bool]]:
    """Generate one completion per prompt (prompt text already formatted for the model); with
    `return_finished`, also whether each one ended at a stop token rather than at the cap; `sharded`: every
    rank calls this with the same prompts and generates its share of the batches (see the module docstring)."""
    import torch

    from cft.data.format import stop_token_ids
    from cft.training import distributed

    if cache not in CACHES:
        raise ConfigError(f"generation cache={cache!r} is not one of {', '.join(CACHES)}")
    if not isinstance(width_multiple, int) or width_multiple < 1:
        raise ConfigError(f"generation width_multiple={width_multiple!r} must be a positive integer")

    stops = stop_token_ids(tokenizer, model)
    rank, world = (distributed.rank(), distributed.world_size()) if sharded else (0, 1)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = list(range(len(prompts)))
    if sort_by_length:
        order.sort(key=lambda i: len(encoded[i]), reverse=True)
    speed = {} if cache == "dynamic" else {"cache_implementation": "static", "disable_compile": cache == "static"}
    outputs: list[str | None] = [None] * len(prompts)
    finished = [False] * len(prompts)
    pad_id = tokenizer.pad_token_id
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    for number, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start : start + batch_size]
        if number % world != rank:
            continue
        width = -(-max(len(encoded[i]) for i in idx) // width_multiple) * width_multiple
        # Left padding keeps every prompt's last token at the same position for decoding.
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = encoded[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=stops,
            **sampling,
            **speed,
        )
        for row, i in enumerate(idx):
            outputs[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
            finished[i] = any(t in stops for t in out[row, width:].tolist())
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    if world > 1:
        mine = {i: (o, finished[i]) for i, o in enumerate(outputs) if o is not None}
        for part in distributed.all_gather(mine):
            for i, (o, done) in part.items():
                outputs[i], finished[i] = o, done
    if return_finished:
        return outputs, finished  # type: ignore[return-value]
    return outputs  # type: ignore[return-value]
