"""The recipe: one cell of the study, as one readable story.

    check every input -> Phase 1 (cached) -> evaluate it (cached) -> Phase 2 through the
    strategy's hooks -> evaluate -> record (metrics.json, W&B) -> DONE

Only this module sees the whole config; everything it calls takes explicit arguments.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cft.data.sources import SFTData, load_config
from cft.errors import CftError, ConfigError
from cft.evaluation import evaluate
from cft.evaluation.summary import print_summary
from cft.models import load_model, save_built_model
from cft.run import artifacts, keys
from cft.run.folder import RunDir, comparable
from cft.run.tracking import Tracker
from cft.strategies.base import StrategyContext
from cft.training import distributed
from cft.training.loop import TrainSettings, fit, zero3_init

log = logging.getLogger(__name__)


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- inputs


def load_data(data_cfg) -> SFTData:
    return load_config(_plain(data_cfg))


def build_eval_tasks(eval_cfg) -> dict[str, Any]:
    tasks = eval_cfg.get("tasks") or {}
    if not tasks:
        raise ConfigError("the eval config lists no tasks (eval.tasks is empty)")
    # A task set to null is switched off (eval.tasks.mlqa=null).
    built = {name: build(node) for name, node in tasks.items() if node is not None}
    if not built:
        raise ConfigError("every task of the eval suite is switched off (eval.tasks.* = null)")
    return built


def build(node):
    """hydra.utils.instantiate, letting a CftError raised by the object (a bad option, a missing
    file) through as itself: Hydra wraps it in an InstantiationException, whose trace would bury it."""
    try:
        return instantiate(node)
    except Exception as exc:
        if isinstance(exc.__cause__, CftError):
            raise exc.__cause__ from None
        raise


def base_reference(model_cfg, cache_dir: Path) -> str:
    """Hub id or folder of the base model; a model built in code is saved once into the cache."""
    if model_cfg.get("base"):
        return str(model_cfg.base)
    build = _plain(model_cfg.get("build"))
    if not build:
        raise ConfigError(f"model '{model_cfg.name}' has neither model.base (hub id or path) nor model.build")
    seed = build.pop("seed", 0)
    pretrain = _plain(model_cfg.get("pretrain"))
    if pretrain:
        # Phase 0: a short pre-training on raw text, so the base knows the languages and skills
        # (cft.models.pretrain); cached like any artifact, keyed by the build and the pretrain spec.
        from cft.models.pretrain import save_pretrained_base

        spec = {"build": build, "seed": seed, "tokenizer": "bytes-v1", "pretrain": pretrain}
        path = artifacts.cached(
            cache_dir, "base", spec, lambda tmp: save_pretrained_base(tmp / "model", build, pretrain, seed=seed)
        )
        return str(path / "model")
    path = artifacts.cached(
        cache_dir,
        "base",
        {"build": build, "seed": seed, "tokenizer": "bytes-v1"},
        lambda tmp: save_built_model(tmp / "model", build, seed=seed),
    )
    return str(path / "model")


def _built_base_spec(model_cfg) -> Any:
    """What determines a base built in code (for the keys of artifacts derived from it)."""
    pretrain = _plain(model_cfg.get("pretrain"))
    return {**_plain(model_cfg.build), "pretrain": pretrain} if pretrain else _plain(model_cfg.build)


def check_model(ref: str, *, gguf_file: str | None, what: str):
    """Load only the model config, so a checkpoint that cannot load fails before any training."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as exc:
        raise CftError(
            f"Could not load the config of {what} '{ref}': {exc}\n"
            "Offline? Download the checkpoint and pass its local path (e.g. model.base=/path/to/model)."
        ) from exc


# ---------------------------------------------------------------- phases


def phase_train_config(train_cfg, phase: str) -> dict[str, Any]:
    """The train settings of one phase: the shared ones, updated by `train.<phase>` (e.g. train.phase2.lr)."""
    train = _plain(train_cfg)
    shared = {k: v for k, v in train.items() if k not in ("phase1", "phase2")}
    return {**shared, **{k: v for k, v in (train.get(phase) or {}).items() if v is not None}}


@dataclass
class Phase1:
    ref: str  # hub id or folder of the Phase-1 model
    key: str  # cache key: what determines this model
    trained: bool
    stats: dict


def instruct_reference(model_cfg) -> str:
    """The Instruct checkpoint that phase1_data=instruct uses as the Phase-1 model."""
    if not model_cfg.get("instruct"):
        raise ConfigError(
            f"phase1_data=instruct needs an Instruct checkpoint, but model '{model_cfg.name}' has none "
            "(set model.instruct=<hub id or path>)"
        )
    return str(model_cfg.instruct)


def phase1(cfg: DictConfig, base_ref: str, data1: SFTData | None, cache_dir: Path, log_fn) -> Phase1:
    """Fine-tune the base model on English instructions, or take the Instruct checkpoint.

    The result is cached under a key of (model, Phase-1 data, training settings, seed) only, so every
    strategy of a sweep shares it."""
    if data1 is None:
        ref = instruct_reference(cfg.model)
        log.info("Phase 1: no training; using the Instruct checkpoint %s", ref)
        return Phase1(
            ref=ref, key=artifacts.key_of({"instruct": ref, "gguf_file": cfg.model.get("gguf_file")}), trained=False, stats={}
        )
    ref, key, stats = finetune_base("phase1", cfg, base_ref, cfg.phase1_data, data1, cache_dir, log_fn)
    return Phase1(ref=ref, key=key, trained=True, stats=stats)


def finetune_base(
    kind: str, cfg: DictConfig, base_ref: str, data_cfg, data: SFTData, cache_dir: Path, log_fn
) -> tuple[str, str, dict]:
    """Fine-tune the base model on one dataset, as a cached artifact keyed by (model, data, the phase's
    train settings, seed). `kind` is "phase1", or "phase2_alone" (the base fine-tuned on the Phase-2
    data alone, which MPD compares with the Phase-1 model). Returns (model folder, key, train stats)."""
    train = phase_train_config(cfg.train, "phase1")
    spec = {
        "base": base_ref if cfg.model.get("base") else _built_base_spec(cfg.model),
        "gguf_file": cfg.model.get("gguf_file"),
        "data": _plain(data_cfg),
        "train": comparable({"train": train})["train"],
        "seed": int(cfg.seed),
    }
    key = artifacts.key_of(spec)
    resume_dir = cache_dir / kind / f"{key}.checkpoints"

    settings = TrainSettings.from_config(train, seed=int(cfg.seed))

    def build(tmp: Path) -> None:  # runs on every rank; rank 0 alone writes
        with zero3_init(settings):
            model, tokenizer = load_model(base_ref, gguf_file=cfg.model.get("gguf_file"), dtype="fp32", what="base model")
        model, stats, tok_stats = fit(
            model,
            tokenizer,
            data.examples,
            settings=settings,
            max_length=int(train["max_length"]),
            loss_on_prompt=bool(train["loss_on_prompt"]),
            packing=bool(train.get("packing", False)),
            attn_implementation=train.get("attn_implementation"),
            phase=kind,
            checkpoint_dir=resume_dir,
            log_fn=log_fn,
        )
        if not distributed.is_main():
            return
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        (tmp / "train_stats.json").write_text(
            json.dumps({**asdict(stats), **{f"tokenize_{k}": v for k, v in asdict(tok_stats).items()}})
        )

    path = artifacts.cached(cache_dir, kind, spec, build, collective=True)
    if distributed.is_main():
        shutil.rmtree(resume_dir, ignore_errors=True)
    return str(path / "model"), key, json.loads((path / "train_stats.json").read_text())


def dataset_similarity(embedder_cfg, data1: SFTData, data2: SFTData, *, n: int, seed: int, cache_dir: Path) -> dict[str, float]:
    """DES (the paper's Definition 1) between the Phase-1 and Phase-2 data. An embedder that cannot
    load (e.g. LaBSE offline) leaves DES out with a warning rather than stopping the run."""
    from cft.measures.similarity import build_embedder, dataset_des, example_texts

    try:
        embedder = build_embedder(embedder_cfg)
        value = dataset_des(
            embedder, example_texts(data1.examples), example_texts(data2.examples), n=n, seed=seed, cache_dir=cache_dir
        )
    except CftError as exc:
        log.warning("DES not computed: %s", exc)
        return {}
    log.info("DES(Phase-1 data, Phase-2 data) = %.4f", value)
    return {"des": value}


def evaluate_cached(
    model_ref: str, model_key: str, eval_cfg, tasks, cache_dir: Path, *, gguf_file: str | None = None
) -> dict[str, float]:
    """Evaluate a model artifact once per (model, eval settings); later runs reuse the scores."""
    spec = {"model": model_key, "eval": comparable({"eval": _plain(eval_cfg)})["eval"]}

    def build(tmp: Path) -> None:
        model, tokenizer = load_model(model_ref, gguf_file=gguf_file, what="Phase-1 model")
        scores = evaluate(model.to(_device()), tokenizer, tasks, limit=eval_cfg.get("limit"), out_dir=tmp / "samples")
        (tmp / "metrics.json").write_text(json.dumps(scores, indent=2, sort_keys=True))

    path = artifacts.cached(cache_dir, "eval", spec, build)
    return json.loads((path / "metrics.json").read_text())


# ---------------------------------------------------------------- the run


def train_cell(cfg: DictConfig, *, run_dir: str | Path, choices: Mapping[str, str]) -> dict[str, Any]:
    """Run one cell: Phase 1 -> Phase 2 with the chosen strategy -> evaluation -> record."""
    distributed.init()  # several ranks (torchrun, SLURM tasks) train one cell; rank 0 alone writes
    rd = RunDir(run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    rd.check_config(resolved)
    if rd.is_done():
        log.info("%s is already finished (DONE); skipping it. Delete the folder to run it again.", rd.path)
        return rd.metrics()
    if distributed.is_main():
        rd.start(resolved, {"sweep_id": cfg.sweep_id, "seed": int(cfg.seed), "choices": dict(choices)})
    cache_dir = Path(cfg.paths.cache_dir)
    from transformers import set_seed

    set_seed(int(cfg.seed))

    # 1. Every user input is checked before any model work: configs, data files, checkpoints.
    strategy = build(cfg.strategy)
    use_instruct = bool(cfg.phase1_data.get("use_instruct_checkpoint", False))
    data1 = None if use_instruct else load_data(cfg.phase1_data)
    data2 = load_data(cfg.phase2_data)
    eval_tasks = build_eval_tasks(cfg.eval)
    base_ref = base_reference(cfg.model, cache_dir)
    model_config = check_model(base_ref, gguf_file=cfg.model.get("gguf_file"), what="base model")
    if use_instruct:
        check_model(instruct_reference(cfg.model), gguf_file=cfg.model.get("gguf_file"), what="Instruct model")
    strategy.validate(model_config)

    cell = f"{choices.get('phase1_data')}-{choices.get('phase2_data')}/{choices.get('model')}/{choices.get('strategy')}/seed{cfg.seed}"
    tracker = Tracker(
        mode=cfg.tracking.mode if distributed.is_main() else "disabled",
        project=cfg.tracking.project,
        entity=cfg.tracking.get("entity"),
        run_dir=rd.path,
        name=cell,
        group=str(cfg.sweep_id),
        job_type="train",
        config=resolved,
    )
    try:
        metrics = _run_phases(cfg, rd, strategy, data1, data2, eval_tasks, base_ref, cache_dir, tracker)
        if metrics is None:  # a rank other than 0: its part (training) is done
            return {}
        rd.write_json("metrics.json", metrics)
        tracker.summary(metrics)
        tracker.log_table("scores_per_language", ["phase", "ability", "task", "language", "score"], keys.language_rows(metrics))
    finally:
        tracker.finish()
    rd.mark_done()
    print_summary(metrics, rd.path)
    return metrics


def _run_phases(cfg, rd: RunDir, strategy, data1, data2, eval_tasks, base_ref, cache_dir, tracker) -> dict[str, Any]:
    metrics: dict[str, Any] = {f"data/phase2/n/{lang}": n for lang, n in data2.sizes.items()}
    metrics["data/phase2/skipped"] = data2.skipped
    metrics["data/phase2/n"] = len(data2)
    if data1 is not None:
        metrics.update({f"data/phase1/n/{lang}": n for lang, n in data1.sizes.items()})
        metrics["data/phase1/skipped"] = data1.skipped
        metrics["data/phase1/n"] = len(data1)

    if data1 is not None and cfg.similarity.des:
        metrics.update(
            dataset_similarity(
                cfg.embedder, data1, data2, n=int(cfg.similarity.n), seed=int(cfg.similarity.seed), cache_dir=cache_dir
            )
        )

    # 2. Phase 1 and its evaluation: artifacts shared by every strategy of a sweep.
    p1 = phase1(cfg, base_ref, data1, cache_dir, tracker.log)
    rd.update_meta(base_ref=base_ref, phase1_ref=p1.ref, phase1_key=p1.key)
    if cfg.similarity.mpd:
        from cft.measures.similarity import mpd

        alone, _, _ = finetune_base("phase2_alone", cfg, base_ref, cfg.phase2_data, data2, cache_dir, tracker.log)
        metrics.update(mpd(p1.ref, alone).metrics("mpd"))
    scores1 = evaluate_cached(
        p1.ref, p1.key, cfg.eval, eval_tasks, cache_dir, gguf_file=None if p1.trained else cfg.model.get("gguf_file")
    )
    metrics.update({f"phase1/{k}": v for k, v in scores1.items()})

    # 3. Phase 2 through the strategy's hooks.
    with zero3_init(TrainSettings.from_config(phase_train_config(cfg.train, "phase2"))):
        model, tokenizer = load_model(
            p1.ref, gguf_file=None if p1.trained else cfg.model.get("gguf_file"), dtype="fp32", what="Phase-1 model"
        )
    counterpart_cfg = cfg.phase2_data.get("counterpart")
    train2 = phase_train_config(cfg.train, "phase2")
    ctx = StrategyContext(
        base_ref=base_ref,
        phase1_dir=Path(p1.ref),
        tokenizer=tokenizer,
        cache_dir=cache_dir,
        run_dir=rd.path,
        seed=int(cfg.seed),
        phase2_size=len(data2),
        phase1_key=p1.key,
        counterpart=(lambda: load_data(counterpart_cfg).examples) if counterpart_cfg else list,
        counterpart_spec=_plain(counterpart_cfg) or {},
        load_phase1=lambda: load_model(p1.ref, what="Phase-1 model")[0].to(_device()),
        max_length=int(train2["max_length"]),
    )
    examples2 = strategy.phase2_data(list(data2.examples), ctx)
    model = strategy.prepare(model, ctx)
    model, stats2, tok2 = fit(
        model,
        tokenizer,
        examples2,
        settings=TrainSettings.from_config(train2, seed=int(cfg.seed)),
        max_length=int(train2["max_length"]),
        loss_on_prompt=bool(train2["loss_on_prompt"]),
        hooks=strategy,
        packing=bool(train2.get("packing", False)),
        attn_implementation=train2.get("attn_implementation"),
        phase="phase2",
        checkpoint_dir=rd.path / "checkpoints" / "phase2",
        log_fn=tracker.log,
    )
    if not distributed.is_main():
        return None  # rank 0 alone finalizes, saves, evaluates and records
    model = strategy.finalize(model, ctx)
    model.save_pretrained(rd.checkpoint)
    tokenizer.save_pretrained(rd.checkpoint)
    shutil.rmtree(rd.path / "checkpoints", ignore_errors=True)
    if cfg.similarity.layer_changes:
        record_layer_changes(base_ref, p1.ref, rd.checkpoint, rd.path / "layer_changes.csv", tracker)

    # 4. Evaluation of the Phase-2 model, in memory.
    scores2 = evaluate(
        model.to(_device()), tokenizer, eval_tasks, limit=cfg.eval.get("limit"), out_dir=rd.path / "eval" / "phase2"
    )
    metrics.update({f"phase2/{k}": v for k, v in scores2.items()})
    for ability in ("ta_avg", "la_avg"):
        if ability in scores1 and ability in scores2:
            metrics[f"delta/{ability}"] = scores2[ability] - scores1[ability]
    metrics.update({f"train/phase2/{k}": v for k, v in asdict(stats2).items() if v is not None})
    metrics["train/phase2/examples_truncated"] = tok2.truncated
    metrics["train/phase2/examples_dropped"] = tok2.dropped
    metrics["train/phase2/padding_fraction"] = tok2.padding_fraction  # padded micro-batches
    metrics["train/phase2/padding_fraction_packed"] = tok2.padding_fraction_packed
    if p1.stats:
        metrics.update({f"train/phase1/{k}": v for k, v in p1.stats.items() if v is not None})
    metrics.update({f"strategy/{k}": v for k, v in strategy.report().items()})
    for name, (columns, rows) in strategy.tables().items():
        tracker.log_table(f"strategy/{name}", columns, rows)
    return metrics


def local_checkpoint(ref: str) -> str:
    """A folder for `ref`: itself if local, else its copy in the hub cache (it was loaded before)."""
    if Path(ref).expanduser().exists():
        return ref
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(ref, local_files_only=True)
    except Exception as exc:
        raise CftError(f"{ref} is neither a local folder nor in the hub cache ({exc})") from None


def record_layer_changes(base_ref: str, phase1_ref: str, phase2_dir: Path, out_csv: Path, tracker) -> None:
    """Per-module, per-layer relative change and its rank, base -> Phase 1 and Phase 1 -> Phase 2,
    streamed tensor by tensor; written as CSV and logged to W&B as a table."""
    from cft.measures.layers import transition_changes

    try:
        frame = transition_changes(local_checkpoint(base_ref), local_checkpoint(phase1_ref), phase2_dir)
    except CftError as exc:  # e.g. a base that is not in safetensors form
        log.warning("Layer changes not recorded: %s", exc)
        return
    frame.to_csv(out_csv, index=False)
    columns = ["transition", "module", "layer", "change", "rank"]
    tracker.log_table("layer_changes", columns, frame[columns].values.tolist())


# ---------------------------------------------------------------- reporting
