"""`lf_h2`: layer freezing, heuristic 2 of arXiv 2410.16006 -- freeze, separately for the query,
key and value projections, the k layers (paper: k = 10) whose weights changed most from the base
model to the Phase-1 model, since those hold what Phase 1 taught (task ability).

The change of a module in a layer is the relative Frobenius norm ||W_p1 - W_base|| / ||W_base||,
computed by `cft.measures.layers` streaming both checkpoints tensor by tensor (never two models in memory).
With `granularity: head` the unit is an attention head's slice of q/k/v (its rows); the k heads
that changed most per module keep their Phase-1 values by having their gradient rows zeroed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cft.errors import CftError, ConfigError
from cft.strategies.base import (
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


def local_checkpoint(ref: str | Path, what: str) -> Path:
    """A local folder for a checkpoint given as a folder or hub id (the hub's cache; offline it must be there)."""
    path = Path(str(ref)).expanduser()
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(ref), allow_patterns=["*.safetensors", "*.json"]))
    except Exception as exc:  # the hub client raises many types; all mean "not available locally"
        raise CftError(
            f"lf_h2 needs the safetensors weights of the {what} '{ref}' on disk: {exc}. "
            "Download it once and pass its local path (model.base= / model.instruct=)."
        ) from exc


def head_changes(ref_a: Path, ref_b: Path, modules: Sequence[str], head_dim: int) -> pd.DataFrame:
    """Relative change of each head's row slice of the given projections, streamed tensor by tensor."""
    from cft.measures.layers import checkpoint_index, iter_tensor_pairs, parse_name

    names = [
        n
        for n in checkpoint_index(ref_a)
        if n.endswith(".weight") and parse_name(n)[1] is not None and parse_name(n)[0] in modules
    ]
    rows = []
    for name, wa, wb in iter_tensor_pairs(ref_a, ref_b, names):
        module, layer = parse_name(name)
        heads_a, heads_b = wa.view(-1, head_dim, wa.shape[-1]), wb.view(-1, head_dim, wb.shape[-1])
        norm_a = torch.linalg.vector_norm(heads_a, dim=(1, 2))
        diff = torch.linalg.vector_norm(heads_b - heads_a, dim=(1, 2))
        for head in range(heads_a.shape[0]):
            na = float(norm_a[head])
            rows.append(
                {"module": module, "layer": layer, "head": head, "change": float(diff[head]) / na if na else float("nan")}
            )
    return pd.DataFrame(rows, columns=["module", "layer", "head", "change"])


class ChangeRankedFreeze(Strategy):
    """Freeze, per module in `modules`, the k layers (or heads) that changed most in Phase 1."""

    NEEDS = frozenset({"base"})

    def __init__(self, k: int = 10, modules: Sequence[str] = HEAD_MODULES, granularity: str = "layer"):
        self.k = k
        self.modules = list(modules or [])
        self.granularity = granularity
        self.selected: dict[str, list] = {}
        self.table: pd.DataFrame | None = None
        self._masks: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._report: dict[str, Any] = {}

    def validate(self, model_config) -> None:
        if self.granularity not in ("layer", "head"):
            raise ConfigError(f"strategy.granularity={self.granularity!r} must be 'layer' or 'head'")
        check_modules("strategy.modules", self.modules, model_config)
        n = int(model_config.num_hidden_layers)
        if self.granularity == "layer":
            check_count("strategy.k", self.k, n, f"the model has {n} layers")
            return
        bad = [m for m in self.modules if m not in HEAD_MODULES]
        if bad:
            raise ConfigError(f"strategy.modules={bad}: granularity=head applies to {list(HEAD_MODULES)} only")
        heads = {"q_proj": int(model_config.num_attention_heads)}
        heads["k_proj"] = heads["v_proj"] = int(getattr(model_config, "num_key_value_heads", None) or heads["q_proj"])
        fewest = min(heads[m] for m in self.modules) * n
        check_count("strategy.k", self.k, fewest, f"heads per module over all {n} layers")

    # -------------------------------------------------------------- the change table

    def changes(self, ctx: StrategyContext, model_config) -> pd.DataFrame:
        """The change table base -> Phase 1, cached by (base, Phase-1 model, granularity)."""
        base = ctx.base.folder() if ctx.base is not None else local_checkpoint(ctx.base_ref, "base model")
        phase1 = ctx.phase1.folder() if ctx.phase1 is not None else local_checkpoint(ctx.phase1_dir, "Phase-1 model")
        spec = {"base": str(ctx.base_ref), "phase1": ctx.phase1_key or str(ctx.phase1_dir), "granularity": self.granularity}

        def build(tmp: Path) -> None:
            if self.granularity == "layer":
                from cft.measures.layers import layer_changes, rank_layers

                frame = rank_layers(layer_changes(base, phase1))[["module", "layer", "change", "rank"]]
            else:
                head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
                frame = head_changes(base, phase1, HEAD_MODULES, int(head_dim))
                frame["rank"] = frame.groupby("module")["change"].rank(ascending=False, method="first").astype(int)
            frame.to_csv(tmp / "changes.csv", index=False)

        path = ctx.artifact("layer_changes", spec, build)
        return pd.read_csv(path / "changes.csv")

    def prepare(self, model, ctx: StrategyContext):
        frame = self.changes(ctx, model.config).copy()  # every module's change, for the logged table
        frame["frozen"] = False
        for module in self.modules:
            if self.granularity == "layer":
                from cft.measures.layers import top_k_layers

                self.selected[module] = top_k_layers(frame, module, self.k)
                frame.loc[(frame["module"] == module) & frame["layer"].isin(self.selected[module]), "frozen"] = True
            else:
                rows = (
                    frame[frame["module"] == module]
                    .sort_values(["change", "layer", "head"], ascending=[False, True, True])
                    .head(self.k)
                )
                frame.loc[rows.index, "frozen"] = True
                self.selected[module] = sorted((int(r.layer), int(r.head)) for r in rows.itertuples())
        self.table = frame.sort_values(["module", "layer"] + (["head"] if "head" in frame else [])).reset_index(drop=True)

        if self.granularity == "layer":
            chosen = {(m, layer) for m, layers in self.selected.items() for layer in layers}
            frozen = freeze(model, lambda name: param_layer_module(name)[::-1] in chosen)
            self._report = {f"frozen/{m}": layers_text(v) for m, v in self.selected.items()}
            self._report["frozen_tensors"] = len(frozen)
        else:
            head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
            by_param: dict[tuple[int, str], list[int]] = {}
            for module, units in self.selected.items():
                for layer, head in units:
                    by_param.setdefault((layer, module), []).append(head)
            for name, param in model.named_parameters():
                layer, module = param_layer_module(name)
                if (layer, module) in by_param and param.requires_grad:  # weight rows (and bias entries) of a head
                    keep = torch.ones(full_shape(param)[0])
                    for head in by_param[(layer, module)]:
                        keep[head * head_dim : (head + 1) * head_dim] = 0.0
                    self._masks.append((param, keep))
            self._report = {f"frozen/{m}": ",".join(f"L{layer}H{h}" for layer, h in v) for m, v in self.selected.items()}
            self._report["masked_tensors"] = len(self._masks)
        self._report.update({"k": self.k, "granularity": self.granularity, **parameter_report(model)})
        write_csv(ctx.run_dir / "lf_h2_frozen.csv", list(self.table.columns), self.table.values.tolist())
        log.info("lf_h2 freezes %s", {m: self._report[f"frozen/{m}"] for m in self.modules})
        return model

    def on_before_optimizer_step(self, model) -> None:
        # Zero gradients keep the frozen head rows at their Phase-1 values under AdamW with weight_decay 0
        # (the paper's setting): both moments stay 0, so the update is 0.
        for param, keep in self._masks:
            scale_grad(param, keep, dim=0)

    def report(self) -> dict[str, Any]:
        return dict(self._report)

    def tables(self):
        if self.table is None:
            return {}
        return {"lf_h2_changes": (list(self.table.columns), self.table.values.tolist())}
