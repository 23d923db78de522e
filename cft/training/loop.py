"""The one training loop, used by every phase and every strategy.

AdamW, cosine (or linear / constant) schedule with linear warmup, a global batch made of
micro-batches and gradient accumulation, bf16 autocast where the hardware has it, DeepSpeed
ZeRO through accelerate when a DeepSpeed config is given, resumable checkpoints, and a stop on
a non-finite loss. A strategy only ever acts through its hooks:

    hooks.penalty(model, batch)          -> extra loss term or None
    hooks.on_before_optimizer_step(model)   gradients are complete here (e.g. CoFiTune masks)
    hooks.on_examples_trained(positions)    after each optimizer step: which examples it trained on
                                            (all ranks'; replayed for the steps before a resume)

The data order is a pure function of (seed, epoch), so a resumed run sees the same batches as
an uninterrupted one. A checkpoint holds the model, optimizer, scheduler, RNG states of every rank
and the step; it is written into a temporary folder and renamed with `DONE` last, so a kill or a
full disk mid-save leaves the previous one usable. A SIGTERM (SLURM preemption or time limit,
`kill`, a cloud spot reclaim) ends the current optimizer step, writes a checkpoint and exits with
status 143, so the same command resumes from that step rather than from the last periodic one.

Several ranks (torchrun / accelerate launch / SLURM tasks) split each global batch; without
DeepSpeed they train through accelerate (DDP), with a `deepspeed` config through a DeepSpeed engine
built directly (ZeRO-1/2/3, optional CPU offload). Under ZeRO-3 load the model inside
`zero3_init(settings)` so that it is created partitioned; the trained model is gathered on rank 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cft.errors import CftError, ConfigError
from cft.training import distributed

log = logging.getLogger(__name__)


class TrainingError(CftError):
    """Training cannot go on (e.g. the loss became NaN)."""


class CheckpointNotWritten(TrainingError):
    """A resumable checkpoint could not be written (a full or read-only disk)."""


class Interrupted(CftError):
    """The run was asked to stop (SIGTERM) and saved what it had; the same command resumes it."""

    exit_code = 143  # 128 + SIGTERM, what schedulers expect of a job that stopped on the signal


class _StopRequest:
    """Records a SIGTERM instead of dying on it, so the loop can stop at the next optimizer step
    with a checkpoint. A no-op outside the main thread (signal handlers can only be set there).

    After the checkpoint, the signal gets what it would have got without cft: the default action
    (terminate) becomes `Interrupted`; a handler someone else installed (submitit's, which leaves
    the requeue to SIGUSR2) is called and training goes on; an ignored signal is ignored."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.requested:
            log.warning("SIGTERM received: writing a checkpoint after this optimizer step")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def any_rank(self, world: int) -> bool:
        """True when any rank got the signal (a collective when world > 1: every rank must stop
        at the same step, or the others would wait forever in the next all-reduce)."""
        return (distributed.all_sum(float(self.requested)) > 0) if world > 1 else self.requested

    def terminates(self) -> bool:
        """After the checkpoint: True when the run should end; otherwise the previous handler ran."""
        self.requested = False
        previous = self._previous
        if callable(previous):
            previous(signal.SIGTERM, None)
            return False
        return previous is not signal.SIG_IGN


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
    checkpoint_every_minutes: float = 0.0  # wall-clock minutes between resumable checkpoints (0 = never)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (cft.training.memory)
    log_every: int = 10
    seed: int = 0
    # Throughput levers (conf/train: each one's help; bench/gpu_bench.py measures each on its own).
    sdpa_backend: str = "auto"  # auto (torch's choice) | efficient | flash | math | cudnn
    pack_width_multiple: int = 1  # packed rows padded to a multiple of this width, so shapes repeat
    adamw: str = "auto"  # auto (fused on CUDA, foreach under DeepSpeed, the plain loop on CPUs) | fused | foreach | for_loop
    sync_every_step: bool = False  # read the loss (a host sync) every step, not only at log and checkpoint steps
    tokens_per_micro_batch: int | None = None  # a token budget per micro-batch instead of micro_batch_size examples
    compile: bool = False  # torch.compile the model for the phase (not with DeepSpeed)
    compile_mode: str = "default"  # inductor's mode: default | max-autotune-no-cudagraphs
    liger: bool = False  # Liger's fused kernels (CUDA and the liger-kernel package only)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **overrides) -> TrainSettings:
        """The loop's settings from a phase's train config. Keys that shape the data rather than the loop
        (FORMAT_KEYS) are `fit`'s arguments; any other unknown key is an error, never silently dropped."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known - set(FORMAT_KEYS))
        if unknown:
            raise ConfigError(f"train: unknown setting(s) {unknown}; known: {sorted(known | set(FORMAT_KEYS))}")
        values = {k: v for k, v in dict(cfg).items() if k in known}
        return cls(**{**values, **overrides})


# Train settings that `fit` takes as arguments (how examples become token rows), not the loop.
FORMAT_KEYS = ("max_length", "loss_on_prompt", "packing", "attn_implementation")


@dataclass
class TrainStats:
    steps: int
    epochs_done: float
    examples: int
    tokens: int
    seconds: float
    final_loss: float
    resumed_from: int | None = None
    peak_memory_gb: float | None = None  # the phase's peak GPU memory allocated by torch (None off CUDA)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class NoHooks:
    def penalty(self, model, batch):
        return None

    def on_before_optimizer_step(self, model):
        pass

    def on_examples_trained(self, positions):
        pass


def step_examples(dataset: Sequence[Mapping[str, Any]], batches: list[list[int]], step_in_epoch: int, per_step: int) -> list[int]:
    """Positions (an item's `example`, else its index) of the examples one optimizer step trains on, over all ranks."""
    return [
        dataset[j].get("example", j) for idx in batches[step_in_epoch * per_step : (step_in_epoch + 1) * per_step] for j in idx
    ]


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


SDPA_BACKENDS = ("auto", "efficient", "flash", "math", "cudnn")
ADAMW_IMPLS = ("auto", "fused", "foreach", "for_loop")


def sdpa_context(backend: str, on_cuda: bool):
    """torch's SDPA restricted to one backend for the whole phase (train.sdpa_backend). On an H200,
    cuDNN's backend (torch's default for bf16 with a mask) builds a plan for every new packed width,
    about 600 ms of CPU per step (README, "GPU figures"); the memory-efficient one plans nothing.
    The math kernel stays allowed as a fallback for inputs the chosen one cannot take."""
    if backend not in SDPA_BACKENDS:
        raise ConfigError(f"train.sdpa_backend={backend!r} is not one of {', '.join(SDPA_BACKENDS)}")
    if backend == "auto":
        return contextlib.nullcontext()
    if not on_cuda and backend in ("efficient", "cudnn"):
        raise ConfigError(f"train.sdpa_backend={backend} needs a CUDA GPU; on the CPU use auto, math or flash")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    named = {
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "math": SDPBackend.MATH,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    # math stays allowed as the fallback for inputs the chosen kernel cannot take (torch picks the chosen one
    # first), so a setting never stops a run that `auto` would have trained
    return sdpa_kernel([named[backend]] if backend == "math" else [named[backend], SDPBackend.MATH])


def adamw(groups, settings: TrainSettings, *, on_cuda: bool, deepspeed: bool = False):
    """torch's AdamW in the implementation train.adamw names. `auto` is the fused kernel on CUDA: one kernel for
    all parameters instead of foreach's several per tensor list (foreach took 19 ms of a 157 ms H200 step,
    README, "GPU figures"); foreach under DeepSpeed, the path measured there; and on the CPU torch's own
    default, the plain loop. `fused` also runs on the CPU, 3.5x faster per optimizer step on the demo model
    (2.1 against 7.3 ms), but its rounding differs, so `auto` keeps the loop there: the demo's and the
    README's CPU figures stay what they were."""
    impl = settings.adamw
    if impl not in ADAMW_IMPLS:
        raise ConfigError(f"train.adamw={impl!r} is not one of {', '.join(ADAMW_IMPLS)}")
    if impl == "auto":
        impl = "foreach" if deepspeed else ("fused" if on_cuda else "for_loop")
    kind = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}[impl]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=tuple(settings.adam_betas), eps=settings.adam_eps, **kind)


COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
COMPILE_BACKEND = "inductor"  # the tests use aot_eager: the same capture, without inductor's minute of C++ on a CPU


def compile_for_training(model, settings: TrainSettings, *, deepspeed: bool) -> None:
    """torch.compile `model` in place (nn.Module.compile: its state_dict keys, checkpoints and accelerate's
    or peft's wrappers stay as they are; DDP wraps the compiled module). Shapes are dynamic after the first
    recompile, so packed widths do not compile one graph each. CUDA graphs are not offered: packed shapes
    change from step to step. `uncompile` undoes it after the phase, so evaluation and generation run eager."""
    if settings.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"train.compile_mode={settings.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
    if deepspeed:
        raise ConfigError("train.compile=true does not work with train.deepspeed; set one of them")
    kwargs = {"mode": settings.compile_mode} if COMPILE_BACKEND == "inductor" else {}
    model.compile(backend=COMPILE_BACKEND, **kwargs)


def uncompile(model) -> None:
    """Back to eager after the phase. nn.Module has no public inverse of compile(); the compiled forward lives
    in this one attribute, and eval's and generation's shapes would otherwise each compile anew."""
    if getattr(model, "_compiled_call_impl", None) is not None:
        model._compiled_call_impl = None


def apply_liger(model, on_cuda: bool) -> None:
    """Liger's fused kernels for the model's type (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy), through
    the apply function liger-kernel registers for that type, patching this model instance (its RoPE and loss
    patches act on the transformers module, so on every model of that type in this process; they compute the
    same function). Refused, with the setting named, where they cannot run: Liger's kernels are Triton, CUDA
    only, and a run that asked for them is measuring them; silently training without would mislead it."""
    if not on_cuda:
        raise ConfigError("train.liger=true needs a CUDA GPU (Liger's kernels are Triton); set train.liger=false")
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as exc:
        raise ConfigError(f"train.liger=true needs the liger-kernel package ({exc}); pip install liger-kernel") from None
    target = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model: its base
    kind = getattr(target.config, "model_type", None)
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(kind)
    if apply is None:
        raise ConfigError(
            f"train.liger=true: liger-kernel has no kernels for model type {kind!r} "
            f"(it has {', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}); set train.liger=false"
        )
    apply(model=target)
    log.info("train.liger: Liger's kernels applied to %s (%s)", type(target).__name__, kind)


def token_budget_split(idx: Sequence[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """One rank's examples of an optimizer step, longest first, in micro-batches of at most `budget`
    token slots (examples x the longest one, what a padded micro-batch holds; a packed one holds no
    more); an example longer than the budget gets a micro-batch of its own. The step's gradient is
    the same whatever the split: each micro-batch's loss is weighted by its share of the examples."""
    chunks: list[list[int]] = []
    for j in sorted(idx, key=lambda j: lengths[j], reverse=True):
        if chunks and (len(chunks[-1]) + 1) * lengths[chunks[-1][0]] <= budget:
            chunks[-1].append(j)
        else:
            chunks.append([j])
    return chunks


class _FiniteCheck:
    """The non-finite loss check without a host sync per step: the first bad step and its loss stay on
    the device until `check` reads them (at log and checkpoint steps, and at the end), so the GPU
    never waits for the host in between. The message names that step and its learning rate."""

    def __init__(self, device, phase: str, rank: int, steps_per_epoch: int):
        self.bad_step = torch.zeros((), dtype=torch.long, device=device)
        self.bad_loss = torch.zeros((), device=device)
        self.phase, self.rank, self.steps_per_epoch = phase, rank, steps_per_epoch
        self.lrs: dict[int, float] = {}
        self.checked = 0

    def update(self, loss, step: int, lr: float) -> None:
        self.lrs[step] = lr
        bad = ~torch.isfinite(loss.detach()) & (self.bad_step == 0)
        self.bad_step = torch.where(bad, step, self.bad_step)
        self.bad_loss = torch.where(bad, loss.detach().float(), self.bad_loss)

    def check(self, step: int) -> None:
        bad = int(self.bad_step.item())
        if bad:
            raise TrainingError(
                f"{self.phase}: loss is {self.bad_loss.item()} at step {bad} (epoch {(bad - 1) // self.steps_per_epoch}, "
                f"rank {self.rank}, learning rate {self.lrs.get(bad, float('nan')):.3g}; found by the check of steps "
                f"{self.checked + 1}-{step}); stopping. Lower train.lr or check the data; a rerun resumes from the "
                "last checkpoint"
            )
        self.checked = step
        self.lrs.clear()


def epoch_batches(n: int, micro: int, per_step: int, seed: int, epoch: int) -> list[list[int]]:
    """Micro-batches of one epoch, in an order fixed by (seed, epoch); the tail that does not fill
    a whole optimizer step (on every rank) is left out so that all ranks step together. Public so that
    the benches read the very batches `fit` trains on (bench/common.py `loop_batches`)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    batches = [perm[i : i + micro] for i in range(0, n, micro)]
    return batches[: len(batches) // per_step * per_step]


def _latest_checkpoint(ckpt_root: Path | None) -> Path | None:
    if ckpt_root is None or not ckpt_root.exists():
        return None
    done = [p for p in ckpt_root.glob("step-*") if (p / "DONE").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def batch_shape(settings: TrainSettings, world: int) -> tuple[int, int]:
    """(micro-batch size, accumulation steps) of one rank, for a global batch split over `world` ranks."""
    per_rank = settings.global_batch_size // world
    if settings.global_batch_size % world or per_rank == 0 or per_rank % min(settings.micro_batch_size, per_rank):
        raise ConfigError(
            f"train.global_batch_size={settings.global_batch_size} must be a multiple of "
            f"world size ({world}) x train.micro_batch_size ({settings.micro_batch_size})"
        )
    micro = min(settings.micro_batch_size, per_rank)
    return micro, per_rank // micro


def deepspeed_config(settings: TrainSettings, world: int) -> dict:
    """The DeepSpeed config of `settings.deepspeed` with every `auto` value filled from the train settings:
    batch sizes, clipping, bf16/fp16 from train.precision, and the optimizer's hyper-parameters."""
    cfg = json.loads(json.dumps(dict(settings.deepspeed)))  # plain, mutable copy
    micro, accum = batch_shape(settings, world)
    cfg.update(
        train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum, train_batch_size=settings.global_batch_size
    )
    cfg["gradient_clipping"] = float(settings.max_grad_norm or 0.0)
    precision = _precision(settings.precision)
    for key, want in (("bf16", precision == "bf16"), ("fp16", precision == "fp16")):
        block = cfg.setdefault(key, {})
        if block.get("enabled", "auto") == "auto":
            block["enabled"] = want
    opt = cfg.get("optimizer")
    if opt:
        auto = {
            "lr": settings.lr,
            "betas": list(settings.adam_betas),
            "eps": settings.adam_eps,
            "weight_decay": settings.weight_decay,
        }
        params = opt.setdefault("params", {})
        for k, v in auto.items():
            if params.get(k, "auto") == "auto":
                params[k] = v
    if "scheduler" in cfg:
        raise ConfigError("train.deepspeed.scheduler is not used: the schedule comes from train.scheduler / train.warmup_steps")
    zero = cfg.setdefault("zero_optimization", {})
    for k in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        if zero.get(k) == "auto":
            del zero[k]  # DeepSpeed's defaults (the HF Trainer derives them from the hidden size)
    return cfg


def zero_stage(settings: TrainSettings) -> int:
    return int((settings.deepspeed or {}).get("zero_optimization", {}).get("stage", 0)) if settings.deepspeed else -1


def weights_dtype(settings: TrainSettings) -> str:
    """The dtype to load a model in for training: bf16 under a DeepSpeed bf16 run (DeepSpeed keeps the fp32
    master weights in the optimizer), fp32 otherwise (autocast needs fp32 weights to be mixed precision)."""
    if settings.deepspeed is None:
        return "fp32"
    enabled = (settings.deepspeed.get("bf16") or {}).get("enabled", "auto")
    return "bf16" if enabled is True or (enabled == "auto" and _precision(settings.precision) == "bf16") else "fp32"


@contextlib.contextmanager
def zero3_init(settings: TrainSettings):
    """Load the model inside this context before ZeRO-3 training: transformers then creates it
    partitioned across the ranks (deepspeed.zero.Init), so no rank ever holds the whole model.
    A no-op for other settings."""
    if zero_stage(settings) != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    distributed.init_deepspeed()
    keep = HfDeepSpeedConfig(deepspeed_config(settings, distributed.world_size()))  # noqa: F841 (weakly referenced by transformers)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()


def _deepspeed_engine(model, groups: list[dict], ds_config: dict, settings: TrainSettings, total: int):
    """A DeepSpeed engine over `model`: torch's AdamW unless the config names an optimizer (ZeRO-Offload
    needs DeepSpeed's CPU Adam); the schedule is ours, stepped by the engine at each optimizer step."""
    import deepspeed

    distributed.init_deepspeed()
    kwargs = (
        {"model_parameters": groups}
        if ds_config.get("optimizer")
        else {"optimizer": adamw(groups, settings, on_cuda=torch.cuda.is_available(), deepspeed=True)}
    )
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        config=ds_config,
        dist_init_required=False,
        lr_scheduler=lambda opt: _schedule(opt, settings.scheduler, settings.warmup_steps, total),
        **kwargs,
    )
    return engine, optimizer, scheduler


def _gathered(engine):
    """The engine's module as a plain model with full weights; under ZeRO-3 on rank 0 only (None elsewhere)."""
    module = engine.module
    if engine.zero_optimization_stage() != 3:
        engine.destroy()
        return module
    import deepspeed

    full = {}
    for p in module.parameters():  # collective: every rank gathers every parameter in turn
        with deepspeed.zero.GatheredParameters([p]):
            if distributed.is_main():
                full[p] = p.data.detach().to("cpu", copy=True)
    engine.destroy()  # removes ZeRO-3's hooks, which would re-partition the parameters
    if not distributed.is_main():
        return None
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    for p, value in full.items():
        p.data = value
        p.ds_status = ZeroParamStatus.AVAILABLE
    for m in module.modules():  # ZeRO-3's parameter dicts gather on access; make them plain again
        if type(m._parameters) is not dict:
            m._parameters = dict(m._parameters.items())
    return module.to("cpu")


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

    The returned model is the plain (unwrapped) module with the trained weights; under ZeRO-3 the
    weights are gathered on rank 0 and the other ranks get None.
    """
    from accelerate import Accelerator

    hooks = hooks or NoHooks()
    distributed.init()
    rank, world = distributed.rank(), distributed.world_size()
    micro, accum = batch_shape(settings, world)
    ds_config = deepspeed_config(settings, world) if settings.deepspeed else None
    budget = settings.tokens_per_micro_batch
    if budget:
        if ds_config is not None:
            raise ConfigError(
                "train.tokens_per_micro_batch works without DeepSpeed (its engine counts micro-batches itself); "
                "set train.micro_batch_size instead"
            )
        micro, accum = micro * accum, 1  # a rank's whole step, split by tokens in the loop
    on_cuda = torch.cuda.is_available()
    sdpa = sdpa_context(settings.sdpa_backend, on_cuda)
    accelerator = None
    if ds_config is None:
        # cpu=True on machines without CUDA: accelerate then runs several CPU ranks as DDP over gloo.
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(), gradient_accumulation_steps=accum, mixed_precision=_precision(settings.precision)
        )

    per_step = accum * world
    n_batches_epoch = len(epoch_batches(len(dataset), micro, per_step, settings.seed, 0))
    steps_per_epoch = n_batches_epoch // per_step
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{phase}: {len(dataset)} training examples do not fill one global batch of "
            f"{settings.global_batch_size}; lower train.global_batch_size or add data"
        )
    total = int(settings.max_steps) if settings.max_steps else math.ceil(settings.epochs * steps_per_epoch)

    if settings.liger:
        apply_liger(model, on_cuda)
    if settings.gradient_checkpointing:
        _checkpointing(model, True)
    if settings.compile:
        compile_for_training(model, settings, deepspeed=ds_config is not None)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{phase}: the strategy left no trainable parameter")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        g
        for g in ({"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0})
        if g["params"]
    ]
    engine = None
    if ds_config is not None:
        engine, optimizer, scheduler = _deepspeed_engine(model, groups, ds_config, settings, total)
        model = engine
        device = engine.device
    else:
        optimizer = adamw(groups, settings, on_cuda=on_cuda)
        scheduler = _schedule(optimizer, settings.scheduler, settings.warmup_steps, total)
        # The scheduler stays outside prepare(): accelerate would step it once per rank per step.
        model, optimizer = accelerator.prepare(model, optimizer)
        accelerator.register_for_checkpointing(scheduler)
        device = accelerator.device
    unwrap = (lambda m: m.module) if engine is not None else accelerator.unwrap_model

    ckpt_root = Path(checkpoint_dir) if checkpoint_dir else None
    step = 0
    resumed_from = None
    tokens = examples = 0
    notify = getattr(hooks, "on_examples_trained", None)
    latest = _latest_checkpoint(ckpt_root)
    if latest is not None:
        state = _load_checkpoint(latest, accelerator, engine)
        step = state["step"]
        if distributed.is_main():  # the counts of all ranks so far; the final sum adds every rank's since
            tokens, examples = state.get("tokens", 0), state.get("examples", 0)
        resumed_from = step
        if notify is not None:  # the data order is a pure function of (seed, epoch): the steps done are known
            for epoch in range(math.ceil(step / steps_per_epoch)):
                batches = epoch_batches(len(dataset), micro, per_step, settings.seed, epoch)
                for step_in_epoch in range(min(steps_per_epoch, step - epoch * steps_per_epoch)):
                    notify(step_examples(dataset, batches, step_in_epoch, per_step))
        log.info("%s: resuming from checkpoint %s (step %d of %d)", phase, latest, step, total)

    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    # The loss is summed on the device and read at log steps only (train.sync_every_step: every step).
    loss_sum, loss_count, last_loss = torch.zeros((), device=device), 0, float("nan")
    finite = _FiniteCheck(device, phase, rank, steps_per_epoch)
    finite.checked = step
    lengths = [len(ex["input_ids"]) for ex in dataset] if budget else []
    start = time.time()
    last_save = start  # wall-clock checkpoints (checkpoint_every_minutes) count from here
    bar = tqdm(total=total, initial=step, desc=phase, disable=not distributed.is_main(), dynamic_ncols=True)
    with _StopRequest() as stop, sdpa:
        while step < total:
            epoch, step_in_epoch = divmod(step, steps_per_epoch)
            batches = epoch_batches(len(dataset), micro, per_step, settings.seed, epoch)
            mine = batches[step_in_epoch * per_step :][rank::world]
            if budget:  # each entry of `mine` is the rank's whole step: (micro-batch, weight, last of the step)
                plan = [
                    (c, len(c) / len(idx), k == len(cs) - 1)
                    for idx in mine
                    for cs in [token_budget_split(idx, lengths, budget)]
                    for k, c in enumerate(cs)
                ]
            else:  # accelerate and DeepSpeed divide the loss by the accumulation count themselves
                plan = [(idx, 1.0, (i + 1) % accum == 0) for i, idx in enumerate(mine)]
            for idx, weight, boundary in plan:
                batch = {k: v.to(device) for k, v in collator([dataset[j] for j in idx]).items()}
                loss = model(**batch).loss
                extra = hooks.penalty(unwrap(model), batch)
                if extra is not None:
                    loss = loss + extra
                if settings.sync_every_step and not torch.isfinite(loss):
                    raise TrainingError(
                        f"{phase}: loss is {loss.item()} at step {step + 1} (epoch {epoch}, rank {rank}, "
                        f"learning rate {scheduler.get_last_lr()[0]:.3g}); stopping. "
                        "Lower train.lr or check the data; a rerun resumes from the last checkpoint"
                    )
                finite.update(loss, step + 1, scheduler.get_last_lr()[0])
                loss_sum += loss.detach().float() * len(idx)
                loss_count += len(idx)
                if weight != 1.0:
                    loss = loss * weight
                tokens += sum(len(dataset[j]["input_ids"]) for j in idx)  # real tokens, whatever the collator pads
                examples += len(idx)
                if engine is not None:
                    # DeepSpeed scales by its own accumulation count and steps the schedule itself.
                    engine.backward(loss)
                    if boundary:
                        hooks.on_before_optimizer_step(engine.module)
                    engine.step()
                else:
                    # accelerate divides the loss by its accumulation count; DDP syncs at the boundary only.
                    with contextlib.nullcontext() if boundary else accelerator.no_sync(model):
                        accelerator.backward(loss)
                    if boundary:
                        hooks.on_before_optimizer_step(unwrap(model))
                        if settings.max_grad_norm:
                            accelerator.clip_grad_norm_(params, settings.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                if not boundary:
                    continue
                if notify is not None:
                    notify(step_examples(dataset, batches, step - epoch * steps_per_epoch, per_step))
                step += 1
                log_step = step % settings.log_every == 0 or step == total
                stopping = step < total and stop.any_rank(world)
                periodic = settings.checkpoint_every and step % settings.checkpoint_every == 0 and step < total
                if settings.checkpoint_every_minutes and step < total:
                    # Rank 0's clock decides for every rank (a collective: all ranks save together or none does).
                    due = time.time() - last_save >= settings.checkpoint_every_minutes * 60
                    periodic = periodic or (distributed.all_sum(float(due and distributed.is_main())) > 0 if world > 1 else due)
                if log_step or settings.sync_every_step or (ckpt_root and (periodic or stopping)):
                    finite.check(step)  # before any checkpoint: a saved one never holds a non-finite step
                    if log_step and world > 1:  # the mean over every rank's micro-batches (a collective: all ranks log together)
                        last_loss = distributed.all_sum(loss_sum.item()) / max(distributed.all_sum(loss_count), 1)
                    else:
                        last_loss = loss_sum.item() / max(loss_count, 1)
                    bar.set_postfix(loss=f"{last_loss:.4f}")
                bar.update(1)
                if log_fn and distributed.is_main() and log_step:
                    log_fn(
                        {
                            f"{phase}/loss": last_loss,
                            f"{phase}/lr": scheduler.get_last_lr()[0],
                            f"{phase}/epoch": step / steps_per_epoch,
                            f"{phase}/step": step,
                            # real (non-padding) tokens per second since the phase (re)started, all ranks
                            f"{phase}/tokens_per_second": tokens * world / max(time.time() - start, 1e-9),
                        }
                    )
                loss_sum, loss_count = torch.zeros((), device=device), 0
                if ckpt_root and (periodic or stopping):
                    counts = {
                        "step": step,
                        "tokens": int(distributed.all_sum(tokens)),
                        "examples": int(distributed.all_sum(examples)),
                    }
                    try:
                        _save_checkpoint(
                            ckpt_root,
                            step,
                            settings.keep_checkpoints,
                            counts,
                            accelerator=accelerator,
                            engine=engine,
                            phase=phase,
                        )
                        last_save = time.time()
                    except CheckpointNotWritten as exc:
                        if stopping:
                            raise
                        # A periodic checkpoint is insurance: a full disk must not end the training it insures.
                        log.warning("%s", exc.note)
                if stopping and stop.terminates():
                    bar.close()
                    saved = (
                        f"checkpoint saved in {ckpt_root}; rerun the same command to resume"
                        if ckpt_root
                        else ("no checkpoint folder was given, so nothing was saved")
                    )
                    raise Interrupted(f"{phase}: stopped by SIGTERM after step {step} of {total}; {saved}")
                if step >= total:
                    break
    bar.close()
    distributed.barrier()
    seconds = time.time() - start
    tokens, examples = int(distributed.all_sum(tokens)), int(distributed.all_sum(examples))  # all ranks'
    trained = _gathered(engine) if engine is not None else accelerator.unwrap_model(model)
    if settings.compile and trained is not None:
        uncompile(trained)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if on_cuda else None
    stats = TrainStats(step, step / steps_per_epoch, examples, tokens, seconds, last_loss, resumed_from, peak)
    log.info(
        "%s: %d steps, %d tokens in %.1fs (%.0f tokens/s), final loss %.4f",
        phase,
        step,
        tokens,
        seconds,
        stats.tokens_per_second,
        last_loss,
    )
    if accelerator is not None:
        _release(accelerator)
    if settings.gradient_checkpointing and trained is not None:
        _checkpointing(trained, False)  # evaluation and generation keep their KV cache
    return trained, stats


def _checkpointing(model, on: bool) -> None:
    """Switch transformers' gradient checkpointing (non-reentrant: frozen inputs and ZeRO-3 are fine)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model
    if hasattr(target, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
        enable, disable = target.activation_checkpointing_enable, target.activation_checkpointing_disable
        kwargs = {"activation_checkpointing_kwargs": {"use_reentrant": False}}
    elif hasattr(target, "gradient_checkpointing_enable"):
        enable, disable = target.gradient_checkpointing_enable, target.gradient_checkpointing_disable
        kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
    else:
        raise ConfigError(f"train.gradient_checkpointing: {type(target).__name__} does not support it")
    if on:
        enable(**kwargs)
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # frozen embeddings (LoRA, LF): the checkpointed layers still get grads
        target.config.use_cache = False
    else:
        disable()
        target.config.use_cache = True


def _rng_state() -> dict:
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _save_checkpoint(
    root: Path, step: int, keep: int, state: dict, *, accelerator=None, engine=None, phase: str = "train"
) -> None:
    """Write a resumable checkpoint into a temporary folder, then rename it with `DONE` last: a kill or
    a full disk mid-save leaves the previous checkpoint the latest usable one."""
    target = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    try:
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        if engine is not None:
            engine.save_checkpoint(str(tmp), tag="state")  # every rank writes its own shards
            torch.save(_rng_state(), tmp / f"rng-{distributed.rank()}.pt")
        else:
            accelerator.save_state(str(tmp))  # model, optimizer, scheduler, RNG of every rank
        distributed.barrier()
        if distributed.is_main():
            (tmp / "state.json").write_text(json.dumps(state))
            (tmp / "DONE").write_text("")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    except Exception as exc:  # a full disk: OSError, SafetensorError, or torch's RuntimeError from inline_container
        from cft.run import disk

        if not isinstance(exc, OSError) and disk.reason(exc) is None:
            raise
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        previous = _latest_checkpoint(root)
        error = CheckpointNotWritten(
            f"{phase}: could not write the checkpoint of step {step} ({disk.reason(exc) or exc}). "
            + (f"The previous checkpoint {previous} is intact; " if previous else "")
            + "free disk space (or lower train.keep_checkpoints) and rerun the same command to resume."
        )
        error.note = f"{phase}: the checkpoint of step {step} was not written ({disk.reason(exc) or exc}); training goes on " + (
            f"(a rerun would resume from {previous})" if previous else "(no checkpoint to resume from yet)"
        )
        raise error from exc
    if distributed.is_main():
        done = sorted((p for p in root.glob("step-*") if (p / "DONE").exists()), key=lambda p: int(p.name.split("-")[1]))
        for old in done[: max(len(done) - max(keep, 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()


def _load_checkpoint(path: Path, accelerator=None, engine=None) -> dict:
    if engine is not None:
        loaded, _ = engine.load_checkpoint(str(path), tag="state", load_optimizer_states=True, load_lr_scheduler_states=True)
        if loaded is None:
            raise TrainingError(f"could not load the DeepSpeed checkpoint {path}; remove it to start the phase over")
        rng = path / f"rng-{distributed.rank()}.pt"
        if rng.exists():
            _set_rng_state(torch.load(rng, weights_only=False))
    else:
        accelerator.load_state(str(path))
    return json.loads((path / "state.json").read_text())


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
    packing: bool = False,
    attn_implementation: str | None = None,
):
    """Format and tokenize instruction examples, then train on them. Returns (model, TrainStats, TokenizeStats).

    `attn_implementation` (e.g. "flash_attention_2") switches the model's attention kernel for
    training; None keeps the one it was loaded with.

    With `packing`, the examples of each micro-batch share rows without attention across examples
    (cft/data/packing.py); the padding share with and without it is in TokenizeStats."""
    from contextlib import nullcontext

    from cft.data.format import PadCollator, tokenize_examples
    from cft.data.packing import PackingCollator, no_kv_cache, padding_fraction, uses_varlen_attention

    tokenized, tok_stats = tokenize_examples(tokenizer, examples, max_length, loss_on_prompt)
    if tok_stats.truncated or tok_stats.dropped:
        log.warning(
            "%s: %d of %d examples truncated to %d tokens, %d dropped (prompt alone too long)",
            phase,
            tok_stats.truncated,
            tok_stats.total,
            max_length,
            tok_stats.dropped,
        )
    micro = min(settings.micro_batch_size, settings.global_batch_size // int(os.environ.get("WORLD_SIZE", "1")) or 1)
    batches = epoch_batches(len(tokenized), max(micro, 1), 1, settings.seed, 0)
    tok_stats.packing = bool(packing)
    if attn_implementation:
        try:
            model.set_attn_implementation(attn_implementation)
        except (ImportError, ValueError) as exc:  # e.g. flash-attn not installed, or no GPU
            raise ConfigError(f"train.attn_implementation={attn_implementation}: {exc}") from exc
    lengths = [len(t["input_ids"]) for t in tokenized]
    single_row = uses_varlen_attention(model)
    tok_stats.padding_fraction = padding_fraction(lengths, batches)
    tok_stats.padding_fraction_packed = padding_fraction(lengths, batches, packed=True, single_row=single_row)
    log.info(
        "%s: padding is %.1f%% of the token slots of padded micro-batches, %.1f%% packed; packing is %s%s",
        phase,
        100 * tok_stats.padding_fraction,
        100 * tok_stats.padding_fraction_packed,
        "on" if packing else "off",
        "" if packing else " (set train.packing=true to pack)",
    )
    collator = (
        PackingCollator(pad_id=tokenizer.pad_token_id, single_row=single_row, width_multiple=settings.pack_width_multiple)
        if packing
        else PadCollator(tokenizer.pad_token_id)
    )
    with no_kv_cache(model) if packing else nullcontext():
        model, stats = train_phase(
            model,
            tokenized,
            collator=collator,
            settings=settings,
            hooks=hooks,
            phase=phase,
            checkpoint_dir=checkpoint_dir,
            log_fn=log_fn,
        )
    return model, stats, tok_stats
