"""mode=representations: hidden activations of models compared (the paper's section 3.4).

t-SNE of mean activations, the per-layer norm of covariance differences to a reference model,
and the cross-lingual view of one model on parallel sentences (FLORES-200). The models are given
by path, or taken from a sweep: each finished run's checkpoint against its Phase-1 model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from cft.analysis.config import AnalyzeConfig
from cft.analysis.publish import AnalysisResult, Tracking, publish
from cft.errors import CftError
from cft.run import layout


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
    tracking: Tracking | None = None,
) -> AnalysisResult:
    """Compare hidden activations of models on English prompts.

    `models` maps labels to checkpoints (e.g. {"phase1": ..., "full": ..., "lf_h2": ...}). For every
    model with a reference (`references[label]`, else `reference`, else the first model), the per-layer
    norm of its covariance difference to the reference is drawn, one line per model; all models share
    one t-SNE plot. With `parallel_dir` (FLORES-200 layout) the cross-lingual similarity per layer of
    `parallel_model` (default: the first model; the paper uses the base) is drawn too.
    """
    import numpy as np

    from cft.analysis import figures as F
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
        raise CftError("representations need models: representations.models={phase1: /path, full: /path, ...} (or sweep_id=<id>)")
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
            raise CftError(f"representations.parallel_model={pm!r} is not one of the models {names}")
        langs = list(dict.fromkeys([pivot, *parallel_languages]))
        model, tok = load_model(str(models[pm]), dtype="fp32", what=f"model {pm}")
        frame = cross_lingual_similarity(
            model, tok, read_parallel(parallel_dir, langs, limit=parallel_limit), pivot=pivot, batch_size=batch_size
        )
        frame.to_csv(out_dir / "cross_lingual_similarity.csv", index=False)
        figs.append(F.cross_lingual(frame, out_dir))
        extra += [f"Cross-lingual view of `{pm}` on {parallel_dir} ({', '.join(langs)}).", ""]
    (out_dir / "covariance_difference.json").write_text(json.dumps(diffs, indent=2))
    pairs = [f"- `{m}` vs `{r}`" for m, r in references.items()]
    result = publish(
        out_dir,
        title="Representations",
        figures=figs,
        sections=[f"{len(prompt_list)} prompts. Covariance differences:", "", *pairs, "", *extra],
        summary={f"cov_diff/{k}/mean": float(np.mean(v)) for k, v in diffs.items()},
        tracking=tracking,
        run_name="representations",
        group="representations",
        config={"models": dict(models), "references": references, "prompts": str(prompts)},
    )
    print(f"Report: {result.report}")
    return result


def sweep_models(output_root: str | Path, sweep_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """Models of a sweep for `representations_report`: each finished run's Phase-2 checkpoint
    (`<run>/checkpoint`), compared with its Phase-1 model (`phase1_ref` in run_meta.json)."""
    from cft.analysis.runs import collect_local
    from cft.analysis.tables import group_cells

    sweep = collect_local(output_root, sweep_id)
    models, references, missing = {}, {}, []
    for idx, runs in group_cells(sweep.finished):
        run = runs[0]
        meta_file = run.path / layout.META
        phase1 = json.loads(meta_file.read_text()).get("phase1_ref") if meta_file.exists() else None
        if not (run.path / layout.CHECKPOINT).is_dir() or not phase1:
            missing.append(run.name)
            continue
        p1_label = f"phase1 {idx['model']} ({idx['phase1_data']})"
        models.setdefault(p1_label, str(phase1))
        label = f"{idx['model']}/{idx['strategy']} ({idx['phase1_data']}→{idx['phase2_data']})"
        models[label] = str(run.path / layout.CHECKPOINT)
        references[label] = p1_label
    if not models:
        raise CftError(
            f"no run of sweep {sweep_id!r} has both a checkpoint/ folder and phase1_ref in run_meta.json "
            f"({len(missing)} finished run(s) lack them); pass the models instead: representations.models={{phase1: /path, full: /path}}"
        )
    return models, references


def run(cfg: AnalyzeConfig) -> AnalysisResult:
    from cft.analysis.sweep import tracking_of

    mode = cfg.representations
    options = mode.model_dump(exclude={"models"})
    models, references = dict(mode.models or {}), None
    if not models and cfg.sweep_id:
        models, references = sweep_models(cfg.paths.output_root, cfg.sweep_id)
    default = (
        layout.analysis_dir(cfg.paths.output_root, cfg.sweep_id) / "representations"
        if cfg.sweep_id
        else Path(cfg.paths.output_root) / "representations"
    )
    return representations_report(
        models, references=references, out_dir=cfg.out_dir or default, tracking=tracking_of(cfg), **options
    )
