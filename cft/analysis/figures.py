"""Figures of a sweep and of the representation analysis (matplotlib, Agg backend).

Each function draws one figure and saves `<out_dir>/<stem>.png`, `.svg` and `.csv` (the numbers
drawn, one tidy row per mark, so a reader can check or redraw it) and returns the PNG path.
Labels never overlap: points are told apart by colour and marker with a legend, not by text
placed beside them, and cells of a sweep that differ in data or model get a panel each.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cft.analysis import paper  # noqa: E402
from cft.analysis.tables import Table, cell_keys, group_cells, languages, stat, task_names  # noqa: E402
from cft.run import keys  # noqa: E402

MARKERS = "osD^vP*Xh<>p"
QKV = {"q_proj": "Q", "k_proj": "K", "v_proj": "V"}


def save_figure(fig, out_dir: str | Path, stem: str, data: pd.DataFrame) -> Path:
    """Save the figure as PNG and SVG and the numbers it draws as CSV beside them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(out_dir / f"{stem}.svg", bbox_inches="tight")
    plt.close(fig)
    data.to_csv(out_dir / f"{stem}.csv", index=False)
    return png


def varying(indices: Sequence[Mapping[str, str]], names: Sequence[str]) -> list[str]:
    """The index keys whose value differs between rows (what a label must show)."""
    return [k for k in names if len({i.get(k, "") for i in indices}) > 1]


def cell_label(idx: Mapping[str, str], shown: Sequence[str]) -> str:
    """A row's label from the keys that differ: 'lf_h2', or 'llama / lf_h2', or 'alpaca → mopenorca / full'."""
    parts = []
    if "phase1_data" in shown or "phase2_data" in shown:
        parts.append(f"{idx.get('phase1_data', '?')} → {idx.get('phase2_data', '?')}")
    parts += [_short(idx[k]) for k in ("model", "strategy", "variant") if k in shown and idx.get(k)]
    return " / ".join(parts) or idx.get("strategy", "?")


def _short(text: str, limit: int = 40) -> str:
    """A label part that fits a tick: its start and its end (where an overrides folder's values differ)."""
    return text if len(text) <= limit else text[: limit // 2 - 1] + "…" + text[-(limit // 2 - 1) :]


def _strategy_styles(strategies: Sequence[str]) -> dict[str, tuple]:
    ordered = sorted(set(strategies), key=paper.strategy_key)
    colors = plt.get_cmap("tab10").colors
    return {s: (colors[i % len(colors)], MARKERS[i % len(MARKERS)]) for i, s in enumerate(ordered)}


def phase_bars(summary: Table, out_dir: str | Path, stem: str = "ta_la_phases") -> Path:
    """TA and LA averages after Phase 1 and Phase 2 per cell (error bars: std over seeds)."""
    shown = varying(summary.index, summary.index_cols) or ["strategy"]
    labels = [cell_label(i, shown) for i in summary.index]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(labels) + 4), 4.5))
    x = np.arange(len(labels))
    rows = []
    for ax, ability in zip(axes, ("TA", "LA")):
        for k, (phase, color) in enumerate((("phase1", "#9ecae1"), ("phase2", "#08519c"))):
            column = f"{ability} {paper.PHASE_SHORT[phase]}"
            j = summary.columns.index(column)
            stats = [row[j] for row in summary.cells]
            means = [np.nan if s is None else s.mean * 100 for s in stats]
            errs = [0 if s is None or s.std is None else s.std * 100 for s in stats]
            ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=errs, capsize=3, color=color, label=paper.PHASE_NAMES[phase])
            rows += [
                {"cell": label, "ability": ability, "phase": phase, "mean": m, "std": e, "n": 0 if s is None else s.n}
                for label, m, e, s in zip(labels, means, errs, stats)
            ]
        ax.set_title(f"{ability} average")
        ax.set_ylabel(f"{ability} (%)")
        ax.set_xticks(x, labels, rotation=30 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Task ability (TA) and language ability (LA), Phase 1 vs Phase 2 (bars: mean; lines: std over seeds)")
    fig.tight_layout()
    return save_figure(fig, out_dir, stem, pd.DataFrame(rows))


def tradeoff(runs: Sequence, out_dir: str | Path, stem: str = "ta_la_tradeoff") -> Path | None:
    """Change in TA (x) against change in LA (y) from Phase 1 to Phase 2, one point per strategy:
    its mean over seeds with two error bars in both directions, kept apart: the seed spread (std, thin
    with caps) and, where the runs record standard errors (`<key>_stderr`), the item error (thick and
    pale, no caps): the standard error over items of the mean change, sqrt(se1^2 + se2^2) per run (an
    unpaired bound: the tables' paired intervals are the test), propagated over seeds. The Phase-1
    model is the origin. One panel per data pair, model and overrides; a legend names the strategies."""
    d_ta = (keys.average("ta", phase="phase2"), keys.average("ta", phase="phase1"))
    d_la = (keys.average("la", phase="phase2"), keys.average("la", phase="phase1"))

    def delta(m, pair):
        a, b = m.get(pair[0]), m.get(pair[1])
        return (a - b) * 100 if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None

    def delta_se(m, pair):
        # The two phases' errors, taken as independent (the same items make the paired error smaller).
        a, b = m.get(keys.stderr(pair[0])), m.get(keys.stderr(pair[1]))
        return float(np.hypot(a, b)) * 100 if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None

    lower_la = any(keys.lower_is_better(d_la[0]) in r.metrics for r in runs)  # FLORES bits per byte

    row_keys = cell_keys(runs)
    panel_keys = [k for k in row_keys if k != "strategy"]
    panels = group_cells(runs, panel_keys)
    shown = varying([p for p, _ in panels], panel_keys)
    rows = []
    for panel, panel_runs in panels:
        for idx, rs in group_cells(panel_runs, row_keys):
            dta = stat([delta(r.metrics, d_ta) for r in rs], [delta_se(r.metrics, d_ta) for r in rs])
            dla = stat([delta(r.metrics, d_la) for r in rs], [delta_se(r.metrics, d_la) for r in rs])
            if dta is None or dla is None:
                continue
            rows.append(
                {
                    "panel": cell_label(panel, shown) if shown else "",
                    "strategy": idx["strategy"],
                    "seeds": min(dta.n, dla.n),
                    "delta_ta_mean": dta.mean,
                    "delta_ta_std": dta.std or 0.0,
                    "delta_la_mean": dla.mean,
                    "delta_la_std": dla.std or 0.0,
                    # nan where the runs record no standard errors (then no item bar is drawn)
                    "delta_ta_item_se": np.nan if dta.se is None else dta.se,
                    "delta_la_item_se": np.nan if dla.se is None else dla.se,
                }
            )
    if not rows:
        return None
    data = pd.DataFrame(rows)
    names = list(dict.fromkeys(data["panel"]))
    cols = min(len(names), 3)
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols + 2.2, 4.4 * nrows), squeeze=False)
    styles = _strategy_styles(list(data["strategy"]))
    for ax, name in zip(axes.flat, names):
        part = data[data["panel"] == name]
        ax.axhline(0, color="grey", lw=0.8, zorder=0)
        ax.axvline(0, color="grey", lw=0.8, zorder=0)
        ax.scatter([0], [0], marker="*", s=220, color="black", zorder=3)
        for _, row in part.iterrows():
            color, marker = styles[row["strategy"]]
            if np.isfinite(row["delta_ta_item_se"]) or np.isfinite(row["delta_la_item_se"]):
                ax.errorbar(  # the item error: thick, pale, no caps, under the seed bars
                    row["delta_ta_mean"],
                    row["delta_la_mean"],
                    xerr=np.nan_to_num(row["delta_ta_item_se"]),
                    yerr=np.nan_to_num(row["delta_la_item_se"]),
                    fmt="none",
                    ecolor=color,
                    alpha=0.35,
                    elinewidth=6,
                    capsize=0,
                    zorder=2,
                )
            ax.errorbar(
                row["delta_ta_mean"],
                row["delta_la_mean"],
                xerr=row["delta_ta_std"],
                yerr=row["delta_la_std"],
                fmt=marker,
                color=color,
                ms=8,
                capsize=4,
                elinewidth=1.2,
                zorder=4,
            )
        ax.set_title(name or "Phase 2 minus Phase 1", fontsize=10)
        ax.set_xlabel("ΔTA (points): forgetting ←   → gain")
        ax.set_ylabel("ΔLA (bits per byte x 100): lower = language gain" if lower_la else "ΔLA (points): language gain")
        ax.grid(alpha=0.3)
        # Some room around the points and the origin, so markers and error bars are never cut.
        ex = np.fmax(part["delta_ta_std"], np.nan_to_num(part["delta_ta_item_se"]))
        ey = np.fmax(part["delta_la_std"], np.nan_to_num(part["delta_la_item_se"]))
        xs = np.r_[0, part["delta_ta_mean"] - ex, part["delta_ta_mean"] + ex]
        ys = np.r_[0, part["delta_la_mean"] - ey, part["delta_la_mean"] + ey]
        pad_x, pad_y = max(np.ptp(xs) * 0.12, 1.0), max(np.ptp(ys) * 0.12, 1.0)
        ax.set_xlim(xs.min() - pad_x, xs.max() + pad_x)
        ax.set_ylim(ys.min() - pad_y, ys.max() + pad_y)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    handles = [
        plt.Line2D([], [], marker="*", color="black", ls="", ms=12, label="Phase 1 model (origin)"),
        *[
            plt.Line2D([], [], marker=m, color=c, ls="", ms=8, label=f"{s} (n={int(data[data['strategy'] == s]['seeds'].max())})")
            for s, (c, m) in styles.items()
        ],
    ]
    items = bool(np.isfinite(data[["delta_ta_item_se", "delta_la_item_se"]].to_numpy(dtype=float)).any())
    if items:
        handles += [
            plt.Line2D([], [], color="grey", lw=1.2, marker="|", ms=8, label="std over seeds"),
            plt.Line2D([], [], color="grey", lw=6, alpha=0.35, label="standard error over items"),
        ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), title="strategy (seeds)", frameon=False)
    bars = "thin bars = std over seeds, thick pale bars = standard error over items" if items else "bars = std over seeds"
    fig.suptitle(f"TA-LA trade-off of Phase 2: mean over seeds, {bars}", y=1.0)
    fig.tight_layout()
    return save_figure(fig, out_dir, stem, data)


def la_gain_heatmap(runs: Sequence, out_dir: str | Path, stem: str = "la_gain_per_language") -> Path | None:
    """LA gain (Phase 2 minus Phase 1, points; Phase 1 minus Phase 2 for a lower-is-better score such as
    FLORES bits per byte, so a gain is positive everywhere) per language and benchmark (columns, the
    paper's order) for each cell (rows: strategies in the paper's order), mean over seeds."""
    row_keys = cell_keys(runs)
    groups = group_cells(runs, row_keys)
    shown = varying([g for g, _ in groups], row_keys) or ["strategy"]
    columns = [(task, lang) for task in task_names(runs, "la") for lang in languages(runs, task)]
    if not columns or not groups:
        return None
    # A gain is positive (blue) in every column: for a lower-is-better score (FLORES bits per byte) the
    # gain is Phase 1 - Phase 2, else a drop in bits per byte would be drawn as a loss.
    sign = {
        task: -1 if any(keys.marked_lower_better(r.metrics, keys.score("la", task, phase="phase2")) for r in runs) else 1
        for task, _ in columns
    }
    matrix = np.full((len(groups), len(columns)), np.nan)
    rows = []
    for i, (idx, rs) in enumerate(groups):
        for j, (task, lang) in enumerate(columns):
            after, before = keys.score("la", task, lang, phase="phase2"), keys.score("la", task, lang, phase="phase1")
            gains = [
                (r.metrics[after] - r.metrics[before]) * 100 * sign[task]
                for r in rs
                if isinstance(r.metrics.get(after), (int, float)) and isinstance(r.metrics.get(before), (int, float))
            ]
            s = stat(gains)
            if s is not None:
                matrix[i, j] = s.mean
            rows.append(
                {
                    "cell": cell_label(idx, shown),
                    "task": task,
                    "language": lang,
                    "gain_mean": None if s is None else s.mean,
                    "gain_std": None if s is None or s.std is None else s.std,
                    "n": 0 if s is None else s.n,
                }
            )
    if np.isnan(matrix).all():
        return None
    limit = float(np.nanmax(np.abs(matrix))) or 1.0
    fig, ax = plt.subplots(figsize=(max(6.0, 0.62 * len(columns) + 3.2), max(2.6, 0.5 * len(groups) + 1.8)))
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(columns)), [lang for _, lang in columns], fontsize=8)
    ax.set_yticks(range(len(groups)), [cell_label(g, shown) for g, _ in groups], fontsize=8)
    for i in range(len(groups)):
        for j in range(len(columns)):
            if not np.isnan(matrix[i, j]):
                dark = abs(matrix[i, j]) > 0.6 * limit
                ax.text(j, i, f"{matrix[i, j]:+.0f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    # Benchmark names above their block of languages (a second x axis on top), a line between blocks.
    tasks = list(dict.fromkeys(t for t, _ in columns))
    spans = [[j for j, (t, _) in enumerate(columns) if t == task] for task in tasks]
    top = ax.secondary_xaxis("top")
    names = [f"{t} (bits per byte x 100, lower is better: gain = P1 - P2)" if sign[t] < 0 else t for t in tasks]
    top.set_xticks([(span[0] + span[-1]) / 2 for span in spans], names, fontsize=9, fontweight="bold")
    top.tick_params(length=0)
    for span in spans[1:]:
        ax.axvline(span[0] - 0.5, color="black", lw=1.2)
    label = "LA gain (points), positive = better" if min(sign.values()) < 0 else "LA gain, Phase 2 − Phase 1 (points)"
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label=label)
    ax.set_title("Language-ability gain per language (mean over seeds)", pad=22)
    fig.tight_layout()
    return save_figure(fig, out_dir, stem, pd.DataFrame(rows))


def layer_change_heatmap(changes: pd.DataFrame, out_dir: str | Path, stem: str = "layer_changes", title: str = "") -> Path:
    """As in the paper's layer-change figure: Q, K and V (rows) against layers (columns), one panel
    per transition; colour = the relative change ||ΔW||/||W||, the number in each square = its rank
    among the layers (1 = changed most). Other modules appear only when there is no q/k/v."""
    frame = changes[changes["layer"].notna()].copy()
    frame["layer"] = frame["layer"].astype(int)
    if "transition" not in frame:
        frame["transition"] = "change"
    if "rank" not in frame:
        frame["rank"] = frame.groupby(["transition", "module"])["change"].rank(ascending=False, method="first")
    modules = [m for m in QKV if m in set(frame["module"])] or sorted(set(frame["module"]))
    frame = frame[frame["module"].isin(modules)]
    transitions = list(dict.fromkeys(frame["transition"]))
    layers = sorted(frame["layer"].unique())
    fig, axes = plt.subplots(
        len(transitions),
        1,
        figsize=(max(6.0, 0.45 * len(layers) + 2.5), 1.0 + 0.55 * len(modules) * len(transitions) + 0.6 * len(transitions)),
        squeeze=False,
    )
    for ax, tr in zip(axes[:, 0], transitions):
        part = frame[frame["transition"] == tr]
        matrix = part.pivot_table(index="module", columns="layer", values="change", aggfunc="mean").reindex(
            index=modules, columns=layers
        )
        ranks = part.pivot_table(index="module", columns="layer", values="rank", aggfunc="mean").reindex(
            index=modules, columns=layers
        )
        im = ax.imshow(matrix.values.astype(float), aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(modules)), [QKV.get(m, m) for m in modules])
        ax.set_xticks(range(len(layers)), layers, fontsize=7)
        ax.set_xlabel("layer")
        if len(layers) <= 40:
            values = matrix.values.astype(float)
            for i in range(len(modules)):
                for j in range(len(layers)):
                    r = ranks.values[i, j]
                    if not np.isnan(r):
                        light = np.isfinite(values[i, j]) and im.norm(values[i, j]) > 0.6  # viridis is light at its top
                        ax.text(j, i, f"{int(r)}", ha="center", va="center", fontsize=7, color="black" if light else "white")
        ax.set_title(f"{tr}: colour = relative change, number = rank (1 = largest)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    fig.suptitle(textwrap.fill(title or "Per-layer relative change ||ΔW||/||W|| of Q, K, V", 80))
    fig.tight_layout()
    return save_figure(fig, out_dir, stem, frame[["transition", "module", "layer", "change", "rank"]].reset_index(drop=True))


def des_heatmap(matrix: pd.DataFrame, out_dir: str | Path, stem: str = "des_heatmap") -> Path:
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
    tidy = matrix.rename_axis(index="dataset_a", columns="dataset_b").stack().rename("des").reset_index()
    return save_figure(fig, out_dir, stem, tidy)


def mpd_layers(per_cell: Mapping[str, Mapping[int, float]], out_dir: str | Path, stem: str = "mpd_layers") -> Path:
    """Per-layer MPD per cell, normalised by the largest value of all cells and layers shown."""
    top = max((v for layers in per_cell.values() for v in layers.values()), default=0.0) or 1.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = []
    for label, layers in per_cell.items():
        xs = sorted(layers)
        ax.plot(xs, [layers[x] / top for x in xs], marker="o", ms=3, label=label)
        rows += [{"cell": label, "layer": x, "mpd": layers[x], "normalised": layers[x] / top} for x in xs]
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("MPD (normalised)")
    ax.set_title("Per-layer distance to the base fine-tuned on the Phase-2 data alone")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, out_dir, stem, pd.DataFrame(rows))


def line_per_layer(series: Mapping[str, Sequence[float]], out_dir: str | Path, stem: str, *, title: str, ylabel: str) -> Path:
    """One line per label over layers (e.g. covariance-difference norms per strategy)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = []
    for label, values in series.items():
        ax.plot(range(len(values)), values, marker="o", ms=3, label=label)
        rows += [{"label": label, "layer": i, "value": v} for i, v in enumerate(values)]
    ax.set_xlabel("layer (0 = embeddings)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out_dir, stem, pd.DataFrame(rows))


def tsne_scatter(points: pd.DataFrame, out_dir: str | Path, stem: str = "tsne", title: str = "t-SNE of mean activations") -> Path:
    fig, ax = plt.subplots(figsize=(6, 5))
    for model, part in points.groupby("model", sort=False):
        ax.scatter(part["x"], part["y"], s=14, alpha=0.75, label=str(model))
    ax.set_title(title)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.legend()
    return save_figure(fig, out_dir, stem, points.reset_index(drop=True))


def cross_lingual(frame: pd.DataFrame, out_dir: str | Path, stem: str = "cross_lingual") -> Path:
    series = {lang: part.sort_values("layer")["similarity"].tolist() for lang, part in frame.groupby("language")}
    return line_per_layer(
        series, out_dir, stem, title="Cross-lingual similarity to English per layer (FLORES-200)", ylabel="mean cosine similarity"
    )


def safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")
