"""The training recipe: one cell of the study, read top to bottom.

    TrainRecipe(cfg, run_dir=..., choices=...).run()
        setup()      every input checked before any model work: the strategy's options against the
                     model's shape, every dataset the cell reads (the English counterpart included),
                     the evaluation suite, the checkpoints; then the run folder (locked), the base
                     (phase 0 of the demo), the tracker
        phase1()     DES; the Phase-1 model (trained once per model, data, settings and seed, or the
                     Instruct checkpoint) and its evaluation, both cached; MPD
        phase2()     the strategy's hooks around the one training loop; the model saved
        evaluate()   the Phase-2 model, in memory (every rank scores its share of the lm-eval requests)
        record()     metrics.json, W&B, DONE
        cleanup()    W&B finished, the run folder unlocked (also after a failure, which leaves FAILED)

A full or read-only disk (whatever type its writer raises: cft.run.disk) or a GPU out of memory ends the
cell with one line and exit 1; trained weights the disk refuses (the Phase-2 model in the run folder, the
Phase-1 model and phase 0's base in the cache: cft.run.artifacts.Trained) are kept in a rescue place (the
temporary folder's, then paths.rescue_dir), from which the same command continues without training.

Only this module sees the whole config; everything it calls takes explicit arguments. The base and
the Phase-1 model are `Checkpoint` handles: loaded lazily, at most once.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cft.data.sources import SFTData, load_config
from cft.errors import CftError, ConfigError
from cft.evaluation import SCORING_PROTOCOL, evaluate
from cft.evaluation.summary import phase_intervals, print_summary
from cft.models import save_built_model
from cft.models.handle import Checkpoint
from cft.recipes.common import (
    build,
    build_eval_tasks,
    device,
    model_shape,
    phase_train_config,
    plain,
    train_settings,
)
from cft.run import disk, keys, layout
from cft.run.artifacts import Cache, Trained, key_of, manifest_digest
from cft.run.disk import DiskError
from cft.run.folder import RunDir, comparable
from cft.run.tracking import Tracker
from cft.strategies.base import StrategyContext
from cft.training import distributed, threads
from cft.training.loop import fit, weights_dtype, zero3_init, zero_stage

log = logging.getLogger(__name__)

__all__ = ["TrainRecipe", "train_cell", "base_reference", "finetune_base", "evaluate_cached", "phase_train_config"]


def load_data(data_cfg: Any, key: str) -> SFTData:
    return load_config(plain(data_cfg), key)


# ---------------------------------------------------------------- the base model


def base_reference(model_cfg: Mapping[str, Any], cache_dir: Path | Cache) -> str:
    """Hub id or folder of the base model; a model built in code is saved once into the cache (`cache_dir`,
    or the run's Cache), after phase 0 where the model config asks for it (the demo's pre-training,
    cft.models.pretrain)."""
    model_cfg = plain(model_cfg)
    if model_cfg.get("base"):
        return str(model_cfg["base"])
    arch = dict(model_cfg.get("build") or {})
    if not arch:
        raise ConfigError(f"model '{model_cfg.get('name')}' has neither model.base (hub id or path) nor model.build")
    seed = arch.pop("seed", 0)
    pretrain = model_cfg.get("pretrain")
    cache = cache_dir if isinstance(cache_dir, Cache) else Cache(cache_dir)
    if pretrain:
        from cft.models.pretrain import pretrained_base, save_base

        spec = {"build": arch, "seed": seed, "tokenizer": "bytes-v1", "pretrain": pretrain}

        def build_base(tmp: Path) -> Trained | None:  # runs on every rank; rank 0 alone writes
            model, tokenizer, stats = pretrained_base(arch, pretrain, seed=seed)
            if not distributed.is_main():
                return None
            # written by the cache, which keeps it in a rescue place when its disk refuses it
            return Trained(lambda folder: save_base(folder / "model", model, tokenizer, stats), disk.model_bytes(model))

        # Phase 0 trains: with several ranks every rank trains it (collective; rank 0 writes), none waits for it.
        path = cache.artifact("base", spec, build_base, collective=True)
    else:
        spec = {"build": arch, "seed": seed, "tokenizer": "bytes-v1"}
        path = cache.artifact("base", spec, lambda tmp: save_built_model(tmp / "model", arch, seed=seed))
    return str(path / "model")


def base_key(model_cfg: Mapping[str, Any], base_ref: str) -> Any:
    """What determines the base (for the keys of artifacts derived from it)."""
    if model_cfg.get("base"):
        return base_ref
    build_spec = dict(model_cfg["build"])
    return {**build_spec, "pretrain": model_cfg["pretrain"]} if model_cfg.get("pretrain") else build_spec


# ---------------------------------------------------------------- cached phases


def finetune_base(
    kind: str,
    *,
    base: Checkpoint,
    base_spec: Any,
    data_spec: Mapping[str, Any],
    data: SFTData,
    train: Mapping[str, Any],
    seed: int,
    cache: Cache,
    log_fn=None,
) -> tuple[Checkpoint, dict]:
    """Fine-tune the base model on one dataset with the given phase settings, as a cached artifact keyed
    by (base, data, train settings, seed). `kind` is "phase1" (the Phase-1 model), or "phase2_alone"
    (the base fine-tuned on the Phase-2 data alone with the Phase-1 settings, which MPD compares with
    the Phase-1 model). Returns the model's handle and the training statistics."""
    spec = {
        "base": base_spec,
        "gguf_file": base.gguf_file,
        "data": dict(data_spec),
        "train": comparable({"train": dict(train)})["train"],
        "seed": int(seed),
    }
    key = key_of(spec)
    resume_dir = cache.root / kind / f"{key}.checkpoints"
    settings = train_settings(train, seed=int(seed))

    def build_model(tmp: Path) -> Trained | None:  # runs on every rank; rank 0 alone writes
        with zero3_init(settings):
            model, tokenizer = base.load(fresh=True, dtype=weights_dtype(settings))
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
            return None
        tok = {f"tokenize_{k}": v for k, v in asdict(tok_stats).items()}

        def write(folder: Path) -> None:  # the model and its train/<kind>/* figures, together
            model.save_pretrained(folder / "model")
            tokenizer.save_pretrained(folder / "model")
            (folder / "train_stats.json").write_text(json.dumps({**asdict(stats), **tok}))

        # written by the cache, which keeps it in a rescue place when its disk refuses it (cft.run.artifacts)
        return Trained(write, disk.model_bytes(model))

    path = cache.artifact(kind, spec, build_model, collective=True)
    if distributed.is_main():
        shutil.rmtree(resume_dir, ignore_errors=True)
    stats = json.loads((path / "train_stats.json").read_text())
    return Checkpoint(str(path / "model"), key=key, what=f"{kind} model", cache=cache), stats


def evaluate_cached(
    model: Checkpoint,
    eval_cfg: Mapping[str, Any],
    tasks: Mapping[str, Any],
    cache: Cache,
    items_to: Path | None = None,
    *,
    dtype: str = "fp32",
) -> dict[str, Any]:
    """Evaluate a model artifact once per (model, its exact weights, eval settings, scoring protocol); later runs
    reuse the scores (and get a copy of its per-item scores at `items_to`, for the paired bootstrap of Phase 2 - Phase 1).
    `dtype`: what the weights are loaded in (the cell's evaluation precision, `Recipe._eval_dtype`)."""
    spec = {"model": model.key, "eval": comparable({"eval": dict(eval_cfg)})["eval"], "protocol": SCORING_PROTOCOL}
    digest = manifest_digest(model.ref)
    if digest:  # the exact weights scored: a rebuilt model (bytes differ, e.g. on a GPU) gets a new evaluation
        spec["weights"] = digest
    if dtype != "fp32":  # bf16 scores are other scores (fp32 keys stay as they were)
        spec["dtype"] = dtype

    def build_scores(tmp: Path) -> None:
        # Collective: with several ranks each scores its share of the lm-eval requests; rank 0 gathers and writes.
        loaded, tokenizer = model.load(dtype=dtype)
        scores = evaluate(
            loaded.to(device()), tokenizer, tasks, limit=eval_cfg.get("limit"), out_dir=tmp / "samples", sharded=True
        )
        if distributed.is_main():
            (tmp / layout.METRICS).write_text(json.dumps(scores, indent=2, sort_keys=True))

    path = cache.artifact("eval", spec, build_scores, collective=True)
    items = path / "samples" / layout.EVAL_ITEMS
    if items_to is not None and items.is_file() and distributed.is_main():
        items_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(items, items_to)
    return json.loads((path / layout.METRICS).read_text())


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
    return {"des": value, "des/n_phase1": min(n, len(data1)), "des/n_phase2": min(n, len(data2))}


def record_layer_changes(base: Checkpoint, phase1: Checkpoint, phase2_dir: Path, out_csv: Path, tracker) -> None:
    """Per-module, per-layer relative change and its rank, base -> Phase 1 and Phase 1 -> Phase 2,
    streamed tensor by tensor; written as CSV and logged to W&B as a table."""
    from cft.measures.layers import transition_changes

    try:
        frame = transition_changes(base.folder(), phase1.folder(), phase2_dir)
    except CftError as exc:  # e.g. a base on the hub, offline
        log.warning("Layer changes not recorded: %s", exc)
        return
    frame.to_csv(out_csv, index=False)
    columns = ["transition", "module", "layer", "change", "rank"]
    tracker.log_table("layer_changes", columns, frame[columns].values.tolist())


def rescue_dirs(run_path: Path, second: str | None) -> list[Path]:
    """Where a trained Phase-2 model goes when its run folder cannot take it (full or read-only disk):
    outside the output root (the temporary folder, then `paths.rescue_dir`), named by the run folder,
    so the same command finds it again."""
    from cft.run.folder import rescue_dirs as of_run

    return of_run(run_path, second)  # defined beside RunDir, which clears them when the folder's config changes


# ---------------------------------------------------------------- the recipe


class TrainRecipe:
    """One cell of the study: Phase 1 -> Phase 2 with the chosen strategy -> evaluation -> record."""

    def __init__(self, cfg: DictConfig, *, run_dir: str | Path, choices: Mapping[str, str]):
        self.cfg = cfg
        self.choices = dict(choices)
        self.run_dir = RunDir(run_dir)
        self.seed = int(cfg.seed)
        # artifacts checked on reuse; a trained one the cache's disk refuses is kept in a rescue place
        self.cache = Cache(
            cfg.paths.cache_dir, verify=cfg.paths.get("verify", "checksum"), rescue_dir=cfg.paths.get("rescue_dir")
        )
        self.metrics: dict[str, Any] = {}
        self.step = "setup"  # the step running now: what FAILED names
        self.tracker: Tracker | None = None
        self._lock = None
        self._rescued: Path | None = None  # where the Phase-2 weights were kept when the run folder refused them
        self._phase2_saved = False  # a rank other than 0: rank 0 saved the Phase-2 model it evaluates

    # ------------------------------------------------------------ the story

    def run(self) -> dict[str, Any]:
        ok, skipped = False, False
        try:
            if not self.setup():
                skipped = ok = True  # finished before
            else:
                self.phase1()
                self.phase2()
                self.evaluate()  # every rank scores its share of the lm-eval requests
                if distributed.is_main():  # rank 0 gathered the scores, and records
                    self.record()
                ok = True
        except BaseException as exc:
            error = self._disk_error(exc) or self._memory_error(exc)
            self.fail(error or exc)
            if error is not None:
                raise error from None  # one line, exit 1 (the next cell of a sweep runs): the message says what to do
            raise
        finally:
            self.cleanup()
            self._leave_together(ok)
        if skipped:
            return self.run_dir.metrics()
        if not distributed.is_main():
            return {}
        print_summary(self.metrics, self.run_dir.path)
        return self.metrics

    @staticmethod
    def _leave_together(ok: bool) -> None:
        """Every rank ends the cell here, together: the others wait (without a timeout) while rank 0
        evaluates, so none runs ahead into the next cell's training or reads the sweep's end early. A stop
        (SIGTERM, Ctrl-C) skips it: every rank stops, and the launcher ends the job."""
        import sys

        from cft.training.loop import Interrupted

        if isinstance(sys.exc_info()[1], (Interrupted, KeyboardInterrupt, SystemExit)):
            return
        distributed.meet(ok)

    def setup(self) -> bool:
        """Check every input, then prepare the run folder, the base and the tracker. False: already finished."""
        cfg = self.cfg
        disk.quiet_log_files()  # train.log on a disk that fills up or turns read-only: no traceback per record
        threads.configure(cfg.get("threads"))
        distributed.init()  # several ranks (torchrun, SLURM tasks) train one cell; rank 0 alone writes
        resolved = OmegaConf.to_container(cfg, resolve=True)
        refused = None
        if distributed.is_main():
            try:
                self._lock = self.run_dir.lock()  # one process per cell; a second one stops here, naming the holder
                self.run_dir.check_config(resolved)
            except CftError as exc:
                refused = exc
        # Rank 0 decides for the job (the lock, the folder's config): the other ranks must not train a cell whose
        # rank 0 stopped, nor read a config.yaml rank 0 may be writing. After this point every rank sees the same folder.
        message = distributed.share(str(refused) if refused else None)
        if refused is not None:
            raise refused
        if message:
            raise CftError(message)
        if self.run_dir.is_done():
            log.info("%s is already finished (DONE); skipping it. Delete the folder to run it again.", self.run_dir.path)
            return False
        if distributed.is_main():
            self.run_dir.start(resolved, {"sweep_id": cfg.sweep_id, "seed": self.seed, "choices": self.choices})
        self._preflight_verdict()  # after start: the folder says what was asked (config.yaml) and why it stopped
        from transformers import set_seed

        set_seed(self.seed)

        # Every user input is checked before any model work: options, data files, checkpoints.
        self.model_cfg = plain(cfg.model)
        self.strategy = build(cfg.strategy)
        self.use_instruct = bool(cfg.phase1_data.get("use_instruct_checkpoint", False))
        # k <= layers and the like, before phase 0 or Phase 1 trains
        shape = model_shape(self.model_cfg, use_instruct=self.use_instruct)
        self.strategy.validate(shape)
        self.shape = shape
        self.data1 = None if self.use_instruct else load_data(cfg.phase1_data, "phase1_data")
        self.data2 = load_data(cfg.phase2_data, "phase2_data")
        counterpart_cfg = plain(cfg.phase2_data.get("counterpart"))
        needs = self.strategy.needs()
        self.counterpart = (
            load_data(counterpart_cfg, "phase2_data.counterpart") if counterpart_cfg and "counterpart" in needs else None
        )
        if "counterpart" in needs and self.counterpart is None:
            raise ConfigError(
                f"strategy {self.choices.get('strategy')} replays the English counterpart of the Phase-2 data, "
                f"but phase2_data={self.choices.get('phase2_data')} has none (phase2_data.counterpart)"
            )
        self.counterpart_spec = counterpart_cfg or {}
        self.eval_tasks = build_eval_tasks(cfg.eval, cfg.model.get("dtype", "auto"))
        gguf = self.model_cfg.get("gguf_file")
        if self.use_instruct:
            instruct = self.model_cfg.get("instruct")
            if not instruct:
                raise ConfigError(
                    f"phase1_data=instruct needs an Instruct checkpoint, but model '{self.model_cfg['name']}' has none "
                    "(set model.instruct=<hub id or path>)"
                )
            self.instruct = Checkpoint(
                str(instruct),
                key=key_of({"instruct": str(instruct), "gguf_file": gguf}),
                what="Instruct model",
                setting="model.instruct",
                gguf_file=gguf,
                cache=self.cache,
            )
            self.instruct.config()
        # The base: a built model is made here (phase 0 of the demo); a checkpoint is checked where the
        # cell needs it (Phase-1 training, MPD, LF_H2's ranks); otherwise it is optional (layer changes).
        base_needed = not self.use_instruct or bool(cfg.similarity.mpd) or "base" in needs
        self.base = self._base(required=base_needed)

        cell = layout.cell_of(self.choices, self.seed)
        main = distributed.is_main()
        self.tracker = Tracker(
            mode=cfg.tracking.mode if main else "disabled",
            project=cfg.tracking.project,
            entity=cfg.tracking.get("entity"),
            run_dir=self.run_dir.path,
            name=cell.name,
            group=str(cfg.sweep_id),
            job_type="train",
            config=resolved,
            meta={"sweep_id": str(cfg.sweep_id), "seed": self.seed, "choices": self.choices},
        )
        self.tracker.define_phase_metrics()  # each phase's curves on its own step axis
        self._record_data()
        return True

    def phase1(self) -> None:
        """DES, the Phase-1 model and its evaluation (both shared by every strategy of a sweep), MPD."""
        self.step = "phase1"
        cfg = self.cfg
        if self.data1 is not None and cfg.similarity.des:
            self.metrics.update(
                dataset_similarity(
                    cfg.embedder,
                    self.data1,
                    self.data2,
                    n=int(cfg.similarity.n),
                    seed=int(cfg.similarity.seed),
                    cache_dir=self.cache.root,
                )
            )
        if self.use_instruct:
            log.info("Phase 1: no training; using the Instruct checkpoint %s", self.instruct.ref)
            self.p1, self.p1_stats = self.instruct, {}
        else:
            self.p1, self.p1_stats = finetune_base(
                "phase1",
                base=self.base,
                base_spec=self._base_spec,
                data_spec=plain(cfg.phase1_data),
                data=self.data1,
                train=self._train("phase1"),
                seed=self.seed,
                cache=self.cache,
                log_fn=self.tracker.log,
            )
        self.run_dir.update_meta(base_ref=self.base.ref if self.base else None, phase1_ref=self.p1.ref, phase1_key=self.p1.key)
        if cfg.similarity.mpd:
            from cft.measures.similarity import mpd

            self.step = "mpd"
            alone, _ = finetune_base(
                "phase2_alone",
                base=self.base,
                base_spec=self._base_spec,
                data_spec=plain(cfg.phase2_data),
                data=self.data2,
                train=self._train("phase1"),
                seed=self.seed,
                cache=self.cache,
                log_fn=self.tracker.log,
            )
            self.metrics.update(mpd(self.p1.folder(), alone.folder()).metrics())
        self.step = "phase1 evaluation"
        scores1 = evaluate_cached(
            self.p1,
            plain(cfg.eval),
            self.eval_tasks,
            self.cache,
            items_to=layout.eval_items(self.run_dir.path, "phase1"),
            dtype=self._eval_dtype(),
        )
        self.scores1 = scores1
        self.metrics.update(keys.phased("phase1", scores1))
        timing = getattr(self.eval_tasks, "timing", {})  # empty when the scores came from the cache
        self.metrics.update({keys.evaluation("phase1", k): v for k, v in timing.items()})

    def phase2(self) -> None:
        """The strategy's hooks around the one training loop; rank 0 saves the model."""
        self.step = "phase2"
        cfg = self.cfg
        train2 = self.strategy.phase2_train(self._train("phase2"))  # e.g. strategy.lr
        settings = train_settings(train2, seed=self.seed)
        rescued = rescue_dirs(self.run_dir.path, cfg.paths.get("rescue_dir"))
        with zero3_init(settings):  # under ZeRO-3 the trained copy is created partitioned, apart from the plain one
            # else the one Phase-1 model, shared (in the training dtype: bf16 under DeepSpeed bf16)
            model, tokenizer = self.p1.load(fresh=zero_stage(settings) == 3, dtype=weights_dtype(settings))
        ctx = StrategyContext(
            base_ref=self.base.ref if self.base else "",
            phase1_dir=Path(self.p1.folder()) if "base" in self.strategy.needs() else Path(self.p1.ref),
            tokenizer=tokenizer,
            cache_dir=self.cache.root,
            run_dir=self.run_dir.path,
            seed=self.seed,
            phase2_size=len(self.data2),
            phase1_key=self.p1.key,
            counterpart=(lambda: list(self.counterpart.examples)) if self.counterpart else list,
            counterpart_spec=self.counterpart_spec,
            load_phase1=lambda: self.p1.load(dtype=self._eval_dtype())[0].to(device()),
            max_length=int(train2["max_length"]),
            base=self.base,
            phase1=self.p1,
            cache=self.cache,
        )
        examples2 = self.strategy.phase2_data(list(self.data2.examples), ctx)
        model = self.strategy.prepare(model, ctx)
        # The copy that evaluated Phase 1 or generated the replay goes before training (about 30 GB at 7B on
        # GPU 0); the model that trains lives on as `model`. A later load_phase1 reads the folder again.
        self.p1.release()
        saved = self._trained_before(rescued)
        if saved is not None:  # an earlier attempt trained this cell, then failed to save it or to finish
            from cft.models import load_model

            model, tokenizer = load_model(str(saved), dtype="fp32", what="saved Phase-2 model")
            train_figures = self._saved_figures(saved)
        else:
            model, stats2, tok2 = fit(
                model,
                tokenizer,
                examples2,
                settings=settings,
                max_length=int(train2["max_length"]),
                loss_on_prompt=bool(train2["loss_on_prompt"]),
                hooks=self.strategy,
                packing=bool(train2.get("packing", False)),
                attn_implementation=train2.get("attn_implementation"),
                phase="phase2",
                checkpoint_dir=self.run_dir.path / layout.CHECKPOINTS / "phase2",
                log_fn=self.tracker.log,
            )
            train_figures = {keys.train("phase2", k): v for k, v in asdict(stats2).items() if v is not None}
            train_figures[keys.train("phase2", "examples_truncated")] = tok2.truncated
            train_figures[keys.train("phase2", "examples_dropped")] = tok2.dropped
            train_figures[keys.train("phase2", "padding_fraction")] = tok2.padding_fraction  # padded micro-batches
            train_figures[keys.train("phase2", "padding_fraction_packed")] = tok2.padding_fraction_packed
        if not distributed.is_main():
            # Rank 0 finalizes and saves; this rank evaluates the saved weights, if rank 0 says they were saved.
            self._phase2_saved = bool(distributed.share(None))
            return
        try:
            model = self.strategy.finalize(model, ctx)
            if saved != self.run_dir.checkpoint:
                self._save(model, tokenizer, rescued, train_figures)  # the figures travel with the weights
        except BaseException:
            distributed.share(False)  # the other ranks skip the evaluation and meet this one at the cell's end
            raise
        distributed.share(True)
        self.model2, self.tokenizer2 = model, tokenizer
        self.metrics.update(train_figures)
        if self.p1_stats:
            self.metrics.update({keys.train("phase1", k): v for k, v in self.p1_stats.items() if v is not None})
        self.metrics.update({keys.strategy(k): v for k, v in self.strategy.report().items()})
        for name, (columns, rows) in self.strategy.tables().items():
            self.tracker.log_table(f"strategy/{name}", columns, rows)
        if self.cfg.similarity.layer_changes and self.base is not None:
            record_layer_changes(
                self.base, self.p1, self.run_dir.checkpoint, self.run_dir.path / layout.LAYER_CHANGES, self.tracker
            )

    def evaluate(self) -> None:
        """The Phase-2 model, in memory on rank 0; the other ranks load the weights it saved (the same weights, cast
        to the suite's precision as rank 0's are) and score their share of the lm-eval requests."""
        self.step = "phase2 evaluation"
        if distributed.is_main():
            model, tokenizer = self.model2, self.tokenizer2
        elif self._phase2_saved:
            from cft.models import load_model

            model, tokenizer = load_model(str(self.run_dir.checkpoint), dtype=self._eval_dtype(), what="saved Phase-2 model")
        else:
            return
        scores2 = evaluate(
            model.to(device()),
            tokenizer,
            self.eval_tasks,
            limit=self.cfg.eval.get("limit"),
            out_dir=self.run_dir.path / layout.EVAL_SAMPLES / "phase2",
            sharded=True,
        )
        if not distributed.is_main():
            return
        self.metrics.update(keys.phased("phase2", scores2))
        self.metrics.update({keys.evaluation("phase2", k): v for k, v in getattr(self.eval_tasks, "timing", {}).items()})
        for name in keys.HEADLINE_AVERAGES:
            if name in self.scores1 and name in scores2:
                self.metrics[keys.delta(name)] = scores2[name] - self.scores1[name]
        # The paired bootstrap interval of each change, over the items both phases scored (eval/<phase>/items.json).
        for name, found in phase_intervals(self.metrics, self.run_dir.path).items():
            if name in keys.HEADLINE_AVERAGES:
                low, high = keys.interval(keys.delta(name))
                self.metrics[low], self.metrics[high] = found.low, found.high

    def record(self) -> None:
        """metrics.json, the W&B summary and tables, then DONE (last)."""
        self.step = "record"
        self.run_dir.write_json(layout.METRICS, self.metrics)
        self.tracker.summary(self.metrics)
        self.tracker.log_scores_table(self.metrics)
        self.run_dir.mark_done()

    def cleanup(self) -> None:
        if self.tracker is not None:
            try:
                self.tracker.finish()
            except Exception as exc:  # W&B's files on a full or read-only disk: the run's own message comes first
                log.warning("W&B could not finish its files: %s", exc)
            self.tracker = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def fail(self, exc: BaseException) -> None:
        """Leave FAILED in the run folder (its step and message; no DONE), so the sweep and analyze.py say why."""
        from cft.training.loop import Interrupted

        if isinstance(exc, (Interrupted, KeyboardInterrupt)) or not distributed.is_main() or not self.run_dir.path.is_dir():
            return  # stopped, not failed: the same command resumes
        if self._lock is None and self.step == "setup" and isinstance(exc, CftError) and "is running this cell" in str(exc):
            return  # another process holds the cell: its folder is not ours to mark
        record = {"phase": self.step, "message": str(exc) or type(exc).__name__, "error": type(exc).__name__}
        for place in [self.run_dir.path] + ([self._rescued] if self._rescued else []):
            try:  # the run folder's FAILED, or (a full or read-only run folder) the rescue folder's
                layout.write_failure(place, **record)
                return
            except Exception as write_error:
                log.warning("could not write %s: %s", place / layout.FAILED, write_error)

    def _memory_error(self, exc: BaseException) -> CftError | None:
        """A GPU out of memory as one line naming the keys that lower memory (torch.cuda.OutOfMemoryError is a
        RuntimeError: without this a sweep would stop at it; with it the cell is FAILED and the next one runs)."""
        import torch

        if not isinstance(exc, torch.cuda.OutOfMemoryError):
            return None
        import gc

        gc.collect()
        torch.cuda.empty_cache()  # what this cell held, for the next cell of the sweep
        phase = self.step if self.step in ("phase1", "mpd", "phase2") else "phase2"
        micro = OmegaConf.select(self.cfg, f"train.{phase}.micro_batch_size") or OmegaConf.select(
            self.cfg, "train.micro_batch_size"
        )
        error = CftError(
            f"{self.step}: CUDA out of memory ({' '.join(str(exc).split())[:160]}). To use less memory: lower "
            f"train.micro_batch_size (now {micro}; the global batch stays, by accumulation), set "
            "train.gradient_checkpointing=true, or shard the model with ZeRO (train=deepspeed_zero3, i.e. "
            "train.deepspeed.zero_optimization.stage=3; train=deepspeed_zero3_offload also offloads to the CPU)"
        )
        error.exit_code = 1
        return error

    def _disk_error(self, exc: BaseException) -> DiskError | None:
        """A disk fault anywhere in the run (whatever type its writer raised) as one line naming what was kept."""
        if isinstance(exc, CftError) or disk.reason(exc) is None:
            return None
        return DiskError(
            f"{self.step}: a write failed: {disk.reason(exc)} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}). "
            f"Kept: {self.run_dir.kept()}. Free space or fix the permissions, then run the same command again: "
            "it resumes this cell."
        )

    # ------------------------------------------------------------ helpers

    def _preflight_verdict(self) -> None:
        """A cell the sweep's preflight found unable to run stops here, with its reason, before any work."""
        from cft.config import preflight

        failed = preflight.failed_cells()
        if not failed:
            return
        try:
            cell = str(
                self.run_dir.path.resolve().relative_to(layout.sweep_dir(self.cfg.paths.output_root, self.cfg.sweep_id).resolve())
            )
        except ValueError:
            return
        if cell in failed:
            raise ConfigError(failed[cell])  # the line the sweep printed before any cell ran

    def _train(self, phase: str) -> dict[str, Any]:
        """One phase's train settings, with a DeepSpeed `stage: auto` made 2 where the model fits on each GPU and
        3 above (cft.training.memory: the same estimate as the launch check)."""
        from cft.training import memory

        train = phase_train_config(self.cfg.train, phase)
        zero = (train.get("deepspeed") or {}).get("zero_optimization") or {}
        if str(zero.get("stage")) == "auto":
            shape = memory.Shape.of(self.shape)
            stage = memory.stage_that_fits(
                shape,
                world=distributed.world_size(),
                capacity_gb=memory.device_memory_gb(),
                trainable=self.strategy.trainable_share(shape) if phase == "phase2" else 1.0,
                micro_batch=int(train["micro_batch_size"]),
                seq_len=int(train["max_length"]),
                gradient_checkpointing=bool(train.get("gradient_checkpointing", False)),
            )
            train["deepspeed"] = memory.with_stage(train["deepspeed"], stage)
            log.info("%s: DeepSpeed ZeRO-%d (train.deepspeed stage auto: cft.training.memory)", phase, stage)
        return train

    def _eval_dtype(self) -> str:
        """What evaluation and generation load the weights in: the suite's precision, the one every evaluation of
        the cell runs at (it casts to it too; cft.evaluation.suite.eval_precision: bf16 on GPUs that have it)."""
        return self.eval_tasks.precision or "fp32"

    def _base(self, *, required: bool) -> Checkpoint | None:
        gguf = self.model_cfg.get("gguf_file")
        if not self.model_cfg.get("base"):  # built in code (phase 0 of the demo runs here, once per cache)
            ref = base_reference(self.model_cfg, self.cache)
            self._base_spec = base_key(self.model_cfg, ref)
            return Checkpoint(ref, key=key_of(self._base_spec), what="base model", cache=self.cache)
        ref = str(self.model_cfg["base"])
        self._base_spec = ref
        base = Checkpoint(ref, key=key_of({"base": ref, "gguf_file": gguf}), what="base model", gguf_file=gguf, cache=self.cache)
        try:
            base.config()
        except CftError:
            if required:
                raise
            log.warning(
                "The base model %s cannot be read (%s); this cell does not need it: layer changes are not recorded",
                ref,
                "offline?",
            )
            return None
        return base

    def _record_data(self) -> None:
        m = self.metrics
        for phase, data in (("phase1", self.data1), ("phase2", self.data2), ("counterpart", self.counterpart)):
            if data is None:
                continue
            m.update({keys.data(phase, "n", lang): n for lang, n in data.sizes.items()})
            m[keys.data(phase, "skipped")] = data.skipped
            m[keys.data(phase, "n")] = len(data)
            m.update({keys.data(phase, f"skipped_{reason}"): n for reason, n in data.skipped_by.items()})

    def _trained_before(self, rescued: list[Path]) -> Path | None:
        """The Phase-2 model of an earlier attempt at this cell: rescued when its run folder refused it, or saved
        in the run folder by an attempt that failed after saving (evaluation, metrics.json); None: train it."""
        for place in rescued:
            if (place / layout.DONE).is_file():
                log.warning("Phase 2 was trained before but not saved: loading it from %s instead of training again", place)
                return place / "model"
        if (self.run_dir.checkpoint / "config.json").is_file():  # renamed into place whole (_save)
            log.warning(
                "Phase 2 was trained and saved by an earlier attempt (%s): loading it instead of training again",
                self.run_dir.checkpoint,
            )
            return self.run_dir.checkpoint
        return None

    @staticmethod
    def _saved_figures(saved: Path) -> dict[str, Any]:
        """The train/phase2/* figures saved beside a model trained by an earlier attempt ({} when absent)."""
        for f in (saved / layout.TRAIN_METRICS, saved.parent / layout.TRAIN_METRICS):
            try:
                return json.loads(f.read_text())
            except (OSError, ValueError):
                continue
        log.warning("the training figures of the saved Phase-2 model %s are missing: metrics.json lacks them", saved)
        return {}

    def _save(self, model, tokenizer, rescued: list[Path], figures: Mapping[str, Any]) -> None:
        """The final model (and its train/phase2/* figures) into the run folder; when the disk refuses it
        (full, read-only: OSError, SafetensorError, torch's RuntimeError), the weights and figures are kept
        in the first rescue place that takes them and the message names it: the same command then saves
        them without training again."""
        target = self.run_dir.checkpoint
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / layout.TRAIN_METRICS).write_text(json.dumps(dict(figures), indent=2, sort_keys=True))
            shutil.rmtree(target, ignore_errors=True)
            tmp.replace(target)
        except Exception as exc:
            cause = disk.reason(exc)
            if cause is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            kept, refused = self._rescue(model, tokenizer, figures, rescued)
            self._rescued = kept
            raise DiskError(
                f"could not write the final model to {target}: {cause}. "
                + (
                    f"The trained weights and train/phase2/* figures are kept in {kept}"
                    + (f" ({'; '.join(refused)})" if refused else "")
                    + "; free space or fix the permissions and run the same command again: it saves them without "
                    "training again."
                    if kept
                    else f"Keeping the weights elsewhere failed too ({'; '.join(refused)}): nothing of Phase 2 could be kept. "
                    "Set paths.rescue_dir to a folder with space."
                )
            ) from None
        shutil.rmtree(self.run_dir.path / layout.CHECKPOINTS, ignore_errors=True)
        for place in rescued:
            shutil.rmtree(place, ignore_errors=True)

    @staticmethod
    def _rescue(model, tokenizer, figures: Mapping[str, Any], places: list[Path]) -> tuple[Path | None, list[str]]:
        """(the place that took the weights and figures, or None; why each earlier place did not): disk.rescue."""

        def write(place: Path) -> None:
            model.save_pretrained(place / "model")
            tokenizer.save_pretrained(place / "model")
            (place / layout.TRAIN_METRICS).write_text(json.dumps(dict(figures), indent=2, sort_keys=True))
            (place / layout.DONE).write_text("")  # last: what _trained_before looks for

        return disk.rescue(write, disk.model_bytes(model), places)


def train_cell(cfg: DictConfig, *, run_dir: str | Path, choices: Mapping[str, str]) -> dict[str, Any]:
    """Run one cell (train.py's task function)."""
    return TrainRecipe(cfg, run_dir=run_dir, choices=choices).run()


@functools.cache  # once per process: the cells of a sweep share it
def freeze_imports() -> None:
    """Once per process (train.py calls it after the config checks, so a bad value still stops before torch
    is imported): import what every cell uses beside this recipe (transformers' model code, accelerate) and take
    the objects the imports made out of the cyclic garbage collector's sight (gc.freeze): they live as long as the
    process, yet every full collection walked them again, and accelerate's free_memory and cft's model release
    collect after each phase (0.5 s each on 2 CPU cores, 0.1 s once frozen). Objects made later, models among
    them, are collected as before. It lives in an importable module, not in train.py: submitit pickles the
    task function, and a cached function of __main__ cannot be found again in submitit's worker."""
    import gc

    import accelerate  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    gc.collect()
    gc.freeze()
