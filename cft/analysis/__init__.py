"""Analysis of a sweep: tables and figures of the paper, a Markdown report, and the same on W&B.

Entry point: `run(cfg)` (called by analyze.py), which dispatches on `cfg.mode`:

- `sweep` (default): `analyze_sweep` reads every run of `sweep_id` (from run folders, or from W&B
  with `source=wandb`), writes the tables (Markdown, CSV, LaTeX), figures (PNG, SVG) and
  `report.md` to the sweep's `analysis/` folder, prints the summary table, and logs it all to
  one W&B run (job_type=analyze, group=sweep_id).
- `similarity`: `des_report` computes the DES matrix of the given datasets.
- `representations`: `representations_report` compares models' hidden activations (t-SNE,
  covariance differences per layer, and the cross-lingual view of one model); the models are
  given by path, or taken from a sweep (each run's checkpoint against its Phase-1 model).
- `layers`: `layers_report` ranks the per-layer change base -> Phase 1 -> Phase 2 of three checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cft.errors import CftError

log = logging.getLogger(__name__)


@dataclass
class AnalysisResult:
    out_dir: Path
    report: Path
    tables: list = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _tracker(mode: str, *, project: str, entity: str | None, out_dir: Path, name: str, group: str | None, config: Mapping):
    from cft.run.tracking import Tracker

    return Tracker(
        mode=mode,
        project=project,
        entity=entity,
        run_dir=out_dir,
        name=name,
        group=group,
        job_type="analyze",
        config=dict(config),
    )


def _log_all(tracker, tables, figures, summary: Mapping[str, Any]) -> None:
    for t in tables:
        columns, rows = t.wandb_rows()
        tracker.log_table(f"tables/{t.name}", columns, rows)
    for fig in figures:
        tracker.log_image(f"figures/{Path(fig).stem}", fig)
    tracker.summary(dict(summary))


# ----------------------------------------------------------------------------- sweep


def _cell_name(idx: Mapping[str, str]) -> str:
    name = f"{idx['phase1_data']}-{idx['phase2_data']}_{idx['model']}_{idx['strategy']}"
    return name + (f"_{idx['variant']}" if idx.get("variant") else "")


def _latest_sweep(output_root: str | Path) -> str | None:
    """The sweep of the most recently finished run under output_root (what a bare analyze.py reads)."""
    import json

    from cft.run.folder import latest_run

    run = latest_run(output_root)
    if run is None:
        return None
    sweep_id = json.loads((run / "run_meta.json").read_text()).get("sweep_id")
    log.info("No sweep_id= given: analysing the sweep of the latest finished run, %s (%s)", sweep_id, run)
    return sweep_id


def analyze_sweep(
    sweep_id: str,
    *,
    source: str = "local",
    output_root: str | Path = "outputs",
    out_dir: str | Path | None = None,
    entity: str | None = None,
    project: str = "cft",
    tracking_mode: str = "offline",
    api=None,
    echo: bool = True,
) -> AnalysisResult:
    """Tables, figures and report of one sweep. CftError for an unknown sweep or one with no finished run."""
    import pandas as pd

    from cft.analysis import figures as F
    from cft.analysis.report import write_report
    from cft.analysis.runs import collect_local, collect_wandb, key_disagreements
    from cft.analysis.tables import all_tables, group_cells, layer_rank_table

    if sweep_id in (None, "", "???") and source == "local":
        sweep_id = _latest_sweep(output_root)
    if sweep_id in (None, "", "???"):
        raise CftError("no sweep given: pass sweep_id=<id> (the folder name under output_root, or the W&B group)")
    if source == "local":
        sweep = collect_local(output_root, sweep_id)
    elif source == "wandb":
        sweep = collect_wandb(entity, project, sweep_id, api=api)
    else:
        raise CftError(f"source={source!r} is not one of local, wandb")
    out_dir = Path(out_dir) if out_dir else Path(output_root) / str(sweep_id) / "analysis"
    unfinished = "".join(f"\n  - {r.name}" for r in sweep.unfinished)
    if not sweep.finished:
        raise CftError(
            f"sweep {sweep_id!r} ({sweep.source}) has no finished run (no run folder with DONE)."
            + (f" Unfinished runs:{unfinished}" if unfinished else " It holds no runs at all.")
        )
    finished = [r for r in sweep.finished if r.metrics and r.choices]
    problems = list(sweep.problems) + key_disagreements(finished)
    tables = all_tables(finished)
    written = [t.write(out_dir) for t in tables]
    log.info("Wrote %d tables to %s", len(written), out_dir)

    figs: list[Path] = []
    by_name = {t.name: t for t in tables}
    if "summary" in by_name:
        figs.append(F.phase_bars(by_name["summary"], out_dir))
        figs.append(F.tradeoff(by_name["summary"], out_dir))
    for idx, runs in group_cells(finished):
        # Layer changes of one seed per cell: their ranks as a table and a heatmap.
        with_changes = [r for r in runs if r.path is not None and (r.path / "layer_changes.csv").exists()]
        if with_changes:
            r = with_changes[0]
            stem = F.safe_stem("layer_changes_" + _cell_name(idx))
            try:
                frame = pd.read_csv(r.path / "layer_changes.csv")
                rank_table = layer_rank_table(frame, stem, f"Layer-change ranks, {r.name} (1 = largest relative change)")
                if rank_table is not None:
                    rank_table.write(out_dir)
                    tables.append(rank_table)
                figs.append(
                    F.layer_change_heatmap(
                        frame, out_dir, stem, title=f"Layer changes: {r.name}", value="rank" if "rank" in frame else "change"
                    )
                )
            except (KeyError, ValueError, pd.errors.ParserError) as exc:
                problems.append(f"{r.path / 'layer_changes.csv'}: not drawn ({type(exc).__name__}: {exc})")
    per_layer_mpd = {}
    for idx, runs in group_cells(finished):
        layers = {int(k.rsplit("/", 1)[1]): float(v) for k, v in runs[0].metrics.items() if k.startswith("mpd/layer/")}
        if layers:
            per_layer_mpd[_cell_name(idx)] = layers
    if per_layer_mpd:
        figs.append(F.mpd_layers(per_layer_mpd, out_dir))

    report = write_report(
        out_dir / "report.md", title=f"Sweep {sweep_id}", sweep=sweep, problems=problems, tables=tables, figures=figs
    )
    if echo:
        first = tables[0] if tables else None
        print(first.to_markdown() if first else "(no TA/LA metrics in the finished runs)")
        if sweep.unfinished:
            print(f"{len(sweep.unfinished)} unfinished run(s), left out of the tables:{unfinished}")
        for p in problems:
            print(f"warning: {p}")
        print(f"Report: {report}")

    tracker = _tracker(
        tracking_mode,
        project=project,
        entity=entity,
        out_dir=out_dir,
        name=f"analyze-{sweep_id}",
        group=str(sweep_id),
        config={
            "sweep_id": sweep_id,
            "source": sweep.source,
            "finished_runs": len(sweep.finished),
            "unfinished_runs": [r.name for r in sweep.unfinished],
        },
    )
    try:
        _log_all(
            tracker,
            tables,
            figs,
            {"finished_runs": len(sweep.finished), "unfinished_runs": len(sweep.unfinished), "problems": len(problems)},
        )
    finally:
        tracker.finish()
    return AnalysisResult(out_dir=out_dir, report=report, tables=tables, figures=figs, problems=problems)


# ----------------------------------------------------------------------------- DES


def _dataset_texts(name: str, spec: Any, conf_dir: Path | None) -> list[str]:
    """Texts of one dataset: `spec` is a local file/folder path, or None to use the option `name` of
    conf/phase1_data or conf/phase2_data (its path or hub source)."""
    from cft.measures.similarity import read_texts

    if spec:
        path = Path(str(spec)).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
            if not files:
                raise CftError(f"{path}: no .json/.jsonl files in the dataset folder")
            return [t for f in files for t in read_texts(f)]
        return read_texts(path)
    if conf_dir is None:
        raise CftError(f"dataset {name!r}: give its path (datasets={{{name}: /path/to/file}})")
    from omegaconf import OmegaConf

    for group in ("phase1_data", "phase2_data"):
        file = Path(conf_dir) / group / f"{name}.yaml"
        if file.exists():
            node = OmegaConf.to_container(OmegaConf.load(file), resolve=True)
            break
    else:
        raise CftError(
            f"dataset {name!r} is not an option of conf/phase1_data or conf/phase2_data; "
            f"give its path instead: datasets={{{name}: /path/to/file_or_folder}}"
        )
    if node.get("use_instruct_checkpoint"):
        raise CftError(f"{group}={name} has no dataset (it takes the model's Instruct checkpoint)")
    from cft.data.sources import load_sft

    keys = (
        "name",
        "source",
        "path",
        "languages",
        "max_examples",
        "max_per_language",
        "seed",
        "split",
        "fields",
        "on_bad_record",
        "demo",
    )
    from cft.measures.similarity import example_texts

    return example_texts(load_sft(**{k: v for k, v in node.items() if k in keys}).examples)


def des_report(
    datasets: Mapping[str, Any] | Sequence[str],
    *,
    embedder: Any,
    n: int | None = 500,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    out_dir: str | Path = "outputs/similarity",
    conf_dir: Path | None = None,
    tracking_mode: str = "offline",
    project: str = "cft",
    entity: str | None = None,
    echo: bool = True,
) -> AnalysisResult:
    """The DES matrix of several datasets: des.md/.csv/.tex, a heatmap, and a W&B run.

    `datasets` maps a name to a local file or folder (None: the conf option of that name), or lists
    conf option names. `embedder` is an object with encode(texts), or a `_target_` config.
    """
    from cft.analysis import figures as F
    from cft.analysis.report import write_report
    from cft.analysis.tables import Stat, Table
    from cft.measures.similarity import build_embedder, des_matrix

    if isinstance(datasets, str):
        datasets = [datasets]
    items = dict(datasets) if isinstance(datasets, Mapping) else {str(d): None for d in datasets}
    if len(items) < 1:
        raise CftError("similarity needs at least one dataset: datasets=[alpaca,multialpaca] or datasets={name: path}")
    texts = {name: _dataset_texts(name, spec, conf_dir) for name, spec in items.items()}
    emb = build_embedder(embedder)
    matrix = des_matrix(emb, texts, n=n, seed=seed, cache_dir=cache_dir)
    out_dir = Path(out_dir)
    table = Table(
        name="des",
        title=f"DES (n={n}, seed={seed})",
        index_cols=["dataset"],
        index=[{"dataset": a} for a in matrix.index],
        columns=list(matrix.columns),
        cells=[[Stat(float(v), None, 1) for v in row] for row in matrix.values],
        scale=1.0,
        digits=3,
        mark_best=False,
    )
    table.write(out_dir)
    matrix.to_csv(out_dir / "des_matrix.csv")
    figs = [F.des_heatmap(matrix, out_dir)]
    from cft.measures.similarity import embedder_id

    report = write_report(
        out_dir / "report.md",
        title="Dataset embedding similarity",
        sweep=None,
        problems=[],
        tables=[table],
        figures=figs,
        extra=[f"Embedder: `{embedder_id(emb)}`; {n} samples per dataset, seed {seed}.", ""],
    )
    if echo:
        print(table.to_markdown())
        print(f"Report: {report}")
    tracker = _tracker(
        tracking_mode,
        project=project,
        entity=entity,
        out_dir=out_dir,
        name="des",
        group="similarity",
        config={"datasets": {k: str(v) for k, v in items.items()}, "n": n, "seed": seed, "embedder": embedder_id(emb)},
    )
    try:
        _log_all(
            tracker,
            [table],
            figs,
            {f"des/{a}/{b}": float(matrix.loc[a, b]) for a in matrix.index for b in matrix.columns if a < b},
        )
    finally:
        tracker.finish()
    return AnalysisResult(out_dir=out_dir, report=report, tables=[table], figures=figs)


# ----------------------------------------------------------------------------- representations


def representations_report(
    models: Mapping[str, str],
    *,
    reference: str | None = None,
    references: Mapping[str, str] | None = None,
    prompts: str | Sequence[str] = "mt_bench",
    limit: int | None = 80,
    tsne_layer: int = -1,
    batch_size: int = 8,
    max_length: int = 512,
    parallel_dir: str | None = None,
    parallel_languages: Sequence[str] = (),
    pivot: str = "eng_Latn",
    parallel_model: str | None = None,
    parallel_limit: int | None = 200,
    seed: int = 0,
    out_dir: str | Path = "outputs/representations",
    tracking_mode: str = "offline",
    project: str = "cft",
    entity: str | None = None,
) -> AnalysisResult:
    """Compare hidden activations of models on English prompts (section 3.4 of the paper).

    `models` maps labels to checkpoints (e.g. {"phase1": ..., "full": ..., "lf_h2": ...}). For every
    model with a reference (`references[label]`, else `reference`, else the first model), the per-layer
    norm of its covariance difference to the reference is drawn, one line per model; all models share
    one t-SNE plot. With `parallel_dir` (FLORES-200 layout) the cross-lingual similarity per layer of
    `parallel_model` (default: the first model; the paper uses the base) is drawn too.
    """
    import json

    import numpy as np

    from cft.analysis import figures as F
    from cft.analysis.report import write_report
    from cft.measures.representations import (
        covariance_difference,
        cross_lingual_similarity,
        mean_activations,
        mt_bench_prompts,
        read_parallel,
        read_prompts,
        save_activations,
        tsne_points,
    )
    from cft.models import load_model

    if not models:
        raise CftError("representations need models: models={phase1: /path, full: /path, ...} (or sweep_id=<id>)")
    names = list(models)
    references = dict(references or {})
    default_ref = reference or names[0]
    for label in names:
        if label not in references and label != default_ref:
            references[label] = default_ref
    unknown = sorted({r for r in references.values() if r not in models} | ({default_ref} - set(models)))
    if unknown:
        raise CftError(f"reference model(s) {unknown} are not among the models {names}")
    if isinstance(prompts, str):
        prompt_list = mt_bench_prompts(limit=limit) if prompts == "mt_bench" else read_prompts(prompts, limit=limit)
    else:
        prompt_list = list(prompts)[:limit]
    out_dir = Path(out_dir)
    acts = {}
    for name in names:
        model, tok = load_model(str(models[name]), dtype="fp32", what=f"model {name}")
        acts[name] = mean_activations(model, tok, prompt_list, batch_size=batch_size, max_length=max_length)
        save_activations(out_dir / "activations" / F.safe_stem(name), acts[name], prompt_list)
        del model
    diffs = {name: covariance_difference(acts[ref], acts[name]).tolist() for name, ref in references.items()}
    figs = []
    if diffs:
        refs = sorted(set(references.values()))
        figs.append(
            F.line_per_layer(
                diffs,
                out_dir,
                "covariance_difference",
                title=f"||cov(reference) − cov(model)||_F per layer (reference: {', '.join(refs)})",
                ylabel="Frobenius norm",
            )
        )
    figs.append(
        F.tsne_scatter(
            tsne_points(acts, layer=tsne_layer, seed=seed), out_dir, title=f"t-SNE of mean activations (layer {tsne_layer})"
        )
    )
    extra = []
    if parallel_dir:
        pm = parallel_model or names[0]
        if pm not in models:
            raise CftError(f"parallel_model={pm!r} is not one of the models {names}")
        langs = list(dict.fromkeys([pivot, *parallel_languages]))
        model, tok = load_model(str(models[pm]), dtype="fp32", what=f"model {pm}")
        frame = cross_lingual_similarity(
            model, tok, read_parallel(parallel_dir, langs, limit=parallel_limit), pivot=pivot, batch_size=batch_size
        )
        frame.to_csv(out_dir / "cross_lingual.csv", index=False)
        figs.append(F.cross_lingual(frame, out_dir))
        extra += [f"Cross-lingual view of `{pm}` on {parallel_dir} ({', '.join(langs)}).", ""]
    (out_dir / "covariance_difference.json").write_text(json.dumps(diffs, indent=2))
    pairs = [f"- `{m}` vs `{r}`" for m, r in references.items()]
    report = write_report(
        out_dir / "report.md",
        title="Representations",
        sweep=None,
        problems=[],
        tables=[],
        figures=figs,
        extra=[f"{len(prompt_list)} prompts. Covariance differences:", "", *pairs, ""] + extra,
    )
    tracker = _tracker(
        tracking_mode,
        project=project,
        entity=entity,
        out_dir=out_dir,
        name="representations",
        group="representations",
        config={"models": dict(models), "references": references, "prompts": str(prompts)},
    )
    try:
        _log_all(tracker, [], figs, {f"cov_diff/{k}/mean": float(np.mean(v)) for k, v in diffs.items()})
    finally:
        tracker.finish()
    print(f"Report: {report}")
    return AnalysisResult(out_dir=out_dir, report=report, figures=figs)


def sweep_models(output_root: str | Path, sweep_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """Models of a sweep for `representations_report`: each finished run's Phase-2 checkpoint
    (`<run>/checkpoint`), compared with its Phase-1 model (`phase1_ref` in run_meta.json)."""
    import json

    from cft.analysis.runs import collect_local
    from cft.analysis.tables import group_cells

    sweep = collect_local(output_root, sweep_id)
    models, references, missing = {}, {}, []
    for idx, runs in group_cells(sweep.finished):
        run = runs[0]
        meta_file = run.path / "run_meta.json"
        phase1 = json.loads(meta_file.read_text()).get("phase1_ref") if meta_file.exists() else None
        if not (run.path / "checkpoint").is_dir() or not phase1:
            missing.append(run.name)
            continue
        p1_label = f"phase1 {idx['model']} ({idx['phase1_data']})"
        models.setdefault(p1_label, str(phase1))
        label = f"{idx['model']}/{idx['strategy']} ({idx['phase1_data']}→{idx['phase2_data']})"
        models[label] = str(run.path / "checkpoint")
        references[label] = p1_label
    if not models:
        raise CftError(
            f"no run of sweep {sweep_id!r} has both a checkpoint/ folder and phase1_ref in run_meta.json "
            f"({len(missing)} finished run(s) lack them); pass the models instead: models={{phase1: /path, full: /path}}"
        )
    return models, references


def layers_report(
    base: str,
    phase1: str,
    phase2: str | None = None,
    *,
    out_dir: str | Path = "outputs/layers",
    tracking_mode: str = "offline",
    project: str = "cft",
    entity: str | None = None,
) -> AnalysisResult:
    """Layer-change ranks base -> Phase 1 (-> Phase 2) of three checkpoints: table, CSV and heatmap."""
    from cft.analysis import figures as F
    from cft.analysis.report import write_report
    from cft.analysis.tables import layer_rank_table
    from cft.measures.layers import transition_changes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = transition_changes(base, phase1, phase2)
    frame.to_csv(out_dir / "layer_changes.csv", index=False)
    table = layer_rank_table(frame, "layer_ranks", "Layer-change ranks (1 = largest relative change)")
    table.write(out_dir)
    figs = [
        F.layer_change_heatmap(frame, out_dir, "layer_ranks"),
        F.layer_change_heatmap(frame, out_dir, "layer_changes", value="change"),
    ]
    report = write_report(
        out_dir / "report.md",
        title="Layer changes",
        sweep=None,
        problems=[],
        tables=[table],
        figures=figs,
        extra=[f"base: `{base}`; Phase 1: `{phase1}`" + (f"; Phase 2: `{phase2}`" if phase2 else ""), ""],
    )
    print(table.to_markdown())
    print(f"Report: {report}")
    tracker = _tracker(
        tracking_mode,
        project=project,
        entity=entity,
        out_dir=out_dir,
        name="layers",
        group="layers",
        config={"base": base, "phase1": phase1, "phase2": phase2},
    )
    try:
        _log_all(tracker, [table], figs, {})
    finally:
        tracker.finish()
    return AnalysisResult(out_dir=out_dir, report=report, tables=[table], figures=figs)


# ----------------------------------------------------------------------------- entry


def run(cfg, *, conf_dir: Path | None = None) -> AnalysisResult:
    """analyze.py's one call: dispatch on cfg.mode (sweep | similarity | representations | layers)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    tracking = c.get("tracking") or {}
    common = dict(
        tracking_mode=tracking.get("mode", "offline"),
        project=c.get("project") or tracking.get("project", "cft"),
        entity=c.get("entity") or tracking.get("entity"),
    )
    mode = c.get("mode", "sweep")
    if mode == "sweep":
        return analyze_sweep(
            c.get("sweep_id"), source=c.get("source", "local"), output_root=c["output_root"], out_dir=c.get("out_dir"), **common
        )
    if mode == "similarity":
        s = c.get("similarity") or {}
        return des_report(
            c.get("datasets") or [],
            embedder=c["embedder"],
            n=s.get("n", 500),
            seed=s.get("seed", 0),
            cache_dir=s.get("cache_dir"),
            out_dir=c.get("out_dir") or Path(c["output_root"]) / "similarity",
            conf_dir=conf_dir,
            **common,
        )
    if mode == "representations":
        r = dict(c.get("representations") or {})
        models, references = dict(c.get("models") or {}), None
        if not models and c.get("sweep_id"):
            models, references = sweep_models(c["output_root"], c["sweep_id"])
        default_out = Path(c["output_root"]) / (
            f"{c['sweep_id']}/analysis/representations" if c.get("sweep_id") else "representations"
        )
        return representations_report(models, references=references, out_dir=c.get("out_dir") or default_out, **r, **common)
    if mode == "layers":
        m = dict(c.get("models") or {})
        if not {"base", "phase1"} <= set(m):
            raise CftError("mode=layers needs models={base: <checkpoint>, phase1: <checkpoint>, phase2: <checkpoint (optional)>}")
        return layers_report(
            m["base"], m["phase1"], m.get("phase2"), out_dir=c.get("out_dir") or Path(c["output_root"]) / "layers", **common
        )
    raise CftError(f"mode={mode!r} is not one of sweep, similarity, representations, layers")
