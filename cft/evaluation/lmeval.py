"""`LMEvalTask`: any benchmark of `cft/evaluation/benchmarks/` run through lm-evaluation-harness,
in-process on the already-loaded model. It knows no benchmark by name: the benchmark file says what
to run (`cft.evaluation.benchmark`), `cft.evaluation.taskfiles` writes the lm-eval task YAMLs,
`cft.evaluation.harness` runs lm-eval, and this module turns its results into `TaskScores`.

With `data_dir` set, every benchmark reads local files (the benchmark file's patterns) through
lm-eval's json/csv/parquet loaders; without it, the hub dataset or lm-eval's own task.

Outputs in `out_dir`: `samples/<lm-eval task>.jsonl` (lm-eval's per-document records),
`lm_eval_results.json` (its aggregated results and task configs) and `lm_eval_tasks/` (the task
YAMLs, to repeat the run with lm-eval's CLI). Bad input (an unknown benchmark, metric, language or
subject, a missing local file, vllm not installed) raises a `CftError` when the task is constructed,
before any model work; a hub dataset that cannot be fetched raises one when the run loads it, also
before any model work.

`limit` counts what lm-eval's limit counts, examples per lm-eval task: per language (XQuAD, MLQA,
XL-Sum, Global-MMLU-Lite), per subject (MMLU, whose group score is then over limit x subjects
questions), per benchmark otherwise (IFEval, HellaSwag).

Speed: batched (`batch_size`, "auto" = lm-eval's search on GPU, for generation at the longest request's
length: cft.evaluation.harness). With several ranks, `run(..., sharded=True)` on every rank scores each
rank's share of the documents, with the results of one rank (rank 0 gets them). `backend=vllm` serves the model
with vLLM through lm-eval's VLLM model: the model (not a PEFT wrapper) is saved to a scratch folder
under out_dir, removed after the run. (The vLLM path is written against lm-eval's VLLM signature
but has not been run on this project's CI, which has no GPU.)
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool

from cft.errors import ConfigError, DataError
from cft.evaluation import harness
from cft.evaluation.benchmark import load_benchmark, resolve_local_files
from cft.evaluation.metrics import mean
from cft.evaluation.scores import TaskScores
from cft.evaluation.taskfiles import LMTask, lm_tasks, top_level, write_task_configs
from cft.evaluation.uncertainty import BOOTSTRAP_ITERS, bootstrap_stderr, propagated
from cft.run import keys

log = logging.getLogger(__name__)

BatchSize = Annotated[int, Field(ge=1)] | Annotated[str, Field(pattern=r"^auto(:[1-9][0-9]*)?$")]


class LMEvalTask:
    """A benchmark of cft/evaluation/benchmarks/ as an evaluation task (see the module docstring)."""

    def __init__(
        self,
        benchmark: Annotated[
            str, Field(description="a benchmark of cft/evaluation/benchmarks/ (its folder name), or a folder path")
        ],
        ability: Annotated[
            Literal["ta", "la"] | None, Field(description="ta (task ability) or la (language ability); null = the benchmark's")
        ] = None,
        name: Annotated[str | None, Field(description="the task's name in metric keys; null = the benchmark's")] = None,
        data_dir: Annotated[
            str | Path | None, Field(description="folder of local copies in the layout of the shared data folder; null = the hub")
        ] = None,
        num_fewshot: Annotated[
            int | None, Field(ge=0, description="shots; null = the benchmark's (0: the paper's zero-shot)")
        ] = None,
        languages: Annotated[
            list[str] | None, Field(description="languages of a multilingual benchmark; null = all it has")
        ] = None,
        subjects: Annotated[
            list[str] | None, Field(description="MMLU subjects (e.g. [anatomy, virology]); null = all 57")
        ] = None,
        limit: Annotated[
            int | None, Field(ge=1, description="examples per language / MMLU subject / benchmark; null = all")
        ] = None,
        batch_size: Annotated[
            BatchSize, Field(description="examples per batch, or auto / auto:N (lm-eval's search; 16 on CPU)")
        ] = 16,
        apply_chat_template: Annotated[
            StrictBool | Literal["auto", "alpaca"],
            Field(
                description="auto: the tokenizer's chat template, else the Alpaca prompt (as in training); alpaca; true; false"
            ),
        ] = "auto",
        backend: Annotated[
            Literal["hf", "vllm"], Field(description="hf (the model in memory) or vllm (a saved copy, when vllm is installed)")
        ] = "hf",
        metric: Annotated[
            str | None, Field(description="headline metric (our name, e.g. f1, acc_norm); null = the benchmark's")
        ] = None,
        gen_kwargs: Annotated[
            dict[str, Any] | None,
            Field(description="overrides of a generative benchmark's generation settings (e.g. max_gen_toks)"),
        ] = None,
        max_length: Annotated[int | None, Field(ge=2, description="context length given to lm-eval; null = the model's")] = None,
        seed: Annotated[int, Field(ge=0, le=2**32 - 1, description="lm-eval's random seeds (few-shot sampling included)")] = 1234,
        vllm_kwargs: Annotated[
            dict[str, Any] | None, Field(description="further arguments of lm-eval's VLLM model (e.g. gpu_memory_utilization)")
        ] = None,
    ):
        self.bench = load_benchmark(benchmark)
        spec = self.bench.spec
        self.name = name or self.bench.name
        where = f"eval task {self.name}"
        self.ability = ability or spec.ability
        if self.ability not in ("ta", "la"):
            raise ConfigError(f"{where}: ability must be 'ta' or 'la', not {self.ability!r}")
        self.metric = metric or spec.headline
        # The headline's direction (FLORES bits per byte: lower is better); another metric is taken as higher-better.
        self.higher_is_better = spec.higher_is_better if self.metric == spec.headline else True
        if self.metric not in spec.metrics:
            raise ConfigError(f"{where}: metric {self.metric!r} is not one of {', '.join(spec.metrics)}")
        self.units = self._select_units(languages, subjects, where)
        if num_fewshot is not None and (isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0):
            raise ConfigError(f"{where}: num_fewshot must be a non-negative integer, not {num_fewshot!r}")
        self.num_fewshot = spec.num_fewshot if num_fewshot is None else num_fewshot
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"{where}: limit must be a positive integer or null, not {limit!r}")
        self.limit = limit
        if not (
            (isinstance(batch_size, str) and batch_size.startswith("auto")) or (isinstance(batch_size, int) and batch_size > 0)
        ):
            raise ConfigError(f"{where}: batch_size must be a positive integer, 'auto' or 'auto:N', not {batch_size!r}")
        self.batch_size = batch_size
        if apply_chat_template not in ("auto", "alpaca", True, False):
            raise ConfigError(f"{where}: apply_chat_template must be auto, alpaca, true or false, not {apply_chat_template!r}")
        self.apply_chat_template = apply_chat_template
        if backend not in ("hf", "vllm"):
            raise ConfigError(f"{where}: backend must be hf or vllm, not {backend!r}")
        if backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                f"{where}: backend=vllm needs the vllm package, which is not installed (pip install vllm on a GPU machine), or use backend=hf"
            )
        self.backend = backend
        self.gen_kwargs = dict(gen_kwargs or {})
        if self.gen_kwargs and not self.bench.generative:
            raise ConfigError(
                f"{where}: gen_kwargs apply to generative benchmarks; {self.bench.name} is scored by log-likelihood"
            )
        self.max_length, self.seed = max_length, seed
        self.vllm_kwargs = dict(vllm_kwargs or {})
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        self.local = None
        if self.data_dir is not None:
            if not self.data_dir.is_dir():
                raise DataError(f"eval.data_dir does not exist or is not a folder: {self.data_dir}")
            self.local = resolve_local_files(
                self.bench, self.units, self.data_dir, shots=self.num_fewshot > 0, task_name=self.name
            )

    @property
    def shards(self) -> bool:
        """Whether `run(sharded=True)` splits the documents over the ranks: with the in-memory model (hf, not vLLM),
        and a `limit` (when set) of at least one document per rank: lm-eval fails on a rank with no document of a
        task. (A benchmark with fewer documents than ranks and no limit would fail so too; real ones have hundreds.)"""
        from cft.training import distributed

        return self.backend == "hf" and (self.limit is None or self.limit >= distributed.world_size())

    def _select_units(self, languages, subjects, where: str) -> list[str | None]:
        """The languages or subjects to run (all by default); [None] for a benchmark without units."""
        kind, available = self.bench.unit_kind, self.bench.units
        for option, value in (("languages", languages), ("subjects", subjects)):
            if value is None:
                continue
            if option != kind:
                has = f"has {kind}" if kind else "has neither languages nor subjects"
                raise ConfigError(f"{where}: `{option}` does not apply ({self.bench.name} {has}); remove it")
            if isinstance(value, str):  # languages=de on the command line
                value = [value]
            unknown = [u for u in value if u not in available]
            if unknown or not value:
                raise ConfigError(
                    f"{where}: {option} {unknown or '[]'} not available; {self.bench.name} has {', '.join(available)}"
                )
            return list(value)
        return list(available) if available else [None]

    # ------------------------------------------------------------------------------------------

    def generation(self, *, context: int, stop: str | None = None) -> dict[str, Any] | None:
        """The generation settings of this run: the benchmark's, the task's overrides, `stop` (the chat
        template's end of turn) added to the stop strings, the length clipped to the context."""
        if not self.bench.generative:
            return None
        settings = dict(self.bench.spec.generation or {})
        settings.update(self.gen_kwargs)
        until = list(settings.get("until") or [])
        if stop and stop not in until:
            until.append(stop)
        settings["until"] = until
        settings["max_gen_toks"] = harness.fit_generation(self.name, int(settings["max_gen_toks"]), context)
        return settings

    def lm_tasks(self, generation: Mapping[str, Any] | None = None) -> list[LMTask]:
        """The lm-eval tasks of this benchmark run (a group first, then its members)."""
        return lm_tasks(self.bench, self.units, local=self.local, num_fewshot=self.num_fewshot, generation=generation)

    def run(self, model, tokenizer, *, out_dir: Path, sharded: bool = False) -> list[TaskScores]:
        """Scores of this benchmark on `model`. `sharded`: every rank of the process group calls this with the same
        weights and scores its share of the documents (cft.evaluation.harness); rank 0 gets the scores, the
        other ranks an empty list."""
        import lm_eval
        from lm_eval.tasks import TaskManager

        from cft.evaluation.benchmarks import hooks

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        template = harness.chat_template(self.apply_chat_template, tokenizer, self.name)
        chat = template is not None
        hooks.ensure_punkt()  # before lm-eval imports its IFEval module, which would try a download
        harness.cache_env_info()
        hooks.PUNKT_USED.clear()
        lm_kwargs = {
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "seed": self.seed,
            "vllm_kwargs": self.vllm_kwargs,
            "sharded": sharded and self.shards,  # else every rank that calls scores it whole
        }
        with harness.Session(model, tokenizer, template=template, backend=self.backend, out_dir=out_dir, **lm_kwargs) as session:
            stop = harness.turn_end(tokenizer, template) if chat else None
            generation = self.generation(context=int(session.lm.max_length), stop=stop)
            tasks = self.lm_tasks(generation)
            tasks_dir = out_dir / "lm_eval_tasks"
            builtin_dirs = write_task_configs(tasks, tasks_dir)
            manager = TaskManager(include_path=[*map(str, builtin_dirs), str(tasks_dir)], include_defaults=False)
            top = [t.name for t in top_level(tasks)]
            unknown = [name for name in top if name not in manager.all_tasks]
            if unknown:
                raise ConfigError(f"eval task {self.name}: lm-eval does not know the task(s) {unknown}")
            try:
                results = lm_eval.simple_evaluate(
                    model=session.lm,
                    tasks=top,
                    num_fewshot=self.num_fewshot,
                    limit=self.limit,
                    task_manager=manager,
                    apply_chat_template=chat,
                    fewshot_as_multiturn=chat,
                    # lm-eval's own tasks get the benchmark's generation settings here; generated ones have them in their YAML.
                    gen_kwargs=dict(generation) if generation is not None and builtin_dirs else None,
                    log_samples=True,  # per-item scores: the paired bootstrap of differences (items.json)
                    # A mean's standard error is lm-eval's closed form; the iterations serve other aggregations.
                    bootstrap_iters=BOOTSTRAP_ITERS,
                    random_seed=self.seed,
                    numpy_random_seed=self.seed,
                    torch_random_seed=self.seed,
                    fewshot_random_seed=self.seed,
                )
            except ConnectionError as exc:
                # Raised while lm-eval loads the datasets, before any model work.
                raise DataError(
                    f"eval task {self.name}: {exc}. Offline, put local copies in the layout of the shared data folder "
                    f"and set eval.data_dir=<folder> (the file names are in {self.bench.folder / 'benchmark.yaml'})"
                ) from exc
        if results is None:  # a rank other than 0 of a data-parallel run: rank 0 gathered its share
            return []
        if session.lm.world_size > 1:
            harness.without_padding(results.get("samples") or {}, results.get("configs") or {})
        harness.save(results, out_dir)
        scores = self.scores(results["results"], tasks, results.get("samples"))
        if hooks.PUNKT_USED:  # the benchmark split sentences with Punkt (IFEval): say which model
            for s in scores:
                s.reports[keys.punkt()] = sorted(hooks.PUNKT_USED)[-1]  # "fallback" over "nltk" if both
        return scores

    # ------------------------------------------------------------------------------------------

    def scores(
        self,
        lm_results: Mapping[str, Mapping[str, Any]],
        tasks: Sequence[LMTask],
        samples: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> list[TaskScores]:
        """Our TaskScores from lm-eval's `results` dict (keys "<metric>,<filter>"): one for the
        benchmark's ability and, for a multilingual benchmark run in English, one for `en`. Each
        headline score carries lm-eval's standard error ("<metric>_stderr,<filter>"; a bootstrap over
        the items where lm-eval gives none) and, from lm-eval's `samples`, its per-item scores."""
        spec = self.bench.spec
        theirs_headline = spec.metrics[self.metric]
        samples = samples or {}

        def values(task_name: str) -> dict[str, float]:
            row = lm_results.get(task_name)
            if row is None:
                raise RuntimeError(f"lm-eval returned no results for {task_name}")
            out = {}
            for ours, theirs in spec.metrics.items():
                key = f"{theirs},none"
                if key not in row:
                    raise RuntimeError(f"lm-eval's results for {task_name} lack {key}: {sorted(row)}")
                out[ours] = float(row[key])
            return out

        def item_scores(names: Sequence[str], prefix: bool) -> dict[str, float]:
            out = {}
            for name in names:
                for record in samples.get(name, ()):
                    value = record.get(theirs_headline)
                    if isinstance(value, (list, tuple)):  # per-instruction lists (IFEval's inst level): their mean
                        value = sum(map(float, value)) / len(value) if value else None
                    if value is not None:
                        out[f"{name}/{record['doc_id']}" if prefix else str(record["doc_id"])] = float(value)
            return out

        def stderr(task_name: str, per_item: Mapping[str, float]) -> float | None:
            value = (lm_results.get(task_name) or {}).get(f"{theirs_headline}_stderr,none")
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value)
            return bootstrap_stderr(list(per_item.values()), seed=self.seed) if per_item else None

        def others(metrics: Mapping[str, float]) -> dict[str, float]:
            return {k: v for k, v in metrics.items() if k != self.metric}

        if self.bench.unit_kind != "languages":  # one score for the whole benchmark (MMLU: its group)
            [top] = top_level(tasks)
            metrics = values(top.name)
            # A group's members, or lm-eval's own task (whose subtasks only its samples name).
            members = list(top.group_of) or ([top.name] if top.name in samples or not samples else list(samples))
            per_item = item_scores(members, prefix=len(members) > 1)
            return [
                TaskScores(
                    self.name,
                    self.ability,
                    metrics[self.metric],
                    metrics=others(metrics),
                    stderr=stderr(top.name, per_item),
                    items={"": per_item} if per_item else {},
                    higher_is_better=self.higher_is_better,
                )
            ]
        per_language = {t.unit: values(t.name) for t in tasks if t.unit is not None}
        names = {t.unit: t.name for t in tasks if t.unit is not None}
        per_items = {lang: item_scores([names[lang]], prefix=False) for lang in per_language}
        errors = {lang: stderr(names[lang], per_items[lang]) for lang in per_language}
        results = []
        counted = {lang: m for lang, m in per_language.items() if lang != spec.english}
        if counted:
            results.append(
                TaskScores(
                    self.name,
                    self.ability,
                    mean(m[self.metric] for m in counted.values()),
                    per_language={lang: m[self.metric] for lang, m in counted.items()},
                    metrics={k: mean(m[k] for m in counted.values()) for k in spec.metrics if k != self.metric},
                    language_metrics={lang: others(m) for lang, m in counted.items()},
                    stderr=propagated([errors[lang] for lang in counted]),
                    language_stderr={lang: errors[lang] for lang in counted if errors[lang] is not None},
                    items={lang: per_items[lang] for lang in counted if per_items[lang]},
                    higher_is_better=self.higher_is_better,
                )
            )
        if spec.english in per_language:
            english = per_language[spec.english]
            results.append(
                TaskScores(
                    self.name,
                    "en",
                    english[self.metric],
                    metrics=others(english),
                    stderr=errors[spec.english],
                    items={"": per_items[spec.english]} if per_items[spec.english] else {},
                    higher_is_better=self.higher_is_better,
                )
            )
        return results
