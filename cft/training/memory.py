"""Memory per GPU of a training cell, estimated from the model's shape before any work, and the launch
rule built on it: a cell that cannot fit where it is launched stops at compose time, naming the setting
to change or the command to run instead (e.g. `torchrun --nproc_per_node 8 train.py ...`).

The estimate follows the ZeRO paper's accounting (Rajbhandari et al. 2020) per parameter: bf16 weights
(2 B) and gradients (2 B), and 12 B of optimizer state (fp32 master weights, Adam's two moments) for each
trainable parameter; ZeRO-1/2/3 divide the optimizer states / also the gradients / also the weights by
the number of ranks. Without DeepSpeed (DDP, autocast) every rank keeps fp32 weights (4 B), fp32
gradients (4 B) and Adam's moments (8 B). Activations per layer are about micro_batch x seq_len x
(8 hidden + 4 intermediate) values (sdpa/flash attention stores no score matrix), or one hidden state
per layer under gradient checkpointing, plus the fp32 logits and their gradient. It is an estimate
(about 10-20% off either way is usual); `CFT_GPU_MEMORY_GB` and `CFT_GPUS` override what the machine
reports (tests inject them: the CPU can test the GPU rules).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GPUS_ENV = "CFT_GPUS"  # how many GPUs this machine has (default: torch.cuda.device_count())
GPU_MEMORY_ENV = "CFT_GPU_MEMORY_GB"  # memory of one GPU in GB (default: what the first GPU reports)
HEADROOM = 0.9  # share of a GPU's memory the estimate may fill (CUDA context, fragmentation, kernels' buffers)
GB = 1e9


# Device files through which torch reaches a GPU on Linux: NVIDIA's driver (CUDA; Jetson's nvhost), AMD's
# (ROCm), WSL's. With none of them torch sees no GPU, and the answer needs no `import torch`.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/kfd", "/dev/dxg")


def no_gpu_device() -> bool:
    """True on a Linux machine with none of GPU_DEVICE_FILES (elsewhere False: ask torch)."""
    return sys.platform.startswith("linux") and not any(os.path.exists(p) for p in GPU_DEVICE_FILES)


def gpus_available() -> int:
    """GPUs this machine offers (CFT_GPUS overrides: tests, or a job that must not use them all). On a Linux
    machine with no GPU device file it is 0 without importing torch (about 1.5 s of CPU that every
    command's config check paid, through the `cft_on_gpu` default of train.packing)."""
    if os.environ.get(GPUS_ENV):
        return int(os.environ[GPUS_ENV])
    if "torch" not in sys.modules and no_gpu_device():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_memory_gb() -> float:
    """Memory of one GPU (CFT_GPU_MEMORY_GB overrides), or the host's memory when there is no GPU."""
    if os.environ.get(GPU_MEMORY_ENV):
        return float(os.environ[GPU_MEMORY_ENV])
    if gpus_available():
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / GB
        return 80.0  # GPUs injected by CFT_GPUS without a size: an 80 GB card (A100/H100)
    import psutil

    return psutil.virtual_memory().total / GB


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model (its config's numbers)."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied: bool = False

    @classmethod
    def of(cls, config: Any) -> Shape:
        get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
        heads = int(get("num_attention_heads"))
        return cls(
            hidden=int(get("hidden_size")),
            layers=int(get("num_hidden_layers")),
            intermediate=int(get("intermediate_size")),
            vocab=int(get("vocab_size", 32000) or 32000),
            heads=heads,
            kv_heads=int(get("num_key_value_heads", heads) or heads),
            tied=bool(get("tie_word_embeddings", False)),
        )

    @property
    def layer_modules(self) -> dict[str, int]:
        """Parameters of each module of one decoder layer (the names of Llama/Mistral checkpoints): what a
        strategy that freezes some modules of some layers counts its trainable share with."""
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * (self.hidden // self.heads)
        return {
            "q_proj": h * h,
            "k_proj": h * kv,  # grouped-query attention: the key/value heads
            "v_proj": h * kv,
            "o_proj": h * h,
            "gate_proj": h * i,
            "up_proj": h * i,
            "down_proj": i * h,
            "input_layernorm": h,
            "post_attention_layernorm": h,
        }

    @property
    def params(self) -> int:
        layer = sum(self.layer_modules.values())
        return self.layers * layer + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def frozen_share(self, layers: int, modules=None) -> float:
        """The share of the parameters in `modules` (None: every module) of `layers` decoder layers."""
        per_layer = self.layer_modules
        chosen = per_layer.values() if modules is None else [per_layer.get(m, 0) for m in modules]
        return layers * sum(chosen) / self.params


@dataclass(frozen=True)
class Estimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        return (
            f"about {self.total / GB:.0f} GB per GPU (weights {self.weights / GB:.1f}, gradients {self.gradients / GB:.1f}, "
            f"optimizer {self.optimizer / GB:.1f}, activations {self.activations / GB:.1f})"
        )


def estimate(
    shape: Shape,
    *,
    trainable: float = 1.0,
    zero_stage: int = -1,
    world: int = 1,
    micro_batch: int = 1,
    seq_len: int = 1024,
    bf16: bool = True,
    gradient_checkpointing: bool = False,
    offload: bool = False,
) -> Estimate:
    """Bytes per GPU of one training rank. `trainable`: the share of parameters that train (LoRA: ~0.01,
    a frozen share of layers: below 1). `zero_stage`: -1 without DeepSpeed (DDP), else 0-3."""
    n = shape.params
    t = n * trainable
    if zero_stage < 0:
        weights, grads, optim = 4.0 * n, 4.0 * t, 8.0 * t
    else:
        weights, grads, optim = 2.0 * n, 2.0 * t, 12.0 * t
        optim /= world if zero_stage >= 1 else 1
        grads /= world if zero_stage >= 2 else 1
        weights /= world if zero_stage >= 3 else 1
        if offload:
            optim, weights = 0.0, weights if zero_stage < 3 else 0.0
    value = 2 if bf16 else 4
    tokens = micro_batch * seq_len
    per_layer = tokens * (8 * shape.hidden + 4 * shape.intermediate) * value
    if gradient_checkpointing:  # one hidden state kept per layer; one layer's activations live at a time
        layers = tokens * shape.hidden * value * shape.layers + per_layer
    else:
        layers = per_layer * shape.layers
    logits = tokens * shape.vocab * 8  # fp32 logits and their gradient
    return Estimate(weights, grads, optim, layers + logits)


def zero_config(deepspeed: Mapping[str, Any] | None) -> tuple[int, bool]:
    """(ZeRO stage, offloaded) of a DeepSpeed config; (-1, False) without one."""
    if not deepspeed:
        return -1, False
    zero = deepspeed.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    offload = bool(zero.get("offload_optimizer") or zero.get("offload_param"))
    return (int(stage) if str(stage).isdigit() else 3), offload


def with_stage(deepspeed: Mapping[str, Any] | None, stage: int) -> dict[str, Any] | None:
    """A copy of a DeepSpeed config whose `zero_optimization.stage: auto` is `stage` (others unchanged)."""
    if not deepspeed:
        return None
    import copy

    out = copy.deepcopy(dict(deepspeed))
    zero = dict(out.get("zero_optimization") or {})
    if str(zero.get("stage", 0)) == "auto":
        zero["stage"] = int(stage)
        if stage < 3:  # ZeRO-3's own keys are refused by ZeRO-2
            zero = {k: v for k, v in zero.items() if not k.startswith("stage3_")}
        out["zero_optimization"] = zero
    return out


def stage_that_fits(shape: Shape, *, world: int, capacity_gb: float, **kwargs) -> int:
    """ZeRO-2 where the model fits (faster: no gathering of weights), ZeRO-3 above."""
    two = estimate(shape, zero_stage=2, world=world, **kwargs)
    return 2 if two.total <= capacity_gb * GB * HEADROOM else 3


def gpus_needed(shape: Shape, *, capacity_gb: float, most: int = 64, **kwargs) -> int | None:
    """The fewest ranks (powers of two) on which ZeRO-3 fits; None: not even `most`."""
    world = 1
    while world <= most:
        if estimate(shape, zero_stage=3, world=world, **kwargs).total <= capacity_gb * GB * HEADROOM:
            return world
        world *= 2
    return None


def torchrun_command(nproc: int, argv: list[str] | None = None) -> str:
    """The command that runs this very one on `nproc` ranks of one node."""
    argv = list(sys.argv if argv is None else argv)
    script = os.path.basename(argv[0]) if argv else "train.py"
    return f"torchrun --nproc_per_node {nproc} {script} " + " ".join(shlex.quote(a) for a in argv[1:] if a != "check=true")


def launch_problem(
    shape: Shape,
    *,
    strategy: str,
    trainable: float,
    deepspeed: Mapping[str, Any] | None,
    micro_batch: int,
    seq_len: int,
    bf16: bool,
    gradient_checkpointing: bool,
    world: int | None = None,
    gpus: int | None = None,
    capacity_gb: float | None = None,
    argv: list[str] | None = None,
) -> str | None:
    """Why this cell cannot train where it is launched, with what to change; None when it fits.

    One process on a machine with several GPUs, or a cell that does not fit in one device's memory,
    stops here with the torchrun command that gives it the GPUs it needs; a multi-rank cell that does not
    fit names the setting to change (ZeRO stage, micro-batch, gradient checkpointing)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1) if world is None else world
    gpus = gpus_available() if gpus is None else gpus
    capacity = device_memory_gb() if capacity_gb is None else capacity_gb
    stage, offload = zero_config(deepspeed)
    kwargs = dict(trainable=trainable, micro_batch=micro_batch, seq_len=seq_len, bf16=bf16)
    est = estimate(shape, zero_stage=stage, world=world, offload=offload, gradient_checkpointing=gradient_checkpointing, **kwargs)
    share = "" if trainable >= 1 else f", {trainable:.1%} of it trainable"
    size = f"{shape.params / 1e9:.1f}B-parameter model ({strategy}{share})"
    fits = est.total <= capacity * GB * HEADROOM
    device = f"{gpus} GPU(s) of {capacity:.0f} GB" if gpus else f"no GPU ({capacity:.0f} GB of host memory)"
    if world == 1 and (gpus > 1 or not fits):
        need = gpus_needed(shape, capacity_gb=capacity if gpus else 80.0, gradient_checkpointing=True, **kwargs)
        nproc = gpus if gpus > 1 else 8  # every GPU of this machine, or a node of 8
        why = (
            f"this is one process on a machine with {device}: it would train on one of them"
            if gpus > 1 and fits
            else f"training the {size} as one process needs {est.describe()}; this machine has {device}"
        )
        least = f" (at least {need} GPU(s) of {capacity if gpus else 80.0:.0f} GB)" if need and need > 1 else ""
        return (
            f"{why}. Run it with one process per GPU{least}; DeepSpeed ZeRO switches on by itself: "
            f"{torchrun_command(nproc, argv)} (several nodes or SLURM: README 'Running the paper on a cluster')"
        )
    if not fits:
        lighter = []
        if stage < 3:
            lighter.append("train=deepspeed_zero3")
        if not gradient_checkpointing:
            lighter.append("train.gradient_checkpointing=true")
        if micro_batch > 1:
            lighter.append(f"train.micro_batch_size={max(micro_batch // 2, 1)}")
        if not offload:
            lighter.append("train=deepspeed_zero3_offload")
        return (
            f"the {size} needs {est.describe()} on {world} rank(s), more than {capacity:.0f} GB per GPU; "
            f"set {' or '.join(lighter) or 'more GPUs'}"
        )
    return None


# The paper's two models (their config.json numbers; conf/model/<name>.yaml `shape` holds the same).
PAPER_MODELS = {
    "mistral": Shape(hidden=4096, layers=32, intermediate=14336, vocab=32000, heads=32, kv_heads=8),
    "llama": Shape(hidden=4096, layers=32, intermediate=14336, vocab=128256, heads=32, kv_heads=8),
}


def plan(world: int = 8, micro_batch: int = 4, seq_len: int = 1024) -> list[list[str]]:
    """The README's memory and disk plan: GB per GPU of each paper model's full fine-tune and LoRA, and the
    sizes on disk of its final model (bf16 safetensors) and one resumable ZeRO checkpoint (bf16 weights, fp32
    master weights and Adam's two moments: 14 B per parameter)."""
    from cft.strategies.lora import LoRA

    rows = []
    for name, shape in PAPER_MODELS.items():
        lora = LoRA().trainable_share(shape)
        for what, trainable in (("full", 1.0), ("lora", lora)):
            cells = []
            for stage, ckpt in ((2, False), (2, True), (3, False), (3, True)):
                est = estimate(
                    shape,
                    trainable=trainable,
                    zero_stage=stage,
                    world=world,
                    micro_batch=micro_batch,
                    seq_len=seq_len,
                    gradient_checkpointing=ckpt,
                )
                cells.append(f"{est.total / GB:.0f}")
            resumable = (2 * shape.params + 12 * shape.params * trainable) / GB
            rows.append([name, what, f"{shape.params / 1e9:.2f}", *cells, f"{2 * shape.params / GB:.1f}", f"{resumable:.0f}"])
    return rows


if __name__ == "__main__":
    from tabulate import tabulate

    headers = [
        "model",
        "strategy",
        "params (B)",
        "ZeRO-2",
        "ZeRO-2 + ckpt",
        "ZeRO-3",
        "ZeRO-3 + ckpt",
        "final (GB)",
        "resumable (GB)",
    ]
    print("GB per GPU on 8 GPUs, micro-batch 4 x 1024 tokens, bf16 (ckpt: train.gradient_checkpointing=true)")
    print(tabulate(plan(), headers=headers, tablefmt="github"))
