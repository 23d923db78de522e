"""The one training loop, used by every phase and every strategy.

AdamW, cosine (or linear / constant) schedule with linear warmup, a global batch made of
micro-batches and gradient accumulation, bf16 autocast where the hardware has it, DeepSpeed
ZeRO through accelerate when a DeepSpeed config is given, resumable checkpoints, and a stop on
a non-finite loss. A strategy only ever acts through its hooks:

    hooks.penalty(model, batch)          -> extra loss term or None
    hooks.on_before_optimizer_step(model)   gradients are complete here (e.g. CoFiTune masks)

The data order is a pure function of (seed, epoch), so a resumed run sees the same batches as
an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from cft.errors import ConfigError, CftError

log = logging.getLogger(__name__)


class TrainingError(CftError):
    """Training cannot go on (e.g. the loss became NaN)."""


@dataclass
class TrainSettings:
    lr: float
    epochs: float = 1.0
    max_steps: int | None = None  # wins over epochs when set
    global_batch_size: int = 16
    micro_batch_size: int = 8
    warmup_steps: int = 0
    scheduler: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.0
    adam_betas: Sequence[float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    precision: str = "auto"  # auto (bf16 on GPUs that have it) | bf16 | fp16 | no
    deepspeed: Mapping[str, Any] | None = None  # a DeepSpeed config dict, or None
    checkpoint_every: int = 0  # optimizer steps between resumable checkpoints (0 = never)
    keep_checkpoints: int = 1
    log_every: int = 10
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **overrides) -> "TrainSettings":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in dict(cfg).items() if k in known}
        return cls(**{**values, **overrides})


@dataclass
class TrainStats:
    steps: int
    epochs_done: float
    examples: int
    tokens: int
    seconds: float
    final_loss: float
    resumed_from: int | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class NoHooks:
    def penalty(self, model, batch):
        return None

    def on_before_optimizer_step(self, model):
        pass


def _precision(setting: str) -> str:
    if setting == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if setting not in ("bf16", "fp16", "no"):
        raise ConfigError(f"train.precision={setting!r} is not one of auto, bf16, fp16, no")
    return setting


def _schedule(optimizer, kind: str, warmup: int, total: int):
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    if kind == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total)
    if kind == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    if kind == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    raise ConfigError(f"train.scheduler={kind!r} is not one of cosine, linear, constant")


def _epoch_batches(n: int, micro: int, per_step: int, seed: int, epoch: int) -> list[list[int]]:
    """Micro-batches of one epoch, in an order fixed by (seed, epoch); the tail that does not fill
    a whole optimizer step (on every rank) is left out so that all ranks step together."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    batches = [perm[i : i + micro] for i in range(0, n, micro)]
    return batches[: len(batches) // per_step * per_step]


def _latest_checkpoint(ckpt_root: Path | None) -> Path | None:
    if ckpt_root is None or not ckpt_root.exists():
        return None
    done = [p for p in ckpt_root.glob("step-*") if (p / "DONE").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def train_phase(
    model,
    dataset: Sequence[Mapping[str, Any]],
    *,
    collator: Callable[[list], dict],
    settings: TrainSettings,
    hooks=None,
    phase: str = "train",
    checkpoint_dir: str | Path | None = None,
    log_fn: Callable[[dict], None] | None = None,
):
    """Train `model` in place on tokenized examples; returns (model, TrainStats).

    The returned model is the plain (unwrapped) module with the trained weights.
    """
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    hooks = hooks or NoHooks()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_rank = settings.global_batch_size // world
    if settings.global_batch_size % world or per_rank % min(settings.micro_batch_size, per_rank):
        raise ConfigError(
            f"train.global_batch_size={settings.global_batch_size} must be a multiple of "
            f"world size ({world}) x train.micro_batch_size ({settings.micro_batch_size})"
        )
    micro = min(settings.micro_batch_size, per_rank)
    accum = per_rank // micro

    ds_plugin = None
    if settings.deepspeed:
        ds_config = json.loads(json.dumps(dict(settings.deepspeed)))  # plain, mutable copy
        ds_config.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum,
                         train_batch_size=settings.global_batch_size)
        if settings.max_grad_norm:
            ds_config["gradient_clipping"] = settings.max_grad_norm
        ds_plugin = DeepSpeedPlugin(hf_ds_config=ds_config)
    accelerator = Accelerator(
        gradient_accumulation_steps=accum,
        mixed_precision=_precision(settings.precision) if not settings.deepspeed else "no",
        deepspeed_plugin=ds_plugin,
    )
    rank, world = accelerator.process_index, accelerator.num_processes

    per_step = accum * world
    n_batches_epoch = len(_epoch_batches(len(dataset), micro, per_step, settings.seed, 0))
    steps_per_epoch = n_batches_epoch // per_step
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{phase}: {len(dataset)} training examples do not fill one global batch of "
            f"{settings.global_batch_size}; lower train.global_batch_size or add data"
        )
    total = int(settings.max_steps) if settings.max_steps else math.ceil(settings.epochs * steps_per_epoch)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{phase}: the strategy left no trainable parameter")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, betas=tuple(settings.adam_betas), eps=settings.adam_eps,
    )
    scheduler = _schedule(optimizer, settings.scheduler, settings.warmup_steps, total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    engine = model if settings.deepspeed else None

    ckpt_root = Path(checkpoint_dir) if checkpoint_dir else None
    step = 0
    resumed_from = None
    latest = _latest_checkpoint(ckpt_root)
    if latest is not None:
        accelerator.load_state(str(latest))
        step = json.loads((latest / "state.json").read_text())["step"]
        resumed_from = step
        log.info("%s: resuming from checkpoint %s (step %d of %d)", phase, latest, step, total)

    model.train()
    device = accelerator.device
    tokens = examples = 0
    loss_sum, loss_count, last_loss = 0.0, 0, float("nan")
    start = time.time()
    bar = tqdm(total=total, initial=step, desc=phase, disable=not accelerator.is_main_process, dynamic_ncols=True)
    while step < total:
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        batches = _epoch_batches(len(dataset), micro, per_step, settings.seed, epoch)
        mine = batches[step_in_epoch * per_step :][rank::world]
        for i, idx in enumerate(mine):
            batch = {k: v.to(device) for k, v in collator([dataset[j] for j in idx]).items()}
            loss = model(**batch).loss
            extra = hooks.penalty(accelerator.unwrap_model(model), batch)
            if extra is not None:
                loss = loss + extra
            if not torch.isfinite(loss):
                raise TrainingError(f"{phase}: loss is {loss.item()} at step {step + 1} (epoch {epoch}); stopping")
            loss_sum += loss.item()
            loss_count += 1
            tokens += int(batch["attention_mask"].sum())
            examples += len(idx)
            boundary = (i + 1) % accum == 0
            if engine is not None:
                # DeepSpeed scales by its own accumulation count and steps the schedule itself.
                engine.backward(loss)
                if boundary:
                    hooks.on_before_optimizer_step(engine.module)
                engine.step()
            else:
                accelerator.backward(loss / accum)
                if boundary:
                    hooks.on_before_optimizer_step(accelerator.unwrap_model(model))
                    if settings.max_grad_norm:
                        accelerator.clip_grad_norm_(params, settings.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            if not boundary:
                continue
            step += 1
            last_loss = loss_sum / max(loss_count, 1)
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}")
            if log_fn and accelerator.is_main_process and (step % settings.log_every == 0 or step == total):
                log_fn({f"{phase}/loss": last_loss, f"{phase}/lr": scheduler.get_last_lr()[0],
                        f"{phase}/epoch": step / steps_per_epoch, f"{phase}/step": step})
            loss_sum, loss_count = 0.0, 0
            if ckpt_root and settings.checkpoint_every and step % settings.checkpoint_every == 0 and step < total:
                _save_checkpoint(accelerator, ckpt_root, step, settings.keep_checkpoints)
            if step >= total:
                break
    bar.close()
    accelerator.wait_for_everyone()
    seconds = time.time() - start
    trained = accelerator.unwrap_model(model)
    stats = TrainStats(step, step / steps_per_epoch, examples, tokens, seconds, last_loss, resumed_from)
    log.info("%s: %d steps, %d tokens in %.1fs (%.0f tokens/s), final loss %.4f", phase, step, tokens, seconds, stats.tokens_per_second, last_loss)
    _release(accelerator)
    return trained, stats


def _save_checkpoint(accelerator, root: Path, step: int, keep: int) -> None:
    """Write a resumable checkpoint; `DONE` is written last, so a kill mid-save leaves the previous one usable."""
    target = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "state.json").write_text(json.dumps({"step": step}))
        (tmp / "DONE").write_text("")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        done = sorted((p for p in root.glob("step-*") if (p / "DONE").exists()), key=lambda p: int(p.name.split("-")[1]))
        for old in done[: max(len(done) - max(keep, 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _release(accelerator) -> None:
    """Accelerate keeps process-wide state; reset it so the next phase can configure its own."""
    from accelerate.state import AcceleratorState, GradientState

    accelerator.free_memory()
    AcceleratorState._reset_state()
    GradientState._reset_state()


def fit(
    model,
    tokenizer,
    examples,
    *,
    settings: TrainSettings,
    max_length: int,
    loss_on_prompt: bool = False,
    hooks=None,
    phase: str = "train",
    checkpoint_dir: str | Path | None = None,
    log_fn: Callable[[dict], None] | None = None,
):
    """Format and tokenize instruction examples, then train on them. Returns (model, TrainStats, TokenizeStats)."""
    from cft.data.format import PadCollator, tokenize_examples

    tokenized, tok_stats = tokenize_examples(tokenizer, examples, max_length, loss_on_prompt)
    if tok_stats.truncated or tok_stats.dropped:
        log.warning("%s: %d of %d examples truncated to %d tokens, %d dropped (prompt alone too long)",
                    phase, tok_stats.truncated, tok_stats.total, max_length, tok_stats.dropped)
    model, stats = train_phase(model, tokenized, collator=PadCollator(tokenizer.pad_token_id), settings=settings,
                               hooks=hooks, phase=phase, checkpoint_dir=checkpoint_dir, log_fn=log_fn)
    return model, stats, tok_stats
