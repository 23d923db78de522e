"""A benchmark as data: `cft/evaluation/benchmarks/<name>/benchmark.yaml`, read and checked here.

A benchmark file says everything cft needs to run one benchmark through lm-evaluation-harness; the
lm-eval task template it names (a YAML in the same folder: output type, prompt, scorer hooks) says
how lm-eval runs one of its tasks. The adapter (`cft.evaluation.lmeval`) knows no benchmark by name.

    ability: la                  # ta (task ability) or la (language ability)
    english: en                  # the language scored as en/<task>, outside la_avg (multilingual only)
    template: task.yaml          # the lm-eval task YAML that every generated task includes
    task: cft_xquad_${lang}      # the name of each generated lm-eval task
    languages:                   # units: one lm-eval task per language, each with its own variables ...
      de: {prompt: "Kontext: {{context}} ..."}
    subjects: [anatomy, ...]     # ... or one per subject (${subject}, ${subject_words}), scored as one group:
    group: {name: cft_mmlu, config: {aggregate_metric_list: ...}}
    config: {doc_to_text: "${prompt}"}                      # lm-eval keys of every generated task
    functions: {process_results: cft.evaluation.benchmarks.hooks.qa_results_${lang}}   # written as !function
    splits: {validation_split: validation}                  # lm-eval's split keys
    fewshot_split: dev           # the split shots come from (needed only with num_fewshot > 0)
    metrics: {f1: f1, em: exact_match}                      # our metric name -> lm-eval's
    headline: f1
    num_fewshot: 0
    higher_is_better: true       # false where a lower headline is better (FLORES bits per byte)
    generation: {until: ["\\n"], max_gen_toks: 32, do_sample: false}   # generative benchmarks only
    local:                       # files under eval.data_dir: split -> candidates (the first that exists)
      files: {validation: ["xquad/xquad.${lang}.json"]}
      dataset_kwargs: {field: data}
    hub:                         # without eval.data_dir
      config: {dataset_path: google/xquad, dataset_name: "xquad.${lang}"}
      builtin: null              # or lm-eval's own task: {task: mlqa_${lang}_${lang}, folder: mlqa}

`${name}` is replaced by a unit's variable (`string.Template`; `$$` is a literal `$`); lm-eval's own
Jinja `{{...}}` passes through untouched. A benchmark folder outside the package works the same:
give its path as the task's `benchmark`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cft.errors import ConfigError, DataError

BENCHMARKS_DIR = Path(__file__).resolve().parent / "benchmarks"
SPEC_FILE = "benchmark.yaml"
# Loaders of `datasets` by file suffix (lm-eval's dataset_path for local files).
# Plain text (FLORES' .devtest/.dev files): one example per line, in a `text` column.
LOCAL_TABLE_FORMATS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".devtest": "text",
    ".dev": "text",
}


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalFiles(_Schema):
    """Copies under eval.data_dir."""

    files: dict[str, list[str]] = Field(description="split -> candidate paths under data_dir (the first that exists is used)")
    dataset_kwargs: dict[str, Any] = Field({}, description="further arguments of the `datasets` loader (e.g. field: data)")


class Builtin(_Schema):
    """lm-eval's own task, used on the hub data."""

    task: str = Field(description="its name (with the unit's variable where there is one task per unit)")
    folder: str = Field(description="its folder under lm_eval/tasks (indexed alone: instant)")
    whole: bool = Field(
        False,
        description="one task (or group) for the whole benchmark: used only when every unit is chosen, "
        "a subset runs the generated tasks on hub.config",
    )


class Hub(_Schema):
    """The hub copy, used when eval.data_dir is not set."""

    config: dict[str, Any] = Field({}, description="lm-eval keys naming the hub dataset (dataset_path, dataset_name, ...)")
    builtin: Builtin | None = Field(None, description="lm-eval's own task instead of the generated ones")


class Group(_Schema):
    """Units scored together as one lm-eval group (MMLU's subjects: size-weighted)."""

    name: str = Field(description="the group's lm-eval name")
    config: dict[str, Any] = Field({}, description="lm-eval group keys (aggregate_metric_list, metadata)")


class BenchmarkSpec(_Schema):
    """One benchmark file (see the module docstring)."""

    ability: Literal["ta", "la"] = Field(description="ta (task ability) or la (language ability)")
    title: str = Field(description="the benchmark and its paper, for messages and the README")
    template: str = Field(description="the lm-eval task YAML in the benchmark's folder that every generated task includes")
    task: str = Field(description="the name of each generated lm-eval task (with the unit's variable)")
    english: str | None = Field(None, description="the language recorded as en/<task>, outside the LA average")
    languages: dict[str, dict[str, str]] | None = Field(None, description="language -> its variables (one task each)")
    subjects: list[str] | None = Field(None, description="subjects (one task each, scored as the group)")
    group: Group | None = Field(None, description="score the units as one lm-eval group")
    config: dict[str, Any] = Field({}, description="lm-eval keys of every generated task")
    functions: dict[str, str] = Field({}, description="lm-eval keys whose value is a !function (a dotted name)")
    splits: dict[str, str] = Field(description="lm-eval's split keys (test_split, validation_split)")
    fewshot_split: str | None = Field(None, description="the split of the shots (needed only with num_fewshot > 0)")
    metrics: dict[str, str] = Field(description="our metric name -> lm-eval's")
    headline: str = Field(description="the headline metric (our name)")
    higher_is_better: bool = Field(True, description="false: a lower headline is better (FLORES bits per byte)")
    num_fewshot: int = Field(0, ge=0, description="shots (the paper: zero-shot everywhere)")
    generation: dict[str, Any] | None = Field(None, description="lm-eval generation_kwargs; null = scored by log-likelihood")
    local: LocalFiles = Field(description="copies under eval.data_dir")
    hub: Hub = Field(description="the hub copy")

    @model_validator(mode="after")
    def _consistent(self):
        if self.languages is not None and self.subjects is not None:
            raise ValueError("a benchmark has languages or subjects, not both")
        if self.headline not in self.metrics:
            raise ValueError(f"headline {self.headline!r} is not one of its metrics {sorted(self.metrics)}")
        if self.english is not None and self.english not in (self.languages or {}):
            raise ValueError(f"english={self.english!r} is not one of its languages")
        if self.group is not None and not (self.languages or self.subjects):
            raise ValueError("a group needs languages or subjects to group")
        if self.subjects is not None and self.group is None:
            raise ValueError("subjects are scored together: give the group that aggregates them")
        if self.generation is not None and "max_gen_toks" not in self.generation:
            raise ValueError("generation needs max_gen_toks (the longest answer, in tokens)")
        return self


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark file: its spec, name and folder, and the variables of its units."""

    name: str
    folder: Path
    spec: BenchmarkSpec

    @property
    def unit_kind(self) -> str | None:
        """What a task is made per: "languages", "subjects", or None (one task for the whole benchmark)."""
        if self.spec.languages is not None:
            return "languages"
        if self.spec.subjects is not None:
            return "subjects"
        return None

    @property
    def units(self) -> list[str]:
        if self.spec.languages is not None:
            return list(self.spec.languages)
        return list(self.spec.subjects or [])

    def variables(self, unit: str | None) -> dict[str, str]:
        """The `${...}` variables of one unit (none for a benchmark without units)."""
        if unit is None:
            return {}
        if self.spec.languages is not None:
            return {"lang": unit, **self.spec.languages[unit]}
        return {"subject": unit, "subject_words": unit.replace("_", " ")}

    @property
    def template_path(self) -> Path:
        return self.folder / self.spec.template

    @property
    def generative(self) -> bool:
        return self.spec.generation is not None


def fill(value: Any, variables: Mapping[str, str], where: str) -> Any:
    """`value` with `${name}` replaced in every string (dicts and lists walked); ConfigError on an unknown name."""
    if isinstance(value, str):
        try:
            return string.Template(value).substitute(variables)
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                f"{where}: {value!r} names an unknown variable {exc} (known: {', '.join(variables) or 'none'})"
            ) from None
    if isinstance(value, Mapping):
        return {k: fill(v, variables, where) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, variables, where) for v in value]
    return value


def available() -> list[str]:
    """Names of the benchmarks that ship with cft."""
    return sorted(p.parent.name for p in BENCHMARKS_DIR.glob(f"*/{SPEC_FILE}"))


def load_benchmark(ref: str | Path) -> Benchmark:
    """A benchmark by name (a folder of cft/evaluation/benchmarks/) or by the path of its folder."""
    folder = BENCHMARKS_DIR / str(ref)
    if not (isinstance(ref, str) and ref.isidentifier() and (folder / SPEC_FILE).is_file()):
        folder = Path(ref).expanduser()
        if not (folder / SPEC_FILE).is_file():
            raise ConfigError(
                f"Unknown benchmark {str(ref)!r}: cft has {', '.join(available())}, "
                f"or give the path of a folder with a {SPEC_FILE}"
            )
    return _load(folder.resolve())


@lru_cache(maxsize=64)
def _load(folder: Path) -> Benchmark:
    path = folder / SPEC_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    try:
        spec = BenchmarkSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(map(str, e["loc"])) + (": " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    bench = Benchmark(folder.name, folder, spec)
    if not bench.template_path.is_file():
        raise ConfigError(f"{path}: template {spec.template!r} is not a file in {folder}")
    # Every pattern must name only known variables: checked on the first unit, before any run.
    first = bench.units[0] if bench.units else None
    variables = bench.variables(first)
    for key in ("task", "config", "functions"):
        fill(getattr(spec, key), variables, f"{path}: {key}")
    fill(spec.local.files, variables, f"{path}: local.files")
    fill(spec.hub.config, variables, f"{path}: hub.config")
    if spec.hub.builtin:
        fill(spec.hub.builtin.task, variables, f"{path}: hub.builtin.task")
    return bench


def resolve_local_files(
    bench: Benchmark, units: Sequence[str | None], data_dir: Path, *, shots: bool, task_name: str
) -> dict[str | None, dict[str, Path]]:
    """{unit: {split: file}} under data_dir; a DataError naming every missing file (the few-shot split
    only when shots are asked for)."""
    spec = bench.spec
    found: dict[str | None, dict[str, Path]] = {}
    missing: list[str] = []
    for unit in units:
        variables = bench.variables(unit)
        for split, patterns in spec.local.files.items():
            candidates = [data_dir / fill(p, variables, bench.name) for p in patterns]
            path = next((c for c in candidates if c.is_file()), None)
            if path is not None:
                found.setdefault(unit, {})[split] = path
            elif split != spec.fewshot_split or shots:
                missing.append(" or ".join(str(c.relative_to(data_dir)) for c in candidates))
    if missing:
        raise DataError(
            f"eval task {task_name}: eval.data_dir={data_dir} lacks "
            + "; ".join(missing[:5])
            + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
            + f". Add the files, or leave the task out of the suite (eval.tasks.{task_name}=null)"
        )
    return found


def local_dataset(bench: Benchmark, files: Mapping[str, Path]) -> dict[str, Any]:
    """lm-eval's dataset keys for local files of one unit (one `datasets` loader for all its splits)."""
    loaders = {LOCAL_TABLE_FORMATS.get(Path(f).suffix) for f in files.values()}
    if len(loaders) != 1 or None in loaders:
        raise DataError(
            f"benchmark {bench.name}: the local files of one task must share one of the formats "
            f"{', '.join(LOCAL_TABLE_FORMATS)}: {sorted(map(str, files.values()))}"
        )
    kwargs: dict[str, Any] = {"data_files": {split: str(path) for split, path in files.items()}}
    kwargs.update(bench.spec.local.dataset_kwargs)
    return {"dataset_path": loaders.pop(), "dataset_kwargs": kwargs}
