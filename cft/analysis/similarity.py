"""mode=similarity: the DES matrix (the paper's Definition 1) of several datasets.

Each dataset is a local file or folder, or an option of conf/phase1_data or conf/phase2_data
(loaded as training would load it, through `cft.data.sources.load_config`). `n` is a cap: a
dataset with fewer examples contributes all of them, and the report says how many each used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cft.analysis.config import AnalyzeConfig
from cft.analysis.publish import AnalysisResult, Tracking, publish
from cft.errors import CftError

DATA_GROUPS = ("phase1_data", "phase2_data")


def dataset_texts(name: str, spec: Any, conf_dir: Path | None) -> list[str]:
    """Texts of one dataset: `spec` is a local file/folder path, or None to use the option `name` of
    conf/phase1_data or conf/phase2_data (its path or hub source)."""
    from cft.measures.similarity import example_texts, read_texts

    if spec:
        path = Path(str(spec)).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
            if not files:
                raise CftError(f"{path}: no .json/.jsonl files in the dataset folder")
            return [t for f in files for t in read_texts(f)]
        return read_texts(path)
    if conf_dir is None:
        raise CftError(f"dataset {name!r}: give its path (similarity.datasets={{{name}: /path/to/file}})")
    from omegaconf import OmegaConf

    from cft.data.sources import load_config

    for group in DATA_GROUPS:
        file = Path(conf_dir) / group / f"{name}.yaml"
        if file.exists():
            node = OmegaConf.to_container(OmegaConf.load(file), resolve=True)
            return example_texts(load_config(node).examples)
    raise CftError(
        f"dataset {name!r} is not an option of conf/phase1_data or conf/phase2_data; "
        f"give its path instead: similarity.datasets={{{name}: /path/to/file_or_folder}}"
    )


def des_report(
    datasets: Mapping[str, Any] | Sequence[str],
    *,
    embedder: Any,
    n: int | None = 500,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    out_dir: str | Path = "outputs/similarity",
    conf_dir: Path | None = None,
    tracking: Tracking | None = None,
    echo: bool = True,
) -> AnalysisResult:
    """The DES matrix of several datasets: des.md/.csv/.tex, a samples table, a heatmap, and a W&B run.

    `datasets` maps a name to a local file or folder (None: the conf option of that name), or lists
    conf option names. `embedder` is an object with encode(texts), or a `_target_` config.
    """
    from cft.analysis import figures as F
    from cft.analysis.tables import Stat, Table
    from cft.measures.similarity import build_embedder, des_matrix, embedder_id

    if isinstance(datasets, str):
        datasets = [datasets]
    items = dict(datasets) if isinstance(datasets, Mapping) else {str(d): None for d in datasets}
    if not items:
        raise CftError(
            "mode=similarity needs at least one dataset: similarity.datasets=[alpaca,multialpaca] or similarity.datasets={name: path}"
        )
    texts = {name: dataset_texts(name, spec, conf_dir) for name, spec in items.items()}
    used = {name: len(t) if n is None else min(n, len(t)) for name, t in texts.items()}
    emb = build_embedder(embedder)
    matrix = des_matrix(emb, texts, n=n, seed=seed, cache_dir=cache_dir)
    out_dir = Path(out_dir)
    table = Table(
        name="des",
        title=f"DES (up to {n} samples per dataset, seed {seed})" if n else f"DES (all examples, seed {seed})",
        index_cols=["dataset"],
        index=[{"dataset": a} for a in matrix.index],
        columns=list(matrix.columns),
        cells=[[Stat(float(v), None, 1) for v in row] for row in matrix.values],
        scale=1.0,
        digits=3,
        mark_best=False,
    )
    samples = Table(
        name="des_samples",
        title="Examples per dataset and samples embedded",
        index_cols=["dataset"],
        index=[{"dataset": a} for a in texts],
        columns=["examples", "samples"],
        cells=[[Stat(float(len(texts[a])), None, 1), Stat(float(used[a]), None, 1)] for a in texts],
        scale=1.0,
        digits=0,
        mark_best=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix.to_csv(out_dir / "des_matrix.csv")
    figs = [F.des_heatmap(matrix, out_dir)]
    counts = "; ".join(
        f"{a}: {used[a]} of {len(texts[a])}" + (" (all of them)" if used[a] == len(texts[a]) else "") for a in texts
    )
    cap = f"at most {n} samples per dataset (a dataset with fewer uses all of them)" if n else "all examples of each dataset"
    result = publish(
        out_dir,
        title="Dataset embedding similarity",
        tables=[table, samples],
        figures=figs,
        sections=[f"Embedder: `{embedder_id(emb)}`; {cap}, seed {seed}.", "", f"Samples embedded: {counts}.", ""],
        summary={f"des/{a}/{b}": float(matrix.loc[a, b]) for a in matrix.index for b in matrix.columns if a < b},
        tracking=tracking,
        run_name="des",
        group="similarity",
        config={"datasets": {k: str(v) for k, v in items.items()}, "n": n, "seed": seed, "embedder": embedder_id(emb)},
    )
    if echo:
        print(table.to_markdown())
        print(f"Samples embedded: {counts}.")
        print(f"Report: {result.report}")
    return result


def run(cfg: AnalyzeConfig, *, conf_dir: Path | None = None) -> AnalysisResult:
    from cft.analysis.sweep import tracking_of

    options = cfg.similarity
    return des_report(
        options.datasets or [],
        embedder=cfg.embedder,
        n=options.n,
        seed=options.seed,
        cache_dir=options.cache_dir,
        out_dir=cfg.out_dir or Path(cfg.paths.output_root) / "similarity",
        conf_dir=conf_dir,
        tracking=tracking_of(cfg),
    )
