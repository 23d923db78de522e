"""`spectrum`: Spectrum (Hartford et al. 2024, arXiv 2406.06623), the layer-selection baseline of
arXiv 2410.16006's published version -- train only the modules whose weight matrices carry the
most signal relative to noise, freezing the rest.

For each matrix W (n x m), with singular values S: the noise level sigma is estimated from the
interquartile range of S (IQR / 1.349), the Marchenko-Pastur bound of pure noise singular values
is sigma * (1 + sqrt(beta)) with beta = min(n, m) / max(n, m), and SNR = (sum of S above the
bound) / (sum of S at or below it) / max(S). Within each module type (q_proj across layers, ...),
the top `fraction` of layers by SNR train.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import torch
from pydantic import Field
from tqdm.auto import tqdm

from cft.strategies.base import (
    PhaseLR,
    Strategy,
    StrategyContext,
    check_modules,
    check_ratio,
    freeze,
    layers_text,
    param_layer_module,
    parameter_report,
    write_csv,
)
from cft.training.gradients import full_shape, full_value

DEFAULT_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def snr(weight: torch.Tensor) -> float:
    """Spectrum's signal-to-noise ratio of a weight matrix (see the module docstring)."""
    device = "cuda" if torch.cuda.is_available() else weight.device  # SVDs of 7B matrices are slow on CPU
    s = torch.linalg.svdvals(weight.detach().to(device, torch.float64)).cpu()
    q1, q3 = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=s.dtype))
    sigma = float(q3 - q1) / 1.349
    n, m = weight.shape[-2:]
    beta = min(n, m) / max(n, m)
    bound = sigma * (1 + math.sqrt(beta))
    signal, noise = float(s[s > bound].sum()), float(s[s <= bound].sum())
    return (signal / noise if noise else math.inf) / float(s[0])


def top_count(fraction: float, n: int) -> int:
    """Layers to train per module type: ceil(fraction x n), so a small model trains at least one."""
    return max(1, math.ceil(fraction * n - 1e-9))


class Spectrum(Strategy):
    def __init__(
        self,
        fraction: Annotated[float, Field(gt=0, le=1, description="share of layers trained per module type, by SNR")] = 0.25,
        modules: Annotated[Sequence[str], Field(min_length=1, description="module types ranked by SNR")] = DEFAULT_MODULES,
        lr: PhaseLR = None,
    ):
        self.lr = lr
        self.fraction = fraction
        self.modules = list(modules or [])
        self.rows: list[list[Any]] = []
        self.selected: dict[str, list[int]] = {}
        self._report: dict[str, Any] = {}

    def validate(self, model_config) -> None:
        check_ratio("strategy.fraction", self.fraction)
        check_modules("strategy.modules", self.modules, model_config)

    def prepare(self, model, ctx: StrategyContext):
        scores: dict[str, list[tuple[float, int]]] = {m: [] for m in self.modules}
        params = [
            (n, p)
            for n, p in model.named_parameters()
            if n.endswith(".weight") and len(full_shape(p)) == 2 and param_layer_module(n)[1] in scores
        ]
        for name, param in tqdm(params, desc="spectrum SNR", leave=False):
            layer, module = param_layer_module(name)
            scores[module].append((snr(full_value(param)), layer))
        self.rows = []
        for module, values in scores.items():
            ranked = sorted(values, key=lambda v: (-v[0], v[1]))
            keep = top_count(self.fraction, len(ranked))
            self.selected[module] = sorted(layer for _, layer in ranked[:keep])
            self.rows += [[module, layer, value, rank + 1, rank < keep] for rank, (value, layer) in enumerate(ranked)]
        chosen = {(m, layer) for m, layers in self.selected.items() for layer in layers}
        frozen = freeze(model, lambda name: param_layer_module(name)[::-1] not in chosen)
        self.rows.sort(key=lambda r: (r[0], r[1]))
        write_csv(ctx.run_dir / "spectrum_snr.csv", ["module", "layer", "snr", "rank", "trained"], self.rows)
        self._report = {f"trained/{m}": layers_text(v) for m, v in self.selected.items()}
        self._report.update({"fraction": self.fraction, "frozen_tensors": len(frozen), **parameter_report(model)})
        return model

    def report(self) -> dict[str, Any]:
        return dict(self._report)

    def tables(self):
        return {"spectrum_snr": (["module", "layer", "snr", "rank", "trained"], self.rows)} if self.rows else {}
