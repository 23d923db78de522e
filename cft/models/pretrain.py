"""Phase 0: a short causal-LM pre-training of a model built in code, so the demo starts from a base
"worth the name".

The paper's base models already know the languages and the skills; fine-tuning teaches them to
follow instructions. A randomly initialised demo model knows nothing, so layer-change ranks
(LF-H2) and generative replay (GR: the Phase-1 model answers the English counterparts of the
Phase-2 instructions) would mean little. Phase 0 trains it on raw text (no chat template, loss on
every token) in every language, packed into fixed-length sequences. The result is a cached
artifact keyed by (build, pretrain spec), shared by every run that uses the same model config.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cft.errors import ConfigError

log = logging.getLogger(__name__)


def pack(token_ids: Sequence[int], seq_len: int) -> list[dict[str, list[int]]]:
    """Cut one long token stream into training sequences of exactly `seq_len` tokens (the tail that
    does not fill one is dropped); every token is a label (plain language modelling)."""
    if seq_len < 2:
        raise ConfigError(f"model.pretrain.seq_len={seq_len} must be at least 2")
    return [
        {"input_ids": list(token_ids[i : i + seq_len]), "labels": list(token_ids[i : i + seq_len])}
        for i in range(0, len(token_ids) - seq_len + 1, seq_len)
    ]


def corpus(spec: Mapping[str, Any]) -> list[str]:
    """The raw documents of a pretrain spec. `source: demo` is the only generator so far: the demo
    tasks as plain text (see cft.data.demo.raw_documents)."""
    source = spec.get("source", "demo")
    if source != "demo":
        raise ConfigError(f"model.pretrain.source={source!r}: only the built-in 'demo' corpus exists")
    from cft.data import demo

    return demo.raw_documents(
        spec["tasks"],
        spec["languages"],
        int(spec["per_task_language"]),
        int(spec.get("data_seed", 0)),
        per_document=int(spec.get("per_document", 8)),
        parallel=bool(spec.get("parallel", False)),
    )


def pretrain(
    model,
    tokenizer,
    documents: Sequence[str],
    *,
    seq_len: int,
    steps: int,
    lr: float,
    batch_size: int,
    warmup_steps: int = 0,
    seed: int = 0,
    log_fn=None,
):
    """Train `model` as a causal LM on `documents` (shuffled, joined with EOS, packed). Returns (model, TrainStats)."""
    from cft.data.format import PadCollator
    from cft.training.loop import TrainSettings, train_phase

    docs = list(documents)
    random.Random(seed).shuffle(docs)
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    data = pack(ids, seq_len)
    if len(data) < batch_size:
        raise ConfigError(
            f"model.pretrain: the corpus gives {len(data)} sequences of {seq_len} tokens, fewer than one batch of {batch_size}; raise per_task_language"
        )
    settings = TrainSettings(
        lr=lr,
        max_steps=steps,
        global_batch_size=batch_size,
        micro_batch_size=batch_size,
        warmup_steps=warmup_steps,
        scheduler="cosine",
        seed=seed,
    )
    log.info("Phase 0: pre-training on %d sequences of %d tokens for %d steps", len(data), seq_len, steps)
    return train_phase(
        model, data, collator=PadCollator(tokenizer.pad_token_id), settings=settings, phase="phase0", log_fn=log_fn
    )


def pretrained_base(architecture: Mapping[str, Any], spec: Mapping[str, Any], *, seed: int = 0):
    """Build the model of `architecture` (initialised from `seed`) and pre-train it by `spec`: (model,
    tokenizer, phase-0 statistics), in memory (the cache writes them: `save_base`). With several ranks,
    every rank calls this (they train together)."""
    from cft.models import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(dict(architecture), tokenizer, seed=seed)
    model, stats = pretrain(
        model,
        tokenizer,
        corpus(spec),
        seq_len=int(spec["seq_len"]),
        steps=int(spec["steps"]),
        lr=float(spec["lr"]),
        batch_size=int(spec["batch_size"]),
        warmup_steps=int(spec.get("warmup_steps", 0)),
        seed=int(spec.get("data_seed", 0)),
    )
    return model, tokenizer, stats


def save_base(out_dir: str | Path, model, tokenizer, stats) -> Path:
    """model + tokenizer in `out_dir`, with the phase-0 statistics in `out_dir/pretrain_stats.json`."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "pretrain_stats.json").write_text(json.dumps(asdict(stats), indent=2))
    return out_dir
