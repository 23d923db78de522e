"""An evaluation suite (conf/eval/<suite>.yaml) built and checked before any model work.

`build_suite(eval_node)` checks the suite-level keys (`SuiteConfig`), instantiates every task with
the suite's shared defaults (limit, data_dir, batch_size, backend, apply_chat_template: passed to a
task whose constructor takes them unless its node sets them) and its suite name, and checks the
averages' definition. An unknown benchmark, language, metric or option and a missing local file
stop here with a ConfigError or DataError. `Suite.evaluate` runs the tasks and returns flat keys
without a phase prefix (the training recipe adds `phase1/`, `phase2/` with cft.run.keys.phased).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cft.errors import ConfigError
from cft.evaluation.config import SHARED, SuiteConfig
from cft.evaluation.scores import TaskScores, flatten, items
from cft.evaluation.uncertainty import write_items
from cft.run import keys, layout

log = logging.getLogger(__name__)


class Suite(Mapping):
    """The tasks of a suite, by name, with the definition of its averages."""

    def __init__(
        self,
        tasks: Mapping[str, Any],
        *,
        averages: Mapping[str, list[str]] | None = None,
        switched_off: Mapping[str, tuple[str, str]] = (),  # name -> (ability, why it does not run)
        dtype: str | None = None,  # eval.dtype: the precision the model is cast to before the first task; None: as held
        model_dtype: str = "auto",  # model.dtype, which eval.dtype=auto follows
    ):
        self.tasks = dict(tasks)
        self.averages = {k: list(v) for k, v in averages.items()} if averages else None
        self.switched_off = dict(switched_off)  # tasks of an average that do not run
        self.dtype, self.model_dtype = dtype, model_dtype
        self.timing: dict[str, float] = {}  # the last evaluate(): seconds and items, per task and in all

    @property
    def precision(self) -> str | None:
        """What every evaluation of the suite runs at (bf16, fp16, fp32), or None: as the model is held."""
        return None if self.dtype is None else eval_precision(self.dtype, self.model_dtype)

    def __getitem__(self, name: str):
        return self.tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def evaluate(self, model, tokenizer, *, out_dir: str | Path, sharded: bool = False) -> dict[str, float | int | str]:
        """Run every task (outputs in `out_dir/<task>`) and return the flat metric keys; the per-item
        scores go to `out_dir/items.json` (cft.run.layout.EVAL_ITEMS).

        `sharded`: every rank of the process group calls this with the same weights; each task whose `run` takes
        `sharded` (LMEvalTask) scores this rank's share of its documents. Those run first; the others (AlpacaEval:
        a paid judge must not run once per rank) then run on rank 0 alone, while the other ranks go on (they wait
        at the caller's next meeting point, not inside a collective). Rank 0 writes `out_dir` and gets the
        metrics; the other ranks work in a scratch folder and get {}."""
        from cft.evaluation.harness import data_parallel
        from cft.training import distributed

        if not data_parallel(sharded):
            return self._run(model, tokenizer, Path(out_dir), sharded=False)
        if distributed.is_main():
            return self._run(model, tokenizer, Path(out_dir), sharded=True)
        with tempfile.TemporaryDirectory(prefix="cft-eval-rank-") as scratch:
            self._run(model, tokenizer, Path(scratch), sharded=True, shared_only=True)
        return {}

    @staticmethod
    def _shards(task) -> bool:
        """Whether `task` scores a share of its items per rank: its `run` takes `sharded`, and it does not say
        otherwise (`shards`: LMEvalTask on vLLM, which would run whole on every rank)."""
        return "sharded" in inspect.signature(task.run).parameters and getattr(task, "shards", True)

    def _run(self, model, tokenizer, out_dir: Path, *, sharded: bool, shared_only: bool = False) -> dict[str, float | int | str]:
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.precision is not None and hasattr(model, "to"):
            # One precision for every evaluation of a cell: Phase 1 is loaded in one dtype, Phase 2 may be
            # held in another (bf16 under ZeRO-3); both are scored at the suite's (a cast of a saved model).
            from cft.models import resolve_dtype

            model = model.to(resolve_dtype(self.precision))
        by_task: dict[str, list[TaskScores]] = {}
        self.timing = {}
        # Sharded: the tasks every rank shares first (in the suite's order), then rank 0's own.
        order = sorted(self.tasks, key=lambda n: not self._shards(self.tasks[n])) if sharded else list(self.tasks)
        for name in order:
            task = self.tasks[name]
            takes = sharded and self._shards(task)
            if shared_only and not takes:
                continue
            log.info("Evaluating %s", name)
            start = time.perf_counter()
            by_task[name] = task.run(model, tokenizer, out_dir=out_dir / name, **({"sharded": True} if takes else {}))
            seconds = time.perf_counter() - start
            log.info("Evaluated %s in %.1f s", name, seconds)  # so a log's gaps are not misread
            # items: the per-document records the task wrote (lm-eval's samples, one JSON line each)
            n_items = sum(sum(1 for _ in f.open(encoding="utf-8")) for f in (out_dir / name).rglob("*.jsonl"))
            self.timing.update({f"{name}/seconds": seconds, f"{name}/items": n_items})
        results = [s for name in self.tasks if name in by_task for s in by_task[name]]  # the suite's order
        self.timing["seconds"] = sum(v for k, v in self.timing.items() if k.endswith("/seconds"))
        self.timing["items"] = sum(v for k, v in self.timing.items() if k.endswith("/items"))
        for name, (ability, reason) in self.switched_off.items():
            results.append(TaskScores(name, ability, math.nan, not_computed=reason))
        write_items(out_dir / layout.EVAL_ITEMS, items(results))
        flat = flatten(results, self.averages)
        first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        if first is not None:
            flat[keys.eval_dtype()] = str(first.dtype).removeprefix("torch.")
        return flat


def eval_precision(eval_dtype: str, model_dtype: str = "auto") -> str:
    """The precision evaluations run at: eval.dtype; its auto follows model.dtype, whose auto is bf16 on a CUDA
    GPU that supports it and fp32 elsewhere (the CPU included: cft.models.resolve_dtype owns that rule)."""
    from cft.models import precision

    return precision(model_dtype if eval_dtype == "auto" else eval_dtype)


def _plain(node: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return node


def _problems(exc: ValidationError) -> str:
    """One line per bad key: `eval.<key>=<value>: <what is wrong>` (the alternatives of a union joined by 'or')."""
    by_key: dict[str, tuple[Any, list[str]]] = {}
    for err in exc.errors():
        # pydantic names the member of a union it tried (constrained-int, literal[...]): not part of the key.
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and (p in _UNION_TAGS or p.startswith(_UNION_PREFIXES)))]
        by_key.setdefault(".".join(["eval", *loc]), (err.get("input"), []))[1].append(err["msg"])
    return "; ".join(f"{key}={value!r}: {' or '.join(dict.fromkeys(msgs))}" for key, (value, msgs) in by_key.items())


_UNION_TAGS = {"int", "str", "bool", "float", "none", "list[str]", "[key]"}
_UNION_PREFIXES = ("constrained-", "literal[", "function-", "dict[")


def _task_class(target: Any, where: str):
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(
            f"{where}._target_={target!r}: must name a class as module.Class (e.g. cft.evaluation.lmeval.LMEvalTask)"
        )
    module_name, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}._target_={target!r} cannot be imported ({exc})") from None


def build_task(name: str, node: Mapping[str, Any], defaults: Mapping[str, Any]):
    """One task of a suite: its class with the node's options, the suite's shared defaults where the
    class takes them and the node leaves them out or null, and `name` (its key in the suite) as its name."""
    where = f"eval.tasks.{name}"
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ConfigError(f"{where}: expected a node with _target_ (e.g. cft.evaluation.lmeval.LMEvalTask) and its options")
    cls = _task_class(node["_target_"], where)
    params = inspect.signature(cls).parameters
    options = {k: v for k, v in node.items() if not k.startswith("_")}
    unknown = [k for k in options if k not in params]
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; {cls.__name__} takes {', '.join(params)}")
    for key, value in defaults.items():
        # A shared key the node leaves out, or sets to null, takes the suite's value.
        if key in params and options.get(key) is None:
            options[key] = value
    if "name" in params and "name" not in options:
        options["name"] = name
    return cls(**options)


def build_suite(eval_node: Mapping[str, Any], *, model_dtype: str = "auto") -> Suite:
    """The tasks of a suite (conf/eval/<suite>.yaml), each built and checked before any model work.
    `model_dtype`: model.dtype, which the suite's `dtype: auto` follows (`eval_precision`)."""
    plain = _plain(eval_node)
    try:
        config = SuiteConfig.model_validate(plain)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None
    if not config.tasks:
        raise ConfigError("the eval config lists no tasks (eval.tasks is empty)")
    defaults = {key: plain[key] for key in SHARED if key in plain}
    tasks = {name: build_task(name, node, defaults) for name, node in config.tasks.items() if node is not None}
    if not tasks:
        raise ConfigError("every task of the eval suite is switched off (eval.tasks.* = null)")
    switched_off = {}
    for ability, names in (config.averages or {}).items():
        for name in names:
            if name not in tasks:  # set to null, or removed (~eval.tasks.<name>): recorded as not computed
                switched_off[name] = (
                    ability,
                    f"switched off in the suite (eval.tasks.{name}=null)"
                    if name in config.tasks
                    else f"removed from the suite (~eval.tasks.{name})",
                )
                continue
            own = getattr(tasks[name], "ability", ability)
            if own != ability:
                raise ConfigError(f"eval.averages.{ability} names {name!r}, a {own} task")
    for ability in ("ta", "la"):
        names = (config.averages or {}).get(ability) or [n for n, t in tasks.items() if getattr(t, "ability", None) == ability]
        lower = [n for n in names if n in tasks and not getattr(tasks[n], "higher_is_better", True)]
        if lower and len(lower) < len([n for n in names if n in tasks]):
            raise ConfigError(
                f"the {ability}_avg of this suite would mix scores where lower is better ({', '.join(lower)}) with ones "
                f"where higher is better: list the ones to average in eval.averages.{ability}"
            )
    return Suite(tasks, averages=config.averages, switched_off=switched_off, dtype=config.dtype, model_dtype=model_dtype)
