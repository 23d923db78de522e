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
    assert list(rows[0]) == ["panel", "strategy", "seeds", "delta_ta_mean", "delta_ta_std", "delta_la_mean", "delta_la_std"]
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
