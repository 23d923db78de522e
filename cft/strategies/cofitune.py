"""`cofitune`: CoFiTune (Zhang et al. 2024, "Balancing Speciality and Versatility: a Coarse to Fine
Framework...", arXiv 2404.10306), a baseline for arXiv 2410.16006's mitigations.

Coarse level: only the chosen modules in a chosen layer range train (default: the FFN up/down
projections in layers (N/4, N/2], which the CoFiTune paper found to gain speciality while
harming versatility least); everything else is frozen. The paper picks the range and modules by
an empirical tree search; `block` and `module_set` name its candidates (BLOCKS, MODULE_SETS: the
ones its repository lists), so one level of the search is a sweep (experiment=cofitune_search) and
`analyze.py mode=cofitune` scores it (cft/analysis/cofitune.py).
Fine level (soft masking): every attention head and FFN unit in that region gets an importance
in [0, 1) -- the gradient magnitude of a multiplicative mask on the unit's output under a KL loss
between two forward passes with different dropout noise, on Phase-2 data, normalized per layer
(z-score, then |tanh|). Before each optimizer step the unit's gradients are scaled by
(1 - importance), so units the model relies on move less. Importance is a cached artifact.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from cft.data.records import Example
from cft.errors import ConfigError
from cft.run import artifacts
from cft.strategies.base import (
    PhaseLR,
    Strategy,
    StrategyContext,
    check_modules,
    freeze,
    layers_text,
    param_layer_module,
    parameter_report,
    write_csv,
)
from cft.training.gradients import full_shape, scale_grad

log = logging.getLogger(__name__)

ATTENTION_ROWS = ("q_proj", "k_proj", "v_proj")  # a head owns a block of output rows
ATTENTION_COLS = ("o_proj",)  # ... and a block of input columns
FFN_ROWS = ("gate_proj", "up_proj", "w1", "w3")  # an FFN unit owns an output row
FFN_COLS = ("down_proj", "w2")  # ... and an input column
MODULE_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:.+\.)?([^.]+)$")


# The layer blocks of CoFiTune's repository (train_layers_7B: 8-layer blocks of a 32-layer model),
# in quarters of N layers: [first quarter, last quarter) -> 0-based layers [a*N/4, b*N/4).
BLOCKS = {
    "bottom1": (0, 1),
    "bottom2": (1, 2),  # (N/4, N/2] in 1-based numbers: the paper's default range
    "middle": (2, 3),
    "top": (3, 4),
    "bottom_plus": (0, 2),  # the "plus" widenings: two adjacent blocks
    "middle_plus": (1, 3),
    "top_plus": (2, 4),
}
# Module types searched: the FFN up/down projections (the paper's choice), attention q/k/v, or both.
MODULE_SETS = {
    "ffn": ("up_proj", "down_proj"),
    "attention": ("q_proj", "k_proj", "v_proj"),
    "ffn_attention": ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj"),
}


def block_layers(block: str, num_layers: int) -> list[int]:
    """0-based layers of a named block of a model with `num_layers` layers (BLOCKS)."""
    first, last = BLOCKS[block]
    return list(range(first * num_layers // 4, last * num_layers // 4))


def default_layers(num_layers: int) -> list[int]:
    """0-based indices of the paper's default range (N/4, N/2] of 1-based layer numbers."""
    return list(range(num_layers // 4, num_layers // 2))


def normalize(importance: torch.Tensor) -> torch.Tensor:
    """Per-layer normalization of CoFiTune: z-score over the layer's units, then |tanh|, in [0, 1)."""
    x = importance.double()
    std = x.std()
    z = (x - x.mean()) / std if std > 0 else torch.zeros_like(x)
    return torch.tanh(z).abs().float()


def _find(model, layer: int, leaf: str):
    for name, module in model.named_modules():
        m = MODULE_RE.search(name)
        if m and int(m.group(1)) == layer and m.group(2) == leaf:
            return module
    return None


def unit_importance(
    model, batches, layers: Sequence[int], *, heads: bool, ffn: bool, dropout: float, num_heads: int
) -> dict[str, torch.Tensor]:
    """Raw importance (summed |d KL / d mask|) of each head (`heads.<layer>`) and FFN unit (`ffn.<layer>`).

    Masks multiply the input of o_proj (per head) and of down_proj (per FFN unit); dropout is applied
    at the same points, so the two passes differ even for models without dropout of their own."""
    masks: dict[str, torch.Tensor] = {}
    handles = []
    device = next(model.parameters()).device

    def hook_for(mask: torch.Tensor, per_head: bool):
        def hook(module, args):
            x = F.dropout(args[0], p=dropout, training=True)
            if per_head:
                x = (x.view(*x.shape[:-1], num_heads, -1) * mask[:, None].to(x.dtype)).view(x.shape)
            else:
                x = x * mask.to(x.dtype)
            return (x, *args[1:])

        return hook

    for layer in layers:
        if heads:
            module = _find(model, layer, "o_proj")
            if module is None:
                raise ConfigError(f"cofitune: no o_proj in layer {layer} to measure head importance")
            masks[f"heads.{layer}"] = torch.ones(num_heads, device=device, requires_grad=True)
            handles.append(module.register_forward_pre_hook(hook_for(masks[f"heads.{layer}"], True)))
        if ffn:
            module = _find(model, layer, "down_proj") or _find(model, layer, "w2")
            if module is None:
                raise ConfigError(f"cofitune: no down_proj in layer {layer} to measure FFN-unit importance")
            masks[f"ffn.{layer}"] = torch.ones(module.in_features, device=device, requires_grad=True)
            handles.append(module.register_forward_pre_hook(hook_for(masks[f"ffn.{layer}"], False)))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)  # only the masks need gradients
    was_training = model.training
    model.train()
    total = {k: torch.zeros_like(m, dtype=torch.float64) for k, m in masks.items()}
    try:
        for batch in tqdm(batches, desc="cofitune importance", leave=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            keep = batch["labels"][:, 1:] != -100  # response tokens (the positions the loss trains)
            if not keep.any():
                continue
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            logp = F.log_softmax(model(**inputs).logits[:, :-1][keep].float(), dim=-1)
            logq = F.log_softmax(model(**inputs).logits[:, :-1][keep].float(), dim=-1)
            kl = 0.5 * (
                F.kl_div(logq, logp, log_target=True, reduction="batchmean")
                + F.kl_div(logp, logq, log_target=True, reduction="batchmean")
            )
            kl.backward()
            for k, m in masks.items():
                total[k] += m.grad.detach().abs().double()
                m.grad = None
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)
    return {k: v.float().cpu() for k, v in total.items()}


class CoFiTune(Strategy):
    def __init__(
        self,
        modules: Annotated[Sequence[str], Field(min_length=1, description="modules trained in the layer range")] = (
            "up_proj",
            "down_proj",
        ),
        layers: Annotated[
            Sequence[Annotated[int, Field(ge=0)]] | None, Field(description="0-based layers trained; null = (N/4, N/2]")
        ] = None,
        block: Annotated[
            Literal[tuple(BLOCKS)] | None,  # type: ignore[valid-type]
            Field(description="a named layer block of the coarse search (BLOCKS); null = `layers`"),
        ] = None,
        module_set: Annotated[
            Literal[tuple(MODULE_SETS)] | None,  # type: ignore[valid-type]
            Field(description="a named module set of the coarse search (MODULE_SETS); null = `modules`"),
        ] = None,
        fine: Annotated[bool, Field(description="also scale unit gradients by (1 - importance)")] = True,
        importance_examples: Annotated[int, Field(ge=1, description="Phase-2 examples for the importance estimate")] = 256,
        importance_batch_size: Annotated[int, Field(ge=1, description="batch size of the importance estimate")] = 8,
        dropout: Annotated[float, Field(ge=0, lt=1, description="dropout of the two passes at the masked units")] = 0.1,
        seed: Annotated[int | None, Field(ge=0, description="seed of the estimate; null = the run's seed")] = None,
        lr: PhaseLR = None,
    ):
        self.lr = lr
        if block is not None and layers is not None:
            raise ConfigError(f"strategy.block={block} and strategy.layers={list(layers)}: set one of them")
        self.block = block
        self.module_set = module_set
        self.modules = list(MODULE_SETS[module_set] if module_set in MODULE_SETS else modules or [])
        self.layers = list(layers) if layers is not None else None
        self.fine = fine
        self.importance_examples = importance_examples
        self.importance_batch_size = importance_batch_size
        self.dropout = dropout
        self.seed = seed
        self.importance: dict[str, torch.Tensor] = {}
        self._scales: list[tuple[torch.nn.Parameter, torch.Tensor, int]] = []
        self._examples: list[Example] = []
        self._report: dict[str, Any] = {}

    def validate(self, model_config) -> None:
        check_modules("strategy.modules", self.modules, model_config)
        if self.block is not None and self.block not in BLOCKS:
            raise ConfigError(f"strategy.block={self.block!r} is not one of {', '.join(BLOCKS)}")
        n = int(model_config.num_hidden_layers)
        layers = self.chosen_layers(n)
        if not layers:
            what = f"the block {self.block}" if self.block else "the default range (N/4, N/2]"
            raise ConfigError(
                f"strategy.layers: {what} is empty for a model with {n} layers (blocks are quarters of the layers); "
                "list the layers to train, e.g. strategy.layers=[0]"
            )
        bad = [x for x in layers if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < n]
        if bad:
            raise ConfigError(f"strategy.layers: {bad} not layer indices of a model with {n} layers (0 to {n - 1})")
        if not isinstance(self.dropout, (int, float)) or not 0 < self.dropout < 1:
            raise ConfigError(f"strategy.dropout={self.dropout!r} must be in (0, 1): the two passes differ by dropout")
        for option in ("importance_examples", "importance_batch_size"):
            value = getattr(self, option)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"strategy.{option}={value!r} must be a positive integer")

    def chosen_layers(self, num_layers: int) -> list[int]:
        """The trained layers: `layers`, else the named `block`, else the paper's default range."""
        if self.layers is not None:
            return sorted(self.layers)
        return block_layers(self.block, num_layers) if self.block else default_layers(num_layers)

    def phase2_data(self, examples: list[Example], ctx: StrategyContext) -> list[Example]:
        self._examples = list(examples)  # importance is measured on the Phase-2 data
        return examples

    # -------------------------------------------------------------- fine level

    def _importance(self, model, ctx: StrategyContext, layers: list[int]) -> dict[str, torch.Tensor]:
        heads = any(m in ATTENTION_ROWS + ATTENTION_COLS for m in self.modules)
        ffn = any(m in FFN_ROWS + FFN_COLS for m in self.modules)
        seed = ctx.seed if self.seed is None else self.seed
        chosen = random.Random(f"cofitune/{seed}").sample(self._examples, min(self.importance_examples, len(self._examples)))
        if not chosen:
            raise ConfigError("cofitune: no Phase-2 examples to measure importance on")
        spec = {
            "phase1": ctx.phase1_key or str(ctx.phase1_dir),
            "data": artifacts.key_of([(e.instruction, e.input, e.output) for e in chosen]),
            "layers": layers,
            "heads": heads,
            "ffn": ffn,
            "dropout": self.dropout,
            "seed": seed,
            "batch_size": self.importance_batch_size,
            "max_length": ctx.max_length,
        }

        def build(tmp: Path) -> None:
            from safetensors.torch import save_file

            from cft.data.format import PadCollator, tokenize_examples

            tokenized, _ = tokenize_examples(ctx.tokenizer, chosen, ctx.max_length)
            collate = PadCollator(ctx.tokenizer.pad_token_id)
            size = self.importance_batch_size
            batches = [collate(tokenized[i : i + size]) for i in range(0, len(tokenized), size)]
            torch.manual_seed(seed)
            # A fresh Phase-1 model on the accelerator: the one about to train may be partitioned (ZeRO-3)
            # or on the CPU; it holds the same weights, since nothing has trained yet.
            scorer = ctx.load_phase1() if ctx.load_phase1 is not None else model
            raw = unit_importance(
                scorer,
                batches,
                layers,
                heads=heads,
                ffn=ffn,
                dropout=self.dropout,
                num_heads=int(model.config.num_attention_heads),
            )
            del scorer
            save_file({k: v.contiguous() for k, v in raw.items()}, str(tmp / "raw_importance.safetensors"))

        from safetensors.torch import load_file

        path = ctx.artifact("cofitune_importance", spec, build)
        return {k: normalize(v) for k, v in load_file(str(path / "raw_importance.safetensors")).items()}

    def scales_for(self, model) -> list[tuple[torch.nn.Parameter, torch.Tensor, int]]:
        """(parameter, per-row or per-column scale 1 - importance, dim) for every trainable unit-owning tensor."""
        config = model.config
        n_heads = int(config.num_attention_heads)
        n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
        out = []
        for name, param in model.named_parameters():
            layer, module = param_layer_module(name)
            if not param.requires_grad or layer is None:
                continue
            is_bias = name.endswith(".bias")
            shape = full_shape(param)
            if module in FFN_ROWS + FFN_COLS and f"ffn.{layer}" in self.importance:
                scale = 1 - self.importance[f"ffn.{layer}"]
                dim = 0 if module in FFN_ROWS else 1
            elif module in ATTENTION_ROWS + ATTENTION_COLS and f"heads.{layer}" in self.importance:
                heads = self.importance[f"heads.{layer}"]
                if module in ("k_proj", "v_proj") and n_kv != n_heads:
                    heads = heads.view(n_kv, n_heads // n_kv).mean(dim=1)  # a KV head serves a group of query heads
                dim = 0 if module in ATTENTION_ROWS else 1
                scale = (1 - heads).repeat_interleave(shape[dim] // heads.numel())
            else:
                continue
            if is_bias and dim == 1:
                continue  # an output bias belongs to no single unit
            if shape[0 if is_bias else dim] != scale.numel():
                raise ConfigError(f"cofitune: {name} has shape {tuple(shape)}, which does not match {scale.numel()} units")
            out.append((param, scale, 0 if is_bias else dim))
        return out

    def prepare(self, model, ctx: StrategyContext):
        layers = self.chosen_layers(int(model.config.num_hidden_layers))
        region, modules = set(layers), set(self.modules)

        def outside(name: str) -> bool:
            layer, module = param_layer_module(name)
            return not (layer in region and module in modules)

        frozen = freeze(model, outside)
        self._report = {
            "layers": layers_text(layers),
            "modules": ",".join(self.modules),
            **({"block": self.block} if self.block else {}),
            **({"module_set": self.module_set} if self.module_set else {}),
            "frozen_tensors": len(frozen),
            "fine": self.fine,
            **parameter_report(model),
        }
        if self.fine:
            self.importance = self._importance(model, ctx, layers)
            self._scales = self.scales_for(model)
            rows = [
                [k.split(".")[0], int(k.split(".")[1]), i, float(x)]
                for k, v in sorted(self.importance.items())
                for i, x in enumerate(v.tolist())
            ]
            write_csv(ctx.run_dir / "cofitune_importance.csv", ["kind", "layer", "unit", "importance"], rows)
            for kind in ("heads", "ffn"):
                values = [v for k, v in self.importance.items() if k.startswith(kind)]
                if values:
                    self._report[f"importance/{kind}_mean"] = float(torch.cat(values).mean())
            self._report["scaled_tensors"] = len(self._scales)
        return model

    def on_before_optimizer_step(self, model) -> None:
        for param, scale, dim in self._scales:
            scale_grad(param, scale, dim)

    def report(self) -> dict[str, Any]:
        return dict(self._report)
