"""Benchmarks through lm-evaluation-harness, run in-process on the already-loaded model.

`LMEvalTask` is the `EvalTask` of every lm-eval benchmark of the paper:

    task              ability  lm-eval task (hub)            local files under eval.data_dir
    ifeval            ta       ifeval (built-in)             ifeval/input_data.jsonl
    mmlu              ta       mmlu (built-in group)         mmlu/test/<subject>_test.csv (+ mmlu/dev/ for shots)
    hellaswag         ta       hellaswag (built-in)          hellaswag/hellaswag_val.jsonl or hellaswag_val_from_klosax.jsonl
    xquad             la       cft_xquad_<lang>              xquad/xquad.<lang>.json
    mlqa              la       mlqa_<lang>_<lang> (built-in) mlqa/test/test-context-<lang>-question-<lang>.json
    xlsum             la       cft_xlsum_<lang>              xlsum/<language>_test.jsonl (XL-Sum's file names)
    global_mmlu_lite  la       cft_global_mmlu_lite_<lang>   global_mmlu_lite/<lang>/test.{jsonl,csv,parquet} (+ dev.*)

With `data_dir` set, every task reads local files through lm-eval's json/csv/parquet loaders.
Only the task folders a run uses are indexed (lm-eval's full index of ~14,700 tasks takes 10 s). The project's task YAMLs live in
`cft/evaluation/tasks/`; a run writes the concrete per-language task files (which `include:` them
and name the dataset) to `<out_dir>/lm_eval_tasks/`, so the same evaluation can be repeated with
lm-eval's own CLI: `lm-eval run --include_path <out_dir>/lm_eval_tasks --tasks cft_xquad_de ...`.
lm-eval's built-in xquad cannot be used: it imports `transformers.data.metrics.squad_metrics`,
which transformers 5 removed, so XQuAD always runs on the project's task (same prompts).

Prompts are formatted as in training: with the tokenizer's chat template (lm-eval's
apply_chat_template, few-shot examples as turns) or, for a tokenizer without one, with the Alpaca
prompt that cft.data.format trains such models with; `apply_chat_template=false` gives plain prompts.

Outputs in `out_dir`: `samples/<lm-eval task>.jsonl` (lm-eval's per-document records),
`lm_eval_results.json` (its aggregated results and task configs) and the generated task YAMLs.
Bad input (an unknown task, metric or language, a missing local file, vllm not installed) raises a
`CftError` when the task is constructed, before any model work; a hub dataset that cannot be fetched
raises one when the run loads it, also before any model work.

Speed: batched (`batch_size`, "auto" = lm-eval's search on GPU). `backend=vllm` serves the model
with vLLM through lm-eval's VLLM model: the model (not a PEFT wrapper) is saved to a scratch folder
under out_dir, removed after the run. (The vLLM path is written against lm-eval's VLLM signature
but has not been run on this project's CI, which has no GPU.)
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cft.data.format import ALPACA_PROMPT
from cft.errors import ConfigError, DataError
from cft.evaluation import TaskScores
from cft.evaluation.metrics import mean

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "tasks"
UTILS = "cft.evaluation.tasks.utils"

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics high_school_mathematics "
    "high_school_microeconomics high_school_physics high_school_psychology high_school_statistics "
    "high_school_us_history high_school_world_history human_aging human_sexuality international_law jurisprudence "
    "logical_fallacies machine_learning management marketing medical_genetics miscellaneous moral_disputes "
    "moral_scenarios nutrition philosophy prehistory professional_accounting professional_law "
    "professional_medicine professional_psychology public_relations security_studies sociology us_foreign_policy "
    "virology world_religions"
).split()

# lm-eval's xquad prompts, per language.
XQUAD_PROMPTS = {
    "ar": "سيا: {{context}}\n\nسؤال: {{question}}\n\nإجابة:",
    "de": "Kontext: {{context}}\n\nFrage: {{question}}\n\nAntwort:",
    "el": "Συμφραζόμενα: {{context}}\n\nΕρώτηση: {{question}}\n\nΑπάντηση:",
    "en": "Context: {{context}}\n\nQuestion: {{question}}\n\nAnswer:",
    "es": "Contexto: {{context}}\n\nPregunta: {{question}}\n\nRespuesta:",
    "hi": "प्रसंग: {{context}}\n\nसवाल: {{question}}\n\nउत्तर:",
    "ro": "Context: {{context}}\n\nÎntrebare: {{question}}\n\nRăspuns:",
    "ru": "Контекст: {{context}}\n\nВопрос: {{question}}\n\nОтвет:",
    "th": "บริบท: {{context}}\n\nคำถาม: {{question}}\n\nคำตอบ:",
    "tr": "Bağlam: {{context}}\n\nSoru: {{question}}\n\nCevap:",
    "vi": "Bối cảnh: {{context}}\n\nCâu hỏi: {{question}}\n\nTrả lời:",
    "zh": "语境: {{context}}\n\n问题: {{question}}\n\n回答:",
}
# lm-eval's mlqa prompt (English for every language).
MLQA_PROMPT = "Context: {{context}}\n\nQuestion: {{question}}\n\nAnswer:"
MLQA_LANGUAGES = ("ar", "de", "en", "es", "hi", "vi", "zh")

# XL-Sum's dataset names (and file-name prefixes) of the paper's languages.
XLSUM_LANGUAGES = {
    "ar": "arabic",
    "zh": "chinese_simplified",
    "en": "english",
    "fr": "french",
    "hi": "hindi",
    "ja": "japanese",
    "es": "spanish",
}
LANGUAGE_NAMES = {
    "ar": "Arabic",
    "bn": "Bengali",
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "fr": "French",
    "hi": "Hindi",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "pt": "Portuguese",
    "ru": "Russian",
    "sw": "Swahili",
    "th": "Thai",
    "vi": "Vietnamese",
    "yo": "Yoruba",
    "zh": "Chinese",
}
XLSUM_PROMPT = "Summarize the following {name} article in one sentence, in {name}.\n\nArticle: {{{{text}}}}\n\nSummary:"

# Global-MMLU-Lite has 15 languages; of the paper's 11 Phase-2 languages it lacks ru, th and vi.
GLOBAL_MMLU_LITE_LANGUAGES = ("ar", "bn", "de", "en", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "sw", "yo", "zh")
LOCAL_TABLE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

BACKENDS = ("hf", "vllm")

# cft.data.format's Alpaca prompt (used in training for tokenizers without a chat template) as a
# chat template, so that lm-eval's multi-turn few-shot prompts take the same form.
_ALPACA_BEFORE, _ALPACA_AFTER = ALPACA_PROMPT.split("{instruction}")
ALPACA_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}"
    + _ALPACA_BEFORE
    + "{{ m['content'] }}"
    + _ALPACA_AFTER
    + "{% else %}{{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class Benchmark:
    ability: str
    metrics: Mapping[str, str]  # our metric name -> lm-eval metric name
    headline: str  # default headline metric (our name)
    languages: tuple[str, ...] = ()  # non-empty: one lm-eval task per language


BENCHMARKS: dict[str, Benchmark] = {
    "ifeval": Benchmark(
        "ta",
        {
            "prompt_strict": "prompt_level_strict_acc",
            "inst_strict": "inst_level_strict_acc",
            "prompt_loose": "prompt_level_loose_acc",
            "inst_loose": "inst_level_loose_acc",
        },
        "prompt_strict",
    ),
    "mmlu": Benchmark("ta", {"acc": "acc"}, "acc"),
    "hellaswag": Benchmark("ta", {"acc": "acc", "acc_norm": "acc_norm"}, "acc_norm"),
    "xquad": Benchmark("la", {"f1": "f1", "em": "exact_match"}, "f1", tuple(XQUAD_PROMPTS)),
    "mlqa": Benchmark("la", {"f1": "f1", "em": "exact_match"}, "f1", MLQA_LANGUAGES),
    "xlsum": Benchmark("la", {"rougeL": "rougeL"}, "rougeL", tuple(XLSUM_LANGUAGES)),
    "global_mmlu_lite": Benchmark("la", {"acc": "acc"}, "acc", GLOBAL_MMLU_LITE_LANGUAGES),
}


@dataclass
class _LMTask:
    """One lm-eval task (or group) of a benchmark run."""

    name: str  # lm-eval task or group name
    lang: str | None = None
    config: dict[str, Any] | None = None  # YAML keys of a generated task
    functions: Mapping[str, str] | None = None  # YAML key -> dotted function (written as !function)
    group_of: Sequence[str] = ()  # for a generated group: its member tasks
    builtin: str | None = None  # lm-eval's own task: its folder under lm_eval/tasks


def _yaml_value(value) -> str:
    # JSON is valid YAML (flow style) and keeps every string exactly, newlines and scripts included.
    return json.dumps(value, ensure_ascii=False)


def _write_task_yaml(path: Path, task: _LMTask, template: str | None) -> None:
    lines = []
    if template:
        lines.append(f"include: {_yaml_value(str(TEMPLATES / template))}")
    if task.group_of:
        lines.append(f"group: {_yaml_value(task.name)}")
        lines.append(f"task: {_yaml_value(list(task.group_of))}")
    else:
        lines.append(f"task: {_yaml_value(task.name)}")
    for key, value in (task.config or {}).items():
        lines.append(f"{key}: {_yaml_value(value)}")
    for key, function in (task.functions or {}).items():
        lines.append(f"{key}: !function {function}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _local_dataset(files: Mapping[str, Path]) -> dict[str, Any]:
    suffixes = {LOCAL_TABLE_FORMATS[Path(f).suffix] for f in files.values()}
    if len(suffixes) != 1:
        raise DataError(f"local files of one task must share a format: {sorted(map(str, files.values()))}")
    loader = suffixes.pop()
    kwargs: dict[str, Any] = {"data_files": {split: str(path) for split, path in files.items()}}
    return {"dataset_path": loader, "dataset_kwargs": kwargs}


def _first_existing(candidates: Sequence[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


class LMEvalTask:
    """An lm-eval benchmark as an `EvalTask` (see the module docstring for the tasks and files).

    Args:
        task: benchmark name (a key of `BENCHMARKS`).
        ability: "ta" or "la" (default: the benchmark's).
        name: metric name in the flat keys (default: `task`).
        data_dir: folder with local copies in the layout of the shared data folder; None = hub.
        num_fewshot: shots (None: the task's default, 0 for all but built-in tasks that set one).
        languages: languages of a multilingual benchmark (default: all it has).
        subjects: MMLU subjects (default: all 57).
        batch_size: int, or "auto" / "auto:N" (lm-eval's search on GPU; 16 on CPU, where it is meaningless).
        apply_chat_template: "auto" (the tokenizer's chat template, else the Alpaca prompt, as in
            training), "alpaca", True (the tokenizer's) or False (plain prompts, as for base models).
        backend: "hf" (the in-memory model) or "vllm" (the model saved to out_dir and served by vLLM).
        metric: headline metric (our name, e.g. "prompt_strict", "acc_norm", "f1").
        gen_kwargs: overrides of the generation settings of generative tasks (e.g. max_gen_toks).
        max_length: context length given to lm-eval (None: from the model config).
        seed: lm-eval's random seeds (few-shot sampling included).
        vllm_kwargs: further arguments of lm-eval's VLLM model (e.g. gpu_memory_utilization: 0.5, since
            the model being evaluated stays in GPU memory), for backend=vllm.
    """

    def __init__(
        self,
        task: str,
        ability: str | None = None,
        name: str | None = None,
        data_dir: str | Path | None = None,
        num_fewshot: int | None = None,
        languages: Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        batch_size: int | str = 16,
        apply_chat_template: bool | str = "auto",
        backend: str = "hf",
        metric: str | None = None,
        gen_kwargs: Mapping[str, Any] | None = None,
        max_length: int | None = None,
        seed: int = 1234,
        vllm_kwargs: Mapping[str, Any] | None = None,
    ):
        if task not in BENCHMARKS:
            raise ConfigError(f"Unknown evaluation task {task!r}: lm-eval tasks are {', '.join(BENCHMARKS)}")
        self.task = task
        self.spec = BENCHMARKS[task]
        self.ability = ability or self.spec.ability
        if self.ability not in ("ta", "la"):
            raise ConfigError(f"eval task {task}: ability must be 'ta' or 'la', not {self.ability!r}")
        self.name = name or task
        self.metric = metric or self.spec.headline
        if self.metric not in self.spec.metrics:
            raise ConfigError(f"eval task {task}: metric {self.metric!r} is not one of {', '.join(self.spec.metrics)}")
        if isinstance(languages, str):  # languages=de on the command line
            languages = [languages]
        if isinstance(subjects, str):
            subjects = [subjects]
        if self.spec.languages:
            self.languages = list(languages) if languages is not None else list(self.spec.languages)
            unknown = [lang for lang in self.languages if lang not in self.spec.languages]
            if unknown or not self.languages:
                raise ConfigError(
                    f"eval task {task}: languages {unknown or '[]'} not available; {task} has {', '.join(self.spec.languages)}"
                )
        elif languages:
            raise ConfigError(f"eval task {task} is English-only; remove its `languages` option")
        else:
            self.languages = []
        if subjects is not None and task != "mmlu":
            raise ConfigError(f"eval task {task}: `subjects` is an MMLU option")
        self.subjects = list(subjects) if subjects is not None else list(MMLU_SUBJECTS)
        bad = [s for s in self.subjects if s not in MMLU_SUBJECTS]
        if bad or not self.subjects:
            raise ConfigError(f"eval task mmlu: unknown subjects {bad or '[]'}")
        if num_fewshot is not None and (not isinstance(num_fewshot, int) or num_fewshot < 0):
            raise ConfigError(f"eval task {task}: num_fewshot must be a non-negative integer, not {num_fewshot!r}")
        self.num_fewshot = num_fewshot
        if not (
            (isinstance(batch_size, str) and batch_size.startswith("auto")) or (isinstance(batch_size, int) and batch_size > 0)
        ):
            raise ConfigError(f"eval task {task}: batch_size must be a positive integer, 'auto' or 'auto:N', not {batch_size!r}")
        self.batch_size = batch_size
        if apply_chat_template not in ("auto", "alpaca", True, False):
            raise ConfigError(f"eval task {task}: apply_chat_template must be auto, alpaca, true or false")
        self.apply_chat_template = apply_chat_template
        if backend not in BACKENDS:
            raise ConfigError(f"eval task {task}: backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                f"eval task {task}: backend=vllm needs the vllm package, which is not installed "
                "(pip install vllm on a GPU machine), or use backend=hf"
            )
        self.backend = backend
        self.vllm_kwargs = dict(vllm_kwargs or {})
        self.gen_kwargs = dict(gen_kwargs or {})
        self.max_length = max_length
        self.seed = seed
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        if self.data_dir is not None:
            if not self.data_dir.is_dir():
                raise DataError(f"eval.data_dir does not exist or is not a folder: {self.data_dir}")
            self.local_files()  # raises on a missing file

    # ------------------------------------------------------------------------------------------
    # Local files

    def local_files(self) -> dict[str | None, dict[str, Path]]:
        """{language or subject or None: {split: file}} under data_dir; DataError naming what is missing."""
        d = self.data_dir
        assert d is not None
        shots = bool(self.num_fewshot)
        found: dict[str | None, dict[str, Path]] = {}
        missing: list[str] = []

        def need(key, split, candidates: Sequence[Path], required: bool = True):
            path = _first_existing(candidates)
            if path is not None:
                found.setdefault(key, {})[split] = path
            elif required:
                missing.append(" or ".join(str(c.relative_to(d)) for c in candidates))

        if self.task == "ifeval":
            need(None, "test", [d / "ifeval" / "input_data.jsonl"])
        elif self.task == "mmlu":
            for s in self.subjects:
                need(s, "test", [d / "mmlu" / "test" / f"{s}_test.csv"])
                need(s, "dev", [d / "mmlu" / "dev" / f"{s}_dev.csv"], required=shots)
        elif self.task == "hellaswag":
            need(
                None, "validation", [d / "hellaswag" / "hellaswag_val.jsonl", d / "hellaswag" / "hellaswag_val_from_klosax.jsonl"]
            )
        elif self.task == "xquad":
            for lang in self.languages:
                need(lang, "validation", [d / "xquad" / f"xquad.{lang}.json"])
        elif self.task == "mlqa":
            for lang in self.languages:
                need(lang, "validation", [d / "mlqa" / "test" / f"test-context-{lang}-question-{lang}.json"])
                need(lang, "dev", [d / "mlqa" / "dev" / f"dev-context-{lang}-question-{lang}.json"], required=shots)
        elif self.task == "xlsum":
            for lang in self.languages:
                need(lang, "test", [d / "xlsum" / f"{XLSUM_LANGUAGES[lang]}_test.jsonl"])
        elif self.task == "global_mmlu_lite":
            for lang in self.languages:
                base = d / "global_mmlu_lite" / lang
                need(lang, "test", [base / f"test{ext}" for ext in (".jsonl", ".csv", ".parquet")])
                need(lang, "dev", [base / f"dev{ext}" for ext in (".jsonl", ".csv", ".parquet")], required=shots)
        if missing:
            raise DataError(
                f"eval task {self.task}: eval.data_dir={self.data_dir} lacks "
                + "; ".join(missing[:5])
                + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
                + f". Add the files, or leave the task out of the suite (e.g. ~eval.tasks.{self.name})"
            )
        return found

    # ------------------------------------------------------------------------------------------
    # lm-eval task configs

    def lm_tasks(self) -> list[_LMTask]:
        """The lm-eval tasks of this benchmark; generated ones carry their YAML keys."""
        local = self.local_files() if self.data_dir else None
        t = self.task
        if t == "ifeval":
            if local is None:
                return [_LMTask("ifeval", builtin="ifeval")]
            return [_LMTask("cft_ifeval", config=_local_dataset(local[None]))]
        if t == "mmlu":
            if local is None and self.subjects == list(MMLU_SUBJECTS):
                return [_LMTask("mmlu", builtin="mmlu/default")]
            members = []
            for s in self.subjects:
                config: dict[str, Any] = {
                    "description": f"The following are multiple choice questions (with answers) about {s.replace('_', ' ')}.\n\n",
                    "task_alias": s,
                }
                if local is None:
                    config.update(dataset_path="cais/mmlu", dataset_name=s, fewshot_split="dev")
                else:
                    files = local[s]
                    config.update(_local_dataset(files))
                    config["dataset_kwargs"].update(column_names=["question", "A", "B", "C", "D", "answer"], header=None)
                    if "dev" in files:
                        config["fewshot_split"] = "dev"
                members.append(_LMTask(f"cft_mmlu_{s}", config=config))
            group = _LMTask(
                "cft_mmlu",
                config={"aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 1.0}},
                group_of=[m.name for m in members],
            )
            return [group, *members]
        if t == "hellaswag":
            if local is None:
                return [_LMTask("hellaswag", builtin="hellaswag")]
            return [_LMTask("cft_hellaswag", config=_local_dataset(local[None]))]
        tasks = []
        for lang in self.languages:
            if t == "xquad":
                config = {"doc_to_text": XQUAD_PROMPTS[lang]}
                if local:
                    ds = _local_dataset(local[lang])
                    ds["dataset_kwargs"]["field"] = "data"  # SQuAD JSON: the articles are under "data"
                    config.update(ds)
                else:
                    config.update(dataset_path="google/xquad", dataset_name=f"xquad.{lang}")
                tasks.append(_LMTask(f"cft_xquad_{lang}", lang, config, {"process_results": f"{UTILS}.qa_results_{lang}"}))
            elif t == "mlqa":
                if local is None:
                    tasks.append(_LMTask(f"mlqa_{lang}_{lang}", lang, builtin="mlqa"))
                    continue
                config = {"doc_to_text": MLQA_PROMPT}
                ds = _local_dataset(local[lang])
                ds["dataset_kwargs"]["field"] = "data"
                config.update(ds)
                if "dev" in local[lang]:
                    config["fewshot_split"] = "dev"
                tasks.append(_LMTask(f"cft_mlqa_{lang}", lang, config, {"process_results": f"{UTILS}.qa_results_{lang}"}))
            elif t == "xlsum":
                config = {"doc_to_text": XLSUM_PROMPT.format(name=LANGUAGE_NAMES[lang])}
                config.update(
                    _local_dataset(local[lang])
                    if local
                    else {"dataset_path": "csebuetnlp/xlsum", "dataset_name": XLSUM_LANGUAGES[lang]}
                )
                tasks.append(_LMTask(f"cft_xlsum_{lang}", lang, config))
            elif t == "global_mmlu_lite":
                if local:
                    config = _local_dataset(local[lang])
                    if "dev" in local[lang]:
                        config["fewshot_split"] = "dev"
                else:
                    config = {"dataset_path": "CohereLabs/Global-MMLU-Lite", "dataset_name": lang, "fewshot_split": "dev"}
                tasks.append(_LMTask(f"cft_global_mmlu_lite_{lang}", lang, config))
        return tasks

    def write_task_configs(self, tasks_dir: str | Path) -> tuple[list[_LMTask], list[Path]]:
        """Write the generated task YAMLs to `tasks_dir`; returns the tasks and the folders of the
        built-in lm-eval tasks they use (indexing only those is instant; all of lm-eval's take 10 s)."""
        tasks_dir = Path(tasks_dir)
        tasks_dir.mkdir(parents=True, exist_ok=True)
        for stale in tasks_dir.glob("*.yaml"):  # from an earlier run with other settings
            stale.unlink()
        tasks = self.lm_tasks()
        template = {
            "ifeval": "ifeval.yaml",
            "mmlu": "mmlu.yaml",
            "hellaswag": "hellaswag.yaml",
            "xquad": "xquad.yaml",
            "mlqa": "xquad.yaml",
            "xlsum": "xlsum.yaml",
            "global_mmlu_lite": "global_mmlu_lite.yaml",
        }[self.task]
        for task in tasks:
            if task.builtin is None:
                _write_task_yaml(tasks_dir / f"{task.name}.yaml", task, None if task.group_of else template)
        builtin_root = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"
        return tasks, sorted({builtin_root / t.builtin for t in tasks if t.builtin})

    # ------------------------------------------------------------------------------------------
    # Running

    def _chat_template(self, tokenizer) -> str | None:
        """The chat template lm-eval formats prompts with: the tokenizer's, the Alpaca prompt, or none."""
        has_own = bool(getattr(tokenizer, "chat_template", None))
        mode = self.apply_chat_template
        if mode == "auto":
            # As in training (cft.data.format.render_prompt): the tokenizer's template, else the Alpaca prompt.
            return tokenizer.chat_template if has_own else ALPACA_CHAT_TEMPLATE
        if mode == "alpaca":
            return ALPACA_CHAT_TEMPLATE
        if mode is True and not has_own:
            raise ConfigError(
                f"eval task {self.task}: apply_chat_template=true but the tokenizer has no chat template (use auto or alpaca)"
            )
        return tokenizer.chat_template if mode is True else None

    def _batch_size(self, model):
        if isinstance(self.batch_size, str):
            device = getattr(model, "device", None)
            if device is None or getattr(device, "type", "cpu") == "cpu":
                return 16
        return self.batch_size

    def _lm(self, model, tokenizer, scratch: Path):
        if self.backend == "vllm":
            from lm_eval.models.vllm_causallms import VLLM

            if hasattr(model, "peft_config"):
                raise ConfigError("backend=vllm needs a plain model: merge the LoRA weights first (or use backend=hf)")
            # vLLM loads weights from disk only: a scratch copy, removed after the run.
            model.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)
            kwargs = {"max_model_len": self.max_length} if self.max_length else {}
            kwargs.update(self.vllm_kwargs)
            return VLLM(pretrained=str(scratch), tokenizer=str(scratch), batch_size=self.batch_size, seed=self.seed, **kwargs)
        from lm_eval.models.huggingface import HFLM

        return HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=self._batch_size(model),
            max_length=self.max_length,
            device=str(model.device),
        )

    def run(self, model, tokenizer, *, limit: int | None, out_dir: Path) -> list[TaskScores]:
        import lm_eval
        from lm_eval.tasks import TaskManager

        from cft.evaluation.tasks.utils import ensure_nltk_offline

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tasks, builtin_dirs = self.write_task_configs(out_dir / "lm_eval_tasks")
        template = self._chat_template(tokenizer)
        chat = template is not None
        ensure_nltk_offline()  # before lm-eval imports its IFEval module, which would try a download
        manager = TaskManager(include_path=[*map(str, builtin_dirs), str(out_dir / "lm_eval_tasks")], include_defaults=False)
        top = [t.name for t in tasks if not any(t.name in g.group_of for g in tasks)]
        unknown = [name for name in top if name not in manager.all_tasks]
        if unknown:
            raise ConfigError(f"eval task {self.task}: lm-eval does not know the task(s) {unknown}")
        was_training = model.training
        model.eval()
        own_template = getattr(tokenizer, "chat_template", None)
        if chat:
            tokenizer.chat_template = template  # restored below: the tokenizer is the caller's
        scratch = Path(tempfile.mkdtemp(prefix="vllm-model-", dir=out_dir)) if self.backend == "vllm" else out_dir
        try:
            results = lm_eval.simple_evaluate(
                model=self._lm(model, tokenizer, scratch),
                tasks=top,
                num_fewshot=self.num_fewshot,
                limit=limit,
                task_manager=manager,
                apply_chat_template=chat,
                fewshot_as_multiturn=chat,
                gen_kwargs=self.gen_kwargs or None,
                log_samples=True,
                bootstrap_iters=0,
                random_seed=self.seed,
                numpy_random_seed=self.seed,
                torch_random_seed=self.seed,
                fewshot_random_seed=self.seed,
            )
        except ConnectionError as exc:
            # Raised while lm-eval loads the datasets, before any model work.
            raise DataError(
                f"eval task {self.task}: {exc}. Offline, put local copies in the layout of the shared data folder "
                "and set eval.data_dir=<folder> (see cft/evaluation/lmeval.py for the file names)"
            ) from exc
        finally:
            model.train(was_training)
            tokenizer.chat_template = own_template
            if scratch != out_dir:
                shutil.rmtree(scratch, ignore_errors=True)
        self._save(results, out_dir)
        return [self.scores(results["results"], tasks)]

    def _save(self, results: dict, out_dir: Path) -> None:
        """lm-eval's samples in the format of its CLI's --log_samples files, and its results."""
        from lm_eval.utils import handle_non_serializable, sanitize_list

        samples_dir = out_dir / "samples"
        samples_dir.mkdir(exist_ok=True)
        for task_name, records in (results.get("samples") or {}).items():
            with open(samples_dir / f"{task_name}.jsonl", "w", encoding="utf-8") as f:
                for record in records:
                    record = dict(record)
                    record["arguments"] = {
                        f"gen_args_{i}": {f"arg_{j}": value for j, value in enumerate(args)}
                        for i, args in enumerate(record["arguments"])
                    }
                    record["resps"] = sanitize_list(record["resps"])
                    record["filtered_resps"] = sanitize_list(record["filtered_resps"])
                    record["target"] = str(record["target"])
                    f.write(json.dumps(record, ensure_ascii=False, default=handle_non_serializable) + "\n")
        summary = {k: v for k, v in results.items() if k != "samples"}
        (out_dir / "lm_eval_results.json").write_text(
            json.dumps(summary, indent=2, ensure_ascii=False, default=handle_non_serializable)
        )

    def scores(self, lm_results: Mapping[str, Mapping[str, Any]], tasks: Sequence[_LMTask]) -> TaskScores:
        """Our TaskScores from lm-eval's `results` dict (keys "<metric>,<filter>")."""

        def value(task_name: str, ours: str) -> float:
            row = lm_results.get(task_name)
            if row is None:
                raise RuntimeError(f"lm-eval returned no results for {task_name}")
            key = f"{self.spec.metrics[ours]},none"
            if key not in row:
                raise RuntimeError(f"lm-eval's results for {task_name} lack {key}: {sorted(row)}")
            return float(row[key])

        if not self.spec.languages:
            top = next(t for t in tasks if not any(t.name in g.group_of for g in tasks))
            metrics = {ours: value(top.name, ours) for ours in self.spec.metrics}
            return TaskScores(self.name, self.ability, metrics[self.metric], metrics=metrics)
        per_language: dict[str, float] = {}
        metrics: dict[str, float] = {}
        for t in tasks:
            for ours in self.spec.metrics:
                metrics[f"{t.lang}/{ours}"] = value(t.name, ours)
            per_language[t.lang] = metrics[f"{t.lang}/{self.metric}"]
        for ours in self.spec.metrics:
            metrics[ours] = mean(metrics[f"{t.lang}/{ours}"] for t in tasks)
        return TaskScores(self.name, self.ability, mean(per_language.values()), per_language=per_language, metrics=metrics)
