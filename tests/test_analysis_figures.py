"""The figures of a sweep, read back: each PNG has a sensible size and is not blank, and the CSV beside
it holds the numbers drawn (the trade-off's means and seed spreads, the LA gain per language, the
Q/K/V x layer changes)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image
from test_analysis import OFF, PAPER_GAIN, PAPER_LA, PAPER_LOSS, paper_metrics, paper_sweep, write_run

from cft.analysis.sweep import analyze_sweep


def read_png(path: Path) -> np.ndarray:
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] >= 300 and pixels.shape[1] >= 500, (path, pixels.shape)
    rgb = pixels[..., :3]
    drawn = (rgb.min(axis=2) < 0.9).mean()  # share of pixels that are not (near) white
    assert 0.02 < drawn < 0.9 and rgb.std() > 0.05, (path, drawn)
    return pixels


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("figures")
    runs = paper_sweep(tmp_path)
    # A second data pair (the dissimilar one): the trade-off gets one panel per pair.
    for strategy in ("full", "lora"):
        metrics = paper_metrics(strategy, 0)
        write_run(tmp_path, f"instruct-mopenorca/mistral/{strategy}", 0, metrics, sweep_id="paper")
    rows = ["transition,module,layer,change,rank"]
    for t, scale in (("base->phase1", 1.0), ("phase1->phase2", 0.5)):
        for m in ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj"):
            for layer in range(6):
                rows.append(f"{t},{m},{layer},{scale * (layer + 1) / 10},{6 - layer}")
    lf = next(r for r in runs if "/lf_h2/" in str(r))
    (lf / "layer_changes.csv").write_text("\n".join(rows) + "\n")
    analyze_sweep("paper", output_root=tmp_path, tracking=OFF, echo=False)
    return tmp_path / "paper" / "analysis"


def test_tradeoff_shows_means_with_seed_spread_around_the_phase1_origin(analysed):
    read_png(analysed / "ta_la_tradeoff.png")
    rows = read_csv(analysed / "ta_la_tradeoff.csv")
    assert list(rows[0]) == [
        "panel", "strategy", "seeds", "delta_ta_mean", "delta_ta_std", "delta_la_mean", "delta_la_std",
        "delta_ta_item_se", "delta_la_item_se",
    ]  # fmt: skip
    panels = {r["panel"] for r in rows}
    assert panels == {"instruct → multialpaca", "instruct → mopenorca"}
    multialpaca = {r["strategy"]: r for r in rows if r["panel"] == "instruct → multialpaca"}
    assert list(multialpaca) == ["full", "lf_h2", "gr5", "lora"]  # the paper's order
    for strategy, r in multialpaca.items():
        # paper_metrics: Phase 2 loses PAPER_LOSS of TA and gains PAPER_GAIN of LA, plus 1 point per seed.
        assert int(r["seeds"]) == 2
        assert float(r["delta_ta_mean"]) == pytest.approx(100 * (0.005 - PAPER_LOSS[strategy]), abs=1e-9)
        assert float(r["delta_la_mean"]) == pytest.approx(100 * (0.005 + PAPER_GAIN[strategy]), abs=1e-9)
        assert float(r["delta_ta_std"]) == pytest.approx(100 * 0.01 / np.sqrt(2), rel=1e-6)  # both directions
        assert float(r["delta_la_std"]) == pytest.approx(100 * 0.01 / np.sqrt(2), rel=1e-6)
    one_seed = [r for r in rows if r["panel"] == "instruct → mopenorca"]
    assert [(r["strategy"], r["seeds"], r["delta_ta_std"]) for r in one_seed] == [("full", "1", "0.0"), ("lora", "1", "0.0")]


def test_tradeoff_draws_item_errors_apart_from_the_seed_spread(tmp_path):
    """Runs that record standard errors (`<key>_stderr`): each point gets the item error of its mean
    change, sqrt(se1^2 + se2^2) per run propagated over seeds, beside the seed spread, as a second
    (thick, pale, capless) error bar; a lower-is-better LA (FLORES bits per byte) says so on its axis."""
    from cft.analysis import figures
    from cft.analysis.runs import Run

    def run(strategy, seed, ta2, la2, ta_se, la_se):
        metrics = {
            "phase1/ta_avg": 0.40, "phase1/ta_avg_stderr": ta_se[0], "phase2/ta_avg": ta2, "phase2/ta_avg_stderr": ta_se[1],
            "phase1/la_avg": 1.50, "phase1/la_avg_stderr": la_se[0], "phase2/la_avg": la2, "phase2/la_avg_stderr": la_se[1],
            "phase1/lower_is_better/la_avg": 1, "phase2/lower_is_better/la_avg": 1,
        }  # fmt: skip
        choices = {"phase1_data": "alpaca5k", "phase2_data": "multialpaca", "model": "smollm2", "strategy": strategy}
        return Run(f"{strategy}/{seed}", choices, seed, metrics, True)

    runs = [
        run("full", 0, 0.37, 1.40, (0.03, 0.04), (0.006, 0.008)),
        run("full", 1, 0.39, 1.42, (0.03, 0.04), (0.006, 0.008)),
        run("gr5", 0, 0.40, 1.45, (0.02, 0.02), (0.01, 0.01)),
    ]
    captured, labels = [], []
    real_errorbar, real_save = figures.plt.Axes.errorbar, figures.save_figure

    def errorbar(ax, x, y, **kw):
        captured.append((x, y, kw))
        return real_errorbar(ax, x, y, **kw)

    def save_figure(fig, *args):
        labels.extend([fig.axes[0].get_ylabel(), fig.get_suptitle()])
        return real_save(fig, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures.plt.Axes, "errorbar", errorbar)
        mp.setattr(figures, "save_figure", save_figure)
        path = figures.tradeoff(runs, tmp_path)
    read_png(path)
    rows = {r["strategy"]: r for r in read_csv(tmp_path / "ta_la_tradeoff.csv")}
    full, gr5 = rows["full"], rows["gr5"]
    # Two seeds: the mean change, the seed std, and the item error sqrt(2 x (3^2 + 4^2)) / 2 = 3.54 points.
    assert float(full["delta_ta_mean"]) == pytest.approx(-2.0) and float(full["delta_ta_std"]) == pytest.approx(
        100 * 0.02 / np.sqrt(2)
    )
    assert float(full["delta_ta_item_se"]) == pytest.approx(np.sqrt(2 * 25) / 2)
    assert float(full["delta_la_item_se"]) == pytest.approx(np.sqrt(2 * 1.0) / 2)
    assert float(gr5["delta_ta_item_se"]) == pytest.approx(100 * np.hypot(0.02, 0.02)) and float(gr5["delta_la_std"]) == 0.0
    # Per point: the item bar (thick, no caps) and the seed bar (thin, capped), each at the mean, told apart.
    items = [(x, y, kw) for x, y, kw in captured if kw.get("elinewidth", 0) > 3]
    seeds = [(x, y, kw) for x, y, kw in captured if kw.get("elinewidth", 0) <= 3]
    assert len(items) == len(seeds) == 2
    assert all(kw["capsize"] == 0 for *_, kw in items) and all(kw["capsize"] > 0 for *_, kw in seeds)
    assert sorted(kw["xerr"] for *_, kw in items) == pytest.approx(
        sorted([float(full["delta_ta_item_se"]), float(gr5["delta_ta_item_se"])])
    )
    assert sorted(kw["yerr"] for *_, kw in seeds) == pytest.approx(sorted([float(full["delta_la_std"]), 0.0]))
    ylabel, title = labels
    assert "lower = language gain" in ylabel and "std over seeds" in title and "standard error over items" in title


def test_tradeoff_without_standard_errors_draws_the_seed_spread_only(tmp_path):
    from cft.analysis import figures
    from cft.analysis.runs import Run

    choices = {"phase1_data": "a", "phase2_data": "b", "model": "m", "strategy": "full"}
    metrics = {"phase1/ta_avg": 0.4, "phase2/ta_avg": 0.38, "phase1/la_avg": 0.2, "phase2/la_avg": 0.25}
    figures.tradeoff([Run("full/0", choices, 0, metrics, True)], tmp_path)
    [row] = read_csv(tmp_path / "ta_la_tradeoff.csv")
    assert row["delta_ta_item_se"] == row["delta_la_item_se"] == ""  # nan: not recorded, no item bar


def test_la_gain_heatmap_per_language_and_strategy(analysed):
    read_png(analysed / "la_gain_per_language.png")
    rows = read_csv(analysed / "la_gain_per_language.csv")
    columns = [(t, lang) for t, langs in PAPER_LA.items() for lang in langs]
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    assert cells == [  # data pairs as named, then the paper's order of strategies
        "instruct → mopenorca / full",
        "instruct → mopenorca / lora",
        "instruct → multialpaca / full",
        "instruct → multialpaca / lf_h2",
        "instruct → multialpaca / gr5",
        "instruct → multialpaca / lora",
    ]
    assert len(rows) == len(cells) * len(columns)
    assert [(r["task"], r["language"]) for r in rows if r["cell"] == cells[0]] == columns
    for r in rows:
        strategy = r["cell"].rsplit(" / ", 1)[1]
        seeds_mean = 0.5 if "multialpaca" in r["cell"] else 0.0  # the seed jitter: 0 and 1 points, or 0
        assert float(r["gain_mean"]) == pytest.approx(100 * PAPER_GAIN[strategy] + seeds_mean, abs=1e-9)


def test_layer_change_figure_is_qkv_against_layers(analysed):
    stem = "layer_changes_instruct-multialpaca_mistral_lf_h2"
    pixels = read_png(analysed / f"{stem}.png")
    assert pixels.shape[1] > pixels.shape[0]  # layers along the wide axis
    rows = read_csv(analysed / f"{stem}.csv")
    assert {r["module"] for r in rows} == {"q_proj", "k_proj", "v_proj"}  # Q, K, V: the paper's figure
    assert len(rows) == 2 * 3 * 6
    assert {(r["transition"], r["module"], r["layer"], r["rank"]) for r in rows} >= {("base->phase1", "k_proj", "5", "1")}
    # The rank table keeps every module.
    assert "| base->phase1 | up_proj |" in (analysed / "layer_ranks_instruct-multialpaca_mistral_lf_h2.md").read_text()


def test_every_figure_has_its_data_and_its_place_in_the_report(analysed):
    report = (analysed / "report.md").read_text()
    pngs = sorted(analysed.glob("*.png"))
    assert {p.stem for p in pngs} == {
        "ta_la_phases",
        "ta_la_tradeoff",
        "la_gain_per_language",
        "layer_changes_instruct-multialpaca_mistral_lf_h2",
        "mpd_layers",
    }
    for png in pngs:
        read_png(png)
        assert png.with_suffix(".svg").stat().st_size > 1000
        assert len(read_csv(png.with_suffix(".csv"))) > 1, png
        assert f"![{png.stem}]({png.name})" in report and f"[CSV]({png.stem}.csv)" in report
    phases = read_csv(analysed / "ta_la_phases.csv")
    full_p2 = [
        r for r in phases if r["cell"] == "instruct → multialpaca / full" and r["ability"] == "TA" and r["phase"] == "phase2"
    ]
    assert float(full_p2[0]["mean"]) == pytest.approx(100 * (0.65 - PAPER_LOSS["full"]) + 0.5, abs=1e-9)
