"""mode=layers: the per-layer change base -> Phase 1 (-> Phase 2) of three checkpoints, ranked per
module type (the paper's LF-H2 heuristic), as a table and the paper's Q/K/V x layer figure."""

from __future__ import annotations

from pathlib import Path

from cft.analysis.config import AnalyzeConfig
from cft.analysis.publish import AnalysisResult, Tracking, publish
from cft.errors import CftError
from cft.run import layout


def layers_report(
    base: str, phase1: str, phase2: str | None = None, *, out_dir: str | Path = "outputs/layers", tracking: Tracking | None = None
) -> AnalysisResult:
    """Layer-change ranks base -> Phase 1 (-> Phase 2) of three checkpoints: table, CSV and figure."""
    from cft.analysis import figures as F
    from cft.analysis.tables import layer_rank_table
    from cft.measures.layers import transition_changes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = transition_changes(base, phase1, phase2)
    frame.to_csv(out_dir / layout.LAYER_CHANGES, index=False)
    table = layer_rank_table(frame, "layer_ranks", "Layer-change ranks (1 = largest relative change)")
    figs = [F.layer_change_heatmap(frame, out_dir, "layer_changes_qkv")]
    result = publish(
        out_dir,
        title="Layer changes",
        tables=[table] if table else [],
        figures=figs,
        sections=[f"base: `{base}`; Phase 1: `{phase1}`" + (f"; Phase 2: `{phase2}`" if phase2 else ""), ""],
        tracking=tracking,
        run_name="layers",
        group="layers",
        config={"base": base, "phase1": phase1, "phase2": phase2},
    )
    if table:
        print(table.to_markdown())
    print(f"Report: {result.report}")
    return result


def run(cfg: AnalyzeConfig) -> AnalysisResult:
    from cft.analysis.sweep import tracking_of

    models = dict(cfg.layers.models or {})
    if not {"base", "phase1"} <= set(models):
        raise CftError(
            "mode=layers needs layers.models={base: <checkpoint>, phase1: <checkpoint>, phase2: <checkpoint (optional)>}"
        )
    return layers_report(
        models["base"],
        models["phase1"],
        models.get("phase2"),
        out_dir=cfg.out_dir or Path(cfg.paths.output_root) / "layers",
        tracking=tracking_of(cfg),
    )
