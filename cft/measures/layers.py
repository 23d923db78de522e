"""Per-layer, per-module change between two checkpoints, and its ranks.

The relative change of a weight matrix from checkpoint A to checkpoint B is
`||W_B - W_A||_F / ||W_A||_F`. It is computed by streaming the two safetensors checkpoints
tensor by tensor (one pair of tensors in memory at a time), so comparing two 7B checkpoints
needs no more memory than their largest tensor, never two models.

This is what the paper's layer analysis ranks (base -> Phase 1 and Phase 1 -> Phase 2, per
module type and layer), and what the LF_H2 strategy uses to choose the layers it freezes:
`top_k_layers(changes, "q_proj", k)` gives the k layers whose q_proj moved most in Phase 1.

Tensor names follow the Llama/Mistral layout `model.layers.<i>.<block>.<module>.weight`;
tensors outside the decoder layers (embeddings, final norm, lm_head) get `layer = None`.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import torch

from cft.errors import CftError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:.+\.)?([^.]+)\.weight$")
OUTER_RE = re.compile(r"(?:^|\.)([^.]+)\.weight$")
# The columns of a layer-change table (one record per weight tensor).
COLUMNS = ["name", "module", "layer", "change", "abs_change", "norm_a"]


def parse_name(name: str) -> tuple[str, int | None]:
    """(module, layer) of a tensor name: 'model.layers.3.self_attn.q_proj.weight' -> ('q_proj', 3)."""
    m = LAYER_RE.search(name)
    if m:
        return m.group(2), int(m.group(1))
    m = OUTER_RE.search(name)
    return (m.group(1) if m else name), None


def checkpoint_index(ref: str | Path) -> dict[str, Path]:
    """Map each tensor name of a safetensors checkpoint folder (single file or sharded) to its file."""
    from safetensors import safe_open

    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        files = [path]
    elif not path.is_dir():
        raise CftError(f"checkpoint not found: {path} (expected a folder saved with save_pretrained)")
    elif (path / INDEX_FILE).exists():
        try:
            weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CftError(f"{path / INDEX_FILE}: not a valid safetensors index ({exc})") from None
        return {name: path / file for name, file in weight_map.items()}
    elif (path / SINGLE_FILE).exists():
        files = [path / SINGLE_FILE]
    else:
        files = sorted(path.glob("*.safetensors"))
        if not files:
            bins = sorted(p.name for p in path.glob("*.bin"))
            hint = f" It holds {', '.join(bins)}: re-save it with save_pretrained(safe_serialization=True)." if bins else ""
            raise CftError(f"no safetensors weights in {path}.{hint}")
    index: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                index[name] = file
    return index


class _Reader:
    """Reads single tensors from a checkpoint, keeping one open handle per shard (memory-mapped)."""

    def __init__(self, index: dict[str, Path]):
        self.index = index
        self._handles: dict[Path, object] = {}

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        file = self.index[name]
        if file not in self._handles:
            self._handles[file] = safe_open(str(file), framework="pt")
        return self._handles[file].get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        from safetensors import safe_open

        file = self.index[name]
        if file not in self._handles:
            self._handles[file] = safe_open(str(file), framework="pt")
        return tuple(self._handles[file].get_slice(name).get_shape())


def iter_tensor_pairs(
    ref_a: str | Path, ref_b: str | Path, names: Iterable[str] | None = None
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """Yield (name, tensor_a, tensor_b) as float32, one pair at a time, in sorted name order.

    Raises CftError when the two checkpoints do not hold the same tensor names and shapes
    (they must be fine-tuned from the same base, with any LoRA adapters merged).
    """
    index_a, index_b = checkpoint_index(ref_a), checkpoint_index(ref_b)
    only_a, only_b = sorted(set(index_a) - set(index_b)), sorted(set(index_b) - set(index_a))
    if only_a or only_b:
        raise CftError(
            f"checkpoints {ref_a} and {ref_b} hold different tensors "
            f"(only in the first: {only_a[:5]}{'...' if len(only_a) > 5 else ''}; "
            f"only in the second: {only_b[:5]}{'...' if len(only_b) > 5 else ''}). "
            "They must be fine-tuned from the same base model, with LoRA adapters merged."
        )
    reader_a, reader_b = _Reader(index_a), _Reader(index_b)
    wanted = sorted(index_a) if names is None else list(names)
    mismatched = [(n, reader_a.shape(n), reader_b.shape(n)) for n in wanted if reader_a.shape(n) != reader_b.shape(n)]
    if mismatched:
        name, sa, sb = mismatched[0]
        raise CftError(
            f"checkpoints {ref_a} and {ref_b} disagree in {len(mismatched)} tensor shape(s), "
            f"e.g. {name}: {list(sa)} vs {list(sb)}. They must share one architecture."
        )
    for name in wanted:
        yield name, reader_a.get(name).float(), reader_b.get(name).float()


def layer_changes(ref_a: str | Path, ref_b: str | Path, *, matrices_only: bool = True) -> pd.DataFrame:
    """Relative change ||W_b - W_a||_F / ||W_a||_F of every weight tensor from checkpoint A to B.

    Returns one row per tensor with the columns `COLUMNS` (module, layer as in `parse_name`;
    `change` is NaN where ||W_a|| is 0). With `matrices_only`, 1-D tensors (norm scales, biases)
    are left out, since the paper ranks the projection matrices.
    """
    rows = []
    for name, wa, wb in iter_tensor_pairs(ref_a, ref_b):
        if not name.endswith(".weight") or (matrices_only and wa.dim() < 2):
            continue
        module, layer = parse_name(name)
        norm_a = float(torch.linalg.vector_norm(wa))
        diff = float(torch.linalg.vector_norm(wb - wa))
        rows.append(
            {
                "name": name,
                "module": module,
                "layer": layer,
                "change": diff / norm_a if norm_a else math.nan,
                "abs_change": diff,
                "norm_a": norm_a,
            }
        )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["layer"] = frame["layer"].astype("Int64")
    return frame


def rank_layers(changes: pd.DataFrame) -> pd.DataFrame:
    """Add a `rank` column: within each module type, 1 is the decoder layer that changed most.

    Tensors outside the decoder layers are dropped (they have no layer to rank).
    """
    # Sorted by layer first, so equal changes rank in layer order (not in the string order of tensor names).
    frame = changes[changes["layer"].notna()].sort_values(["module", "layer"]).copy()
    # A non-finite change (weights gone NaN) ranks last rather than breaking the table.
    frame["rank"] = frame.groupby("module")["change"].rank(ascending=False, method="first", na_option="bottom").astype(int)
    return frame.reset_index(drop=True)


def top_k_layers(changes: pd.DataFrame, module: str, k: int) -> list[int]:
    """The k layer indices whose `module` (e.g. 'q_proj') changed most, sorted by layer index.

    Raises CftError when the module is unknown or k is larger than the number of layers.
    """
    frame = changes[(changes["module"] == module) & changes["layer"].notna()]
    if frame.empty:
        known = sorted(set(changes.loc[changes["layer"].notna(), "module"]))
        raise CftError(f"no layer-wise tensors of module {module!r} in the layer changes (modules: {known})")
    if not 0 <= k <= len(frame):
        raise CftError(f"k={k} layers requested for {module}, but the model has {len(frame)} layers")
    top = frame.sort_values(["change", "layer"], ascending=[False, True]).head(k)
    return sorted(int(x) for x in top["layer"])


def change_matrix(changes: pd.DataFrame, modules: Iterable[str] | None = None) -> pd.DataFrame:
    """A module x layer matrix of relative changes (rows in `modules` order when given), for heatmaps."""
    frame = changes[changes["layer"].notna()]
    matrix = frame.pivot_table(index="module", columns="layer", values="change", aggfunc="mean")
    if modules is not None:
        matrix = matrix.reindex([m for m in modules if m in matrix.index])
    matrix.columns = [int(c) for c in matrix.columns]
    return matrix


def transition_changes(base: str | Path, phase1: str | Path, phase2: str | Path | None = None) -> pd.DataFrame:
    """Ranked layer changes for base -> Phase 1 and (when given) Phase 1 -> Phase 2, stacked with a
    `transition` column ('base->phase1', 'phase1->phase2'): the table a run writes as layer_changes.csv."""
    parts = [rank_layers(layer_changes(base, phase1)).assign(transition="base->phase1")]
    if phase2 is not None:
        parts.append(rank_layers(layer_changes(phase1, phase2)).assign(transition="phase1->phase2"))
    frame = pd.concat(parts, ignore_index=True)
    return frame[["transition", "module", "layer", "change", "rank", "abs_change", "norm_a", "name"]]


def per_layer_sq_norms(pairs: Iterable[tuple[str, torch.Tensor, torch.Tensor]]) -> tuple[dict[int | None, float], float]:
    """Sum of squared differences per decoder layer (None: outside the layers) and in total."""
    per_layer: dict[int | None, float] = defaultdict(float)
    total = 0.0
    for name, wa, wb in pairs:
        sq = float(torch.sum((wb - wa).double() ** 2)) if wa.numel() < 2**26 else float(torch.linalg.vector_norm(wb - wa)) ** 2
        per_layer[parse_name(name)[1]] += sq
        total += sq
    return dict(per_layer), total
