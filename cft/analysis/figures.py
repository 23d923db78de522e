"""Figures of a sweep and of the representation analysis, as PNG and SVG (matplotlib, Agg backend).

Each function draws one figure, saves `<out_dir>/<stem>.png` and `.svg`, and returns the PNG path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cft.analysis.tables import Table  # noqa: E402

MODULE_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_figure(fig, out_dir: str | Path, stem: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=150)
    fig.savefig(out_dir / f"{stem}.svg")
    plt.close(fig)
    return png


def _row_label(idx: Mapping[str, str]) -> str:
    return f"{idx.get('model', '?')} / {idx.get('strategy', '?')}\n{idx.get('phase1_data', '?')} → {idx.get('phase2_data', '?')}"


def phase_bars(summary: Table, out_dir: str | Path, stem: str = "ta_la_phases") -> Path:
    """TA and LA averages after Phase 1 and Phase 2 per cell (error bars: std over seeds)."""
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(summary.index) + 4), 4.5), sharey=False)
    x = np.arange(len(summary.index))
    for ax, ability in zip(axes, ("TA", "LA")):
        for k, (phase, color) in enumerate((("P1", "#9ecae1"), ("P2", "#08519c"))):
            j = summary.columns.index(f"{ability} {phase}")
            stats = [row[j] for row in summary.cells]
            means = [np.nan if s is None else s.mean * 100 for s in stats]
            errs = [0 if s is None or s.std is None else s.std * 100 for s in stats]
            ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=errs, capsize=3, color=color, label=f"Phase {phase[1]}")
        ax.set_title(f"{ability} average")
        ax.set_ylabel(f"{ability} (%)")
        ax.set_xticks(x, [_row_label(i) for i in summary.index], rotation=30, ha="right", fontsize=8)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Task ability (TA) and language ability (LA), Phase 1 vs Phase 2")
    return save_figure(fig, out_dir, stem)


def tradeoff(summary: Table, out_dir: str | Path, stem: str = "ta_la_tradeoff") -> Path:
    """Change in TA vs change in LA from Phase 1 to Phase 2, one point per cell."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    cols = {c: summary.columns.index(c) for c in summary.columns}
    for idx, row in zip(summary.index, summary.cells):
        p = [row[cols[c]] for c in ("TA P1", "TA P2", "LA P1", "LA P2")]
        if any(s is None for s in p):
            continue
        dta, dla = (p[1].mean - p[0].mean) * 100, (p[3].mean - p[2].mean) * 100
        ax.scatter(dta, dla, s=40)
        ax.annotate(
            f"{idx['model']}/{idx['strategy']} ({idx['phase1_data']}→{idx['phase2_data']})",
            (dta, dla),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("ΔTA, Phase 2 − Phase 1 (points)")
    ax.set_ylabel("ΔLA, Phase 2 − Phase 1 (points)")
    ax.set_title("Forgetting (left) vs language gain (up)")
    ax.grid(alpha=0.3)
    return save_figure(fig, out_dir, stem)


def layer_change_heatmap(
    changes: pd.DataFrame, out_dir: str | Path, stem: str = "layer_changes", title: str = "", value: str = "rank"
) -> Path:
    """Module x layer heatmap of layer-change ranks (or `value="change"`), one panel per transition."""
    transitions = list(dict.fromkeys(changes["transition"])) if "transition" in changes else [None]
    fig, axes = plt.subplots(
        len(transitions), 1, figsize=(max(6, 0.35 * changes["layer"].nunique() + 3), 2.6 * len(transitions) + 0.6), squeeze=False
    )
    for ax, tr in zip(axes[:, 0], transitions):
        part = changes if tr is None else changes[changes["transition"] == tr]
        part = part[part["layer"].notna()]
        matrix = part.pivot_table(index="module", columns="layer", values=value, aggfunc="mean")
        matrix = matrix.reindex(
            [m for m in MODULE_ORDER if m in matrix.index] + [m for m in matrix.index if m not in MODULE_ORDER]
        )
        cmap = "viridis_r" if value == "rank" else "viridis"
        im = ax.imshow(matrix.values.astype(float), aspect="auto", cmap=cmap)
        ax.set_yticks(range(len(matrix.index)), matrix.index)
        ax.set_xticks(range(len(matrix.columns)), [int(c) for c in matrix.columns], fontsize=7)
        ax.set_xlabel("layer")
        ax.set_title(f"{tr or ''} ({'rank, 1 = largest relative change' if value == 'rank' else 'relative change'})")
        fig.colorbar(im, ax=ax, fraction=0.03)
    fig.suptitle(title or "Per-layer relative change ||ΔW||/||W||")
    return save_figure(fig, out_dir, stem)


def des_heatmap(matrix: pd.DataFrame, out_dir: str | Path, stem: str = "des") -> Path:
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2.5, 1.0 * n + 1.8))
    im = ax.imshow(matrix.values, vmin=min(0.0, float(matrix.values.min())), vmax=1.0, cmap="magma")
    ax.set_xticks(range(n), matrix.columns, rotation=30, ha="right")
    ax.set_yticks(range(n), matrix.index)
    for i in range(n):
        for j in range(n):
            v = matrix.values[i, j]
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title("Dataset embedding similarity (DES)")
    return save_figure(fig, out_dir, stem)


def mpd_layers(per_cell: Mapping[str, Mapping[int, float]], out_dir: str | Path, stem: str = "mpd_layers") -> Path:
    """Per-layer MPD per cell, normalised by the largest value of all cells and layers shown."""
    top = max((v for layers in per_cell.values() for v in layers.values()), default=0.0) or 1.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, layers in per_cell.items():
        xs = sorted(layers)
        ax.plot(xs, [layers[x] / top for x in xs], marker="o", ms=3, label=label)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("MPD (normalised)")
    ax.set_title("Per-layer distance to the base fine-tuned on the Phase-2 data alone")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, out_dir, stem)


def line_per_layer(series: Mapping[str, Sequence[float]], out_dir: str | Path, stem: str, *, title: str, ylabel: str) -> Path:
    """One line per label over layers (e.g. covariance-difference norms per strategy)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in series.items():
        ax.plot(range(len(values)), values, marker="o", ms=3, label=label)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out_dir, stem)


def tsne_scatter(points: pd.DataFrame, out_dir: str | Path, stem: str = "tsne", title: str = "t-SNE of mean activations") -> Path:
    fig, ax = plt.subplots(figsize=(6, 5))
    for model, part in points.groupby("model", sort=False):
        ax.scatter(part["x"], part["y"], s=14, alpha=0.75, label=str(model))
    ax.set_title(title)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.legend()
    return save_figure(fig, out_dir, stem)


def cross_lingual(frame: pd.DataFrame, out_dir: str | Path, stem: str = "cross_lingual") -> Path:
    series = {lang: part.sort_values("layer")["similarity"].tolist() for lang, part in frame.groupby("language")}
    return line_per_layer(
        series, out_dir, stem, title="Cross-lingual similarity to English per layer (FLORES-200)", ylabel="mean cosine similarity"
    )


def safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")
