"""The lm-eval tasks of one benchmark run, and the task YAMLs that lm-eval's TaskManager reads.

A run writes one YAML per generated task (per language or subject) to `<out_dir>/lm_eval_tasks/`;
each `include:`s the benchmark's template and adds what the benchmark file says for that unit (the
dataset: local files or a hub id, the prompt, the split keys, the generation settings, the shots).
The same folder repeats the run with lm-eval's own CLI:

    lm-eval run --include_path <out_dir>/lm_eval_tasks --tasks cft_xquad_de --apply_chat_template ...

Where the benchmark names one of lm-eval's own tasks for its hub data (IFEval, MMLU, HellaSwag,
MLQA), that task is used as is and only its folder is indexed (all of lm-eval's ~14,700 tasks take 10 s).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cft.evaluation.benchmark import Benchmark, fill, local_dataset


@dataclass
class LMTask:
    """One lm-eval task (or group) of a benchmark run."""

    name: str  # lm-eval task or group name
    unit: str | None = None  # its language or subject
    config: dict[str, Any] = field(default_factory=dict)  # YAML keys of a generated task
    functions: dict[str, str] = field(default_factory=dict)  # YAML key -> dotted function (written as !function)
    include: Path | None = None  # the template it includes
    group_of: list[str] = field(default_factory=list)  # for a group: its member tasks
    builtin_folder: Path | None = None  # lm-eval's own task: its folder under lm_eval/tasks

    @property
    def builtin(self) -> bool:
        return self.builtin_folder is not None


def _yaml_value(value) -> str:
    # JSON is valid YAML (flow style) and keeps every string exactly, newlines and scripts included.
    return json.dumps(value, ensure_ascii=False)


def write_task_yaml(path: Path, task: LMTask) -> None:
    lines = []
    if task.include is not None:
        lines.append(f"include: {_yaml_value(str(task.include))}")
    if task.group_of:
        lines.append(f"group: {_yaml_value(task.name)}")
        lines.append(f"task: {_yaml_value(list(task.group_of))}")
    else:
        lines.append(f"task: {_yaml_value(task.name)}")
    for key, value in task.config.items():
        lines.append(f"{key}: {_yaml_value(value)}")
    for key, function in task.functions.items():
        lines.append(f"{key}: !function {function}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _builtin_root() -> Path:
    return Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"


def lm_tasks(
    bench: Benchmark,
    units: Sequence[str | None],
    *,
    local: Mapping[str | None, Mapping[str, Path]] | None,
    num_fewshot: int,
    generation: Mapping[str, Any] | None,
) -> list[LMTask]:
    """The lm-eval tasks of a run of `bench` on `units` (a group first, then its members)."""
    spec = bench.spec
    builtin = spec.hub.builtin if local is None else None
    if builtin is not None:
        folder = _builtin_root() / builtin.folder
        if not builtin.whole:
            return [LMTask(fill(builtin.task, bench.variables(u), bench.name), u, builtin_folder=folder) for u in units]
        if list(units) == (bench.units or [None]):  # the whole benchmark, as lm-eval ships it
            return [LMTask(builtin.task, None, builtin_folder=folder)]
        # A subset of the units (MMLU subjects): generated tasks on the hub dataset (hub.config).
    members = []
    for unit in units:
        variables = bench.variables(unit)
        config: dict[str, Any] = dict(spec.splits)
        config.update(fill(spec.config, variables, bench.name))
        if local is not None:
            files = local[unit]
            config.update(local_dataset(bench, files))
            if spec.fewshot_split and spec.fewshot_split in files:
                config["fewshot_split"] = spec.fewshot_split
        else:
            config.update(fill(spec.hub.config, variables, bench.name))
        config["num_fewshot"] = num_fewshot
        if generation is not None:
            config["generation_kwargs"] = dict(generation)
        members.append(
            LMTask(
                fill(spec.task, variables, bench.name),
                unit,
                config=config,
                functions=fill(spec.functions, variables, bench.name),
                include=bench.template_path,
            )
        )
    if spec.group is None:
        return members
    group = LMTask(spec.group.name, config=dict(spec.group.config), group_of=[m.name for m in members])
    return [group, *members]


def write_task_configs(tasks: Sequence[LMTask], tasks_dir: str | Path) -> list[Path]:
    """Write the generated task YAMLs to `tasks_dir` (emptied of earlier ones); returns the folders
    of the built-in lm-eval tasks among `tasks` (for TaskManager's include_path)."""
    tasks_dir = Path(tasks_dir)
    tasks_dir.mkdir(parents=True, exist_ok=True)
    for stale in tasks_dir.glob("*.yaml"):  # from an earlier run with other settings
        stale.unlink()
    for task in tasks:
        if not task.builtin:
            write_task_yaml(tasks_dir / f"{task.name}.yaml", task)
    return sorted({t.builtin_folder for t in tasks if t.builtin_folder is not None})


def top_level(tasks: Sequence[LMTask]) -> list[LMTask]:
    """The tasks to ask lm-eval for: groups and tasks that belong to no group."""
    members = {m for t in tasks for m in t.group_of}
    return [t for t in tasks if t.name not in members]
