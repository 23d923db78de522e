"""`lf_h2`: layer freezing, heuristic 2 of arXiv 2410.16006 -- freeze what Phase 1 changed most, since
that holds what Phase 1 taught (task ability).

The paper (Section 5): "we freeze the top-10 layers that have changed the most during Phase 1
fine-tuning ... separately for Key, Query, and Value, for each attention head". So the default,
`selection: per_head`, works per attention head: for every head and each of q_proj, k_proj and
v_proj, it ranks the layers by how much that head's slice (its rows of the projection, and bias
entries where there are any) changed from the base to the Phase-1 model, and freezes that head's
slice in its k top layers (k = 10 in the paper). With grouped-query attention the heads of k_proj
and v_proj are the key/value heads. A frozen slice keeps its Phase-1 values because its gradient
rows are zeroed: with AdamW and weight decay 0 (the paper's setting) its moments stay 0 and its
update is exactly 0. The rows are zeroed by a hook on the parameter's gradient as backward computes
it, before DDP or DeepSpeed reduce it, so ZeRO-3 never gathers a gradient for the mask (a gradient the
hook did not see is masked before the optimizer step instead, through DeepSpeed's full-gradient API). The change is the norm of the weight difference,
||W_p1 - W_base||_F (the paper's word); `change: relative` divides it by ||W_base||_F.

Other selections, under their own names:
- `selection: layer` -- per module, the k layers whose whole matrix changed most; those matrices get
  requires_grad=False (no gradient, no optimizer state).
- `selection: top_heads` -- per module, the k (layer, head) slices that changed most anywhere.

Ties are broken by layer number (then head). When the base and the Phase-1 model are the same
weights (every change is zero) there is nothing to rank: the strategy stops and says so, rather than
freezing layers 0 to k-1 by tie order.

The changes are computed by streaming both checkpoints tensor by tensor (never two models in
memory) and cached per (base, Phase-1 model, selection, change); the table with the frozen marks goes
to <run>/lf_h2_frozen.csv and W&B (table strategy/lf_h2_changes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import torch
from pydantic import Field

from cft.errors import ConfigError
from cft.strategies.base import (
    PhaseLR,
    Strategy,
    StrategyContext,
    check_count,
    check_modules,
    freeze,
    layers_text,
    param_layer_module,
    parameter_report,
    write_csv,
)
from cft.training.gradients import full_shape, scale_grad

log = logging.getLogger(__name__)

HEAD_MODULES = ("q_proj", "k_proj", "v_proj")
SELECTIONS = ("per_head", "layer", "top_heads")


def head_dims(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def head_changes(ref_a: Path, ref_b: Path, modules: Sequence[str], head_dim: int, *, relative: bool = False) -> pd.DataFrame:
    """The change of each head's slice (its rows, plus its bias entries) of the given projections from
    checkpoint A to B: ||dW||_F, or ||dW||_F / ||W_A||_F with `relative`. Streamed tensor by tensor."""
    from cft.measures.layers import checkpoint_index, iter_tensor_pairs, parse_name

    names = [n for n in checkpoint_index(ref_a) if n.endswith((".weight", ".bias")) and parse_name(_as_weight(n))[1] is not None]
    names = [n for n in names if parse_name(_as_weight(n))[0] in modules]
    sums: dict[tuple[str, int, int], list[float]] = {}
    for name, wa, wb in iter_tensor_pairs(ref_a, ref_b, names):
        module, layer = parse_name(_as_weight(name))
        rows_a = wa.reshape(-1, head_dim, *wa.shape[1:])  # (heads, head_dim[, in])
        rows_d = wb.reshape(rows_a.shape) - rows_a
        dims = tuple(range(1, rows_a.dim()))
        diff_sq = torch.sum(rows_d.double() ** 2, dim=dims)
        base_sq = torch.sum(rows_a.double() ** 2, dim=dims)
        for head in range(rows_a.shape[0]):
            acc = sums.setdefault((module, layer, head), [0.0, 0.0])
            acc[0] += float(diff_sq[head])
            acc[1] += float(base_sq[head])
    rows = []
    for (module, layer, head), (diff_sq, base_sq) in sums.items():
        change = diff_sq**0.5
        if relative:
            change = change / base_sq**0.5 if base_sq else float("nan")
        rows.append({"module": module, "layer": layer, "head": head, "change": change})
    return pd.DataFrame(rows, columns=["module", "layer", "head", "change"]).sort_values(
        ["module", "layer", "head"], ignore_index=True
    )


def _as_weight(name: str) -> str:
    """A bias name as its weight's name, so both parse to the same (module, layer)."""
    return name[: -len(".bias")] + ".weight" if name.endswith(".bias") else name


class ChangeRankedFreeze(Strategy):
    """Freeze what changed most from the base to the Phase-1 model (see the module docstring)."""

    NEEDS = frozenset({"base"})

    def __init__(
        self,
        k: Annotated[int, Field(ge=1, description="layers per head and module (paper: 10); top_heads: slices per module")] = 10,
        modules: Annotated[Sequence[str], Field(min_length=1, description="projections ranked and frozen")] = HEAD_MODULES,
        selection: Annotated[
            Literal["per_head", "layer", "top_heads"],
            Field(description="per_head: the paper's per-head choice; layer: whole matrices; top_heads: k slices anywhere"),
        ] = "per_head",
        change: Annotated[
            Literal["norm", "relative"], Field(description="norm: ||W_p1 - W_base|| (the paper); relative: divided by ||W_base||")
        ] = "norm",
        lr: PhaseLR = None,
    ):
        self.lr = lr
        self.k = k
        self.modules = list(modules or [])
        self.selection = selection
        self.change = change
        self.selected: dict[str, list] = {}
        self.table: pd.DataFrame | None = None
        self._masks: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._hooks: list[Any] = []  # handles of the gradient hooks (removed by finalize)
        self._hooked: set[int] = set()  # ids of the parameters whose gradient a hook masked since the last step
        self.late_masks = 0  # gradients masked at the optimizer step instead (a hook did not see them)
        self._report: dict[str, Any] = {}

    # -------------------------------------------------------------- options

    def validate(self, model_config) -> None:
        if self.selection not in SELECTIONS:
            raise ConfigError(f"strategy.selection={self.selection!r} must be one of {', '.join(SELECTIONS)}")
        if self.change not in ("norm", "relative"):
            raise ConfigError(f"strategy.change={self.change!r} must be 'norm' or 'relative'")
        check_modules("strategy.modules", self.modules, model_config)
        n = int(model_config.num_hidden_layers)
        if self.selection in ("layer", "per_head"):
            what = f"the model has {n} layers" + (", ranked per head" if self.selection == "per_head" else "")
            check_count("strategy.k", self.k, n, what)
        if self.selection == "layer":
            return
        bad = [m for m in self.modules if m not in HEAD_MODULES]
        if bad:
            raise ConfigError(f"strategy.modules={bad}: selection={self.selection} applies to {list(HEAD_MODULES)} only")
        if self.selection == "top_heads":
            heads = self._heads(model_config)
            fewest = min(heads[m] for m in self.modules) * n
            check_count("strategy.k", self.k, fewest, f"heads per module over all {n} layers")

    def trainable_share(self, shape) -> float:
        """selection=layer freezes whole matrices (requires_grad=False: no gradient, no optimizer state): k
        layers of each module are left out of the memory estimate. The head selections mask gradient rows
        of matrices that still train, which keep their full gradients and optimizer states: all of it counts."""
        if self.selection != "layer":
            return 1.0
        return 1.0 - shape.frozen_share(min(self.k, shape.layers), self.modules)

    @staticmethod
    def _heads(config) -> dict[str, int]:
        q = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or q)
        return {"q_proj": q, "k_proj": kv, "v_proj": kv}

    # -------------------------------------------------------------- the change table

    def changes(self, ctx: StrategyContext, model_config) -> pd.DataFrame:
        """The change table base -> Phase 1, cached by (base, Phase-1 model, selection, change)."""
        from cft.models.handle import Checkpoint

        base = (ctx.base or Checkpoint(ctx.base_ref, key="", what="base model")).folder()
        phase1 = (ctx.phase1 or Checkpoint(str(ctx.phase1_dir), key="", what="Phase-1 model")).folder()
        per_layer = self.selection == "layer"
        spec = {
            "base": ctx.base.key if ctx.base is not None else str(ctx.base_ref),
            "phase1": ctx.phase1_key or str(ctx.phase1_dir),
            "unit": "layer" if per_layer else "head",
            "change": self.change,
            "version": 2,
        }

        def build(tmp: Path) -> None:
            if per_layer:
                from cft.measures.layers import layer_changes, rank_layers

                frame = layer_changes(base, phase1)
                if self.change == "norm":
                    frame["change"] = frame["abs_change"]
                frame = rank_layers(frame)[["module", "layer", "change", "rank"]]
            else:
                frame = head_changes(base, phase1, HEAD_MODULES, head_dims(model_config), relative=self.change == "relative")
            frame.to_csv(tmp / "changes.csv", index=False)

        path = ctx.artifact("layer_changes", spec, build)
        return pd.read_csv(path / "changes.csv")

    def prepare(self, model, ctx: StrategyContext):
        frame = self.changes(ctx, model.config).copy()  # every module's change, for the logged table
        ranked = frame[frame["module"].isin(self.modules)]
        if ranked.empty or not (ranked["change"].fillna(0) > 0).any():
            raise ConfigError(
                "lf_h2 ranks layers by how much Phase 1 changed them, but every change from the base to the Phase-1 "
                "model is zero: they are the same weights (is model.base the Phase-1 checkpoint?). Give the base model the "
                "Phase-1 model was trained from, or choose another strategy (e.g. lf_h1)."
            )
        frame["frozen"] = False
        if self.selection == "layer":
            self._select_layers(frame)
        elif self.selection == "per_head":
            self._select_per_head(frame)
        else:
            self._select_top_heads(frame)
        order = ["module", "layer"] + (["head"] if "head" in frame else [])
        self.table = frame.sort_values(order).reset_index(drop=True)
        self._warn_ties(frame)
        if self.selection == "layer":
            chosen = {(m, layer) for m, layers in self.selected.items() for layer in layers}
            frozen = freeze(model, lambda name: param_layer_module(name)[::-1] in chosen)
            self._report = {f"frozen/{m}": layers_text(v) for m, v in self.selected.items()}
            self._report["frozen_tensors"] = len(frozen)
        else:
            self._mask_heads(model)
        self._report.update({"k": self.k, "selection": self.selection, "change": self.change, **parameter_report(model)})
        write_csv(ctx.run_dir / "lf_h2_frozen.csv", list(self.table.columns), self.table.values.tolist())
        log.info("lf_h2 (%s) freezes %s", self.selection, {k: v for k, v in self._report.items() if k.startswith("frozen")})
        return model

    # -------------------------------------------------------------- selections (ties: lower layer, then head, first)

    def _select_layers(self, frame: pd.DataFrame) -> None:
        for module in self.modules:
            rows = frame[frame["module"] == module].sort_values(["change", "layer"], ascending=[False, True]).head(self.k)
            self.selected[module] = sorted(int(x) for x in rows["layer"])
            frame.loc[rows.index, "frozen"] = True

    def _select_per_head(self, frame: pd.DataFrame) -> None:
        frame["rank"] = 0
        for module in self.modules:
            units = []
            part = frame[frame["module"] == module]
            for _head, rows in part.groupby("head"):
                ordered = rows.sort_values(["change", "layer"], ascending=[False, True])
                frame.loc[ordered.index, "rank"] = range(1, len(ordered) + 1)
                top = ordered.head(self.k)
                frame.loc[top.index, "frozen"] = True
                units += [(int(r.layer), int(r.head)) for r in top.itertuples()]
            self.selected[module] = sorted(units)

    def _select_top_heads(self, frame: pd.DataFrame) -> None:
        for module in self.modules:
            part = frame[frame["module"] == module]
            top = part.sort_values(["change", "layer", "head"], ascending=[False, True, True]).head(self.k)
            frame.loc[top.index, "frozen"] = True
            self.selected[module] = sorted((int(r.layer), int(r.head)) for r in top.itertuples())

    def _warn_ties(self, frame: pd.DataFrame) -> None:
        """Say so when the last chosen and the first left-out unit changed equally (ties go to the lower layer)."""
        groups = ["module"] + (["head"] if self.selection == "per_head" else [])
        for key, part in frame[frame["module"].isin(self.modules)].groupby(groups):
            chosen, left = part[part["frozen"]], part[~part["frozen"]]
            if len(chosen) and len(left) and chosen["change"].min() == left["change"].max():
                log.warning(
                    "lf_h2: a tie at the cut of %s (change %.3g): the lower layer was chosen", key, chosen["change"].min()
                )

    # -------------------------------------------------------------- head slices: gradient masks

    def _mask_heads(self, model) -> None:
        head_dim = head_dims(model.config)
        by_param: dict[tuple[int, str], list[int]] = {}
        for module, units in self.selected.items():
            for layer, head in units:
                by_param.setdefault((layer, module), []).append(head)
        slices = 0
        for name, param in model.named_parameters():
            layer, module = param_layer_module(name)
            if (layer, module) in by_param and param.requires_grad:  # weight rows (and bias entries) of the heads
                keep = torch.ones(full_shape(param)[0])
                for head in by_param[(layer, module)]:
                    keep[head * head_dim : (head + 1) * head_dim] = 0.0
                self._masks.append((param, keep))
                self._hooks.append(param.register_hook(self._masker(param, keep)))
                slices += len(by_param[(layer, module)]) if name.endswith(".weight") else 0
        self._report = {f"frozen/{m}/slices": len(v) for m, v in self.selected.items()}
        if self.selection == "top_heads":
            self._report.update({f"frozen/{m}": ",".join(f"L{layer}H{h}" for layer, h in v) for m, v in self.selected.items()})
        self._report["frozen_slices"] = slices
        self._report["masked_tensors"] = len(self._masks)
        frozen = sum(len(v) for v in by_param.values()) * head_dim * int(model.config.hidden_size)
        self._report["frozen_weights"] = frozen

    def _masker(self, param, keep: torch.Tensor):
        """A gradient hook zeroing the frozen rows of `param`'s gradient as backward computes it (full shape,
        before any reduction); a gradient of another shape (a partition) is left to on_before_optimizer_step."""
        ready: dict[tuple, torch.Tensor] = {}
        key = id(param)

        def hook(grad: torch.Tensor) -> torch.Tensor:
            if grad.dim() == 0 or grad.shape[0] != keep.numel():
                return grad
            mask = ready.get((grad.device, grad.dtype))
            if mask is None:
                mask = ready[(grad.device, grad.dtype)] = keep.to(grad.device, grad.dtype).view(-1, *[1] * (grad.dim() - 1))
            self._hooked.add(key)
            return grad * mask

        return hook

    def on_before_optimizer_step(self, model) -> None:
        # Zero gradients keep the frozen head rows at their Phase-1 values under AdamW with weight_decay 0
        # (the paper's setting): both moments stay 0, so the update is 0. The hooks did it during backward;
        # only a gradient they did not see is masked here.
        for param, keep in self._masks:
            if id(param) not in self._hooked:
                self.late_masks += scale_grad(param, keep, dim=0)
        self._hooked.clear()

    def finalize(self, model, ctx: StrategyContext):
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        return model

    def report(self) -> dict[str, Any]:
        return dict(self._report)

    def tables(self):
        if self.table is None:
            return {}
        return {"lf_h2_changes": (list(self.table.columns), self.table.values.tolist())}
