"""The preflight: everything about a cell that can be checked without training, for every cell of a
sweep, before the first one trains.

    problems = preflight(values)      # values: one cell's resolved config; [] when it can run

A cell is checked for what it will read: each checkpoint it needs (the base, the Instruct model, a GGUF
file) resolves to a readable config (a local folder or file, or a hub id in the local cache or on a hub
that answers; offline, the message says so), its datasets (and the English counterpart) exist and
parse, its strategy's options fit the model's shape and its needs are met (a strategy declares them
with `needs()`: LF_H2 reads the base, GR and ER the counterpart), and the output root is writable (by
`cft.config.checks`). What many cells share (a checkpoint, a dataset) is checked once per process.

`cft.config.checks.Checks` runs it on every cell; cells that fail are listed with their reasons before
any work. `preflight=lenient` (the default) runs the others, and each failing cell stops at its start
with its reason (FAILED; the end of the sweep lists it); `preflight=strict` stops the sweep; `check=true`
runs the same preflight and exits 2 when a cell fails it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from cft.errors import CftError

ENV = "CFT_PREFLIGHT_FAILED"  # JSON {run folder: reason} of the cells of this sweep that failed the preflight
HUB_HOST = ("huggingface.co", 443)


def preflight(values: Mapping[str, Any], choices: Mapping[str, str] | None = None) -> list[str]:
    """The reasons this cell (its resolved config; its group choices name it) cannot run, naming the key
    to fix; [] when it can."""
    name = str((choices or {}).get("strategy") or (values.get("strategy") or {}).get("_target_", "?"))
    problems: list[str] = []
    model_cfg = dict(values.get("model") or {})
    phase1 = dict(values.get("phase1_data") or {})
    phase2 = dict(values.get("phase2_data") or {})
    try:
        strategy = _strategy(json.dumps(values.get("strategy"), sort_keys=True, default=str))
        needs = strategy.needs()
    except CftError as exc:
        return [_line(exc)]
    use_instruct = bool(phase1.get("use_instruct_checkpoint"))
    gguf = model_cfg.get("gguf_file")
    shape_from = None  # the checkpoint whose config the strategy's options are checked against
    if use_instruct:
        if not model_cfg.get("instruct"):
            problems.append(
                f"phase1_data=instruct needs an Instruct checkpoint, but model '{model_cfg.get('name')}' has none "
                "(set model.instruct=<hub id or path>)"
            )
        else:
            problem = checkpoint_problem(str(model_cfg["instruct"]), gguf, "Instruct model", "model.instruct")
            problems += [problem] if problem else []
            shape_from = shape_from or (None if problem else ("instruct", str(model_cfg["instruct"])))
    needed_by = None  # what in this cell reads the base model, if anything
    if not use_instruct:
        needed_by = "Phase-1 training"
    elif (values.get("similarity") or {}).get("mpd"):
        needed_by = "MPD (similarity.mpd)"
    elif "base" in needs:  # the strategy's own declaration (LF_H2 ranks layers by their change from the base)
        needed_by = f"strategy {name}"
    if model_cfg.get("base") and needed_by:
        problem = checkpoint_problem(str(model_cfg["base"]), gguf, "base model", "model.base")
        if problem:
            problems.append(f"{needed_by} needs the base model: {problem}")
        elif not shape_from:
            shape_from = ("base", str(model_cfg["base"]))
    elif needed_by and not model_cfg.get("build"):
        problems.append(f"{needed_by} needs the base model, but model '{model_cfg.get('name')}' has no model.base")
    if not problems:
        problems += _shape_problems(strategy, model_cfg, use_instruct)
    if not use_instruct:
        problems += _data_problems(phase1, "phase1_data")
    problems += _data_problems({k: v for k, v in phase2.items() if k != "counterpart"}, "phase2_data")
    if "counterpart" in needs:
        if phase2.get("counterpart"):
            problems += _data_problems(phase2["counterpart"], "phase2_data.counterpart")
        else:
            problems.append(
                f"strategy {name} replays the English counterpart of the Phase-2 data, but "
                f"phase2_data={phase2.get('name')} has none (phase2_data.counterpart)"
            )
    problems += _liger_problems(values.get("train") or {})
    return list(dict.fromkeys(problems))


def _liger_problems(train: Mapping[str, Any]) -> list[str]:
    """train.liger needs the liger-kernel package, in the environment the cells run in (the same as the
    preflight's). That it needs CUDA is checked when the phase starts: a SLURM sweep's preflight runs on the
    node that submits it, which may have no GPU."""
    phases = [dict(train.get(p) or {}) for p in ("phase1", "phase2")]
    if not any(train.get("liger") if p.get("liger") is None else p["liger"] for p in phases):
        return []
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        return ["train.liger=true needs the liger-kernel package, which is not installed (pip install liger-kernel)"]
    return []


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


@cache
def _strategy(node_json: str):
    from cft.recipes.common import build

    return build(json.loads(node_json))


def _shape_problems(strategy, model_cfg: Mapping[str, Any], use_instruct: bool) -> list[str]:
    try:
        strategy.validate(_model_shape(json.dumps(dict(model_cfg), sort_keys=True, default=str), use_instruct))
    except CftError as exc:
        return [_line(exc)]
    return []


@cache
def _model_shape(model_json: str, use_instruct: bool):
    """The model's config, read once for every cell of the sweep that trains it (a GGUF file's takes seconds)."""
    from cft.recipes.common import model_shape

    return model_shape(json.loads(model_json), use_instruct=use_instruct)


def checkpoint_problem(ref: str, gguf_file: str | None, what: str, setting: str) -> str | None:
    """Why the checkpoint `ref` (optionally a GGUF file in it) cannot be read, naming `setting`; None when it can."""
    return _checkpoint_problem(ref, gguf_file, what, setting)


@cache
def _checkpoint_problem(ref: str, gguf_file: str | None, what: str, setting: str) -> str | None:
    from cft.models.checkpoints import read_config

    local = Path(ref).expanduser()
    if not local.exists() and _hub_id(ref):
        cached = _in_hub_cache(ref, gguf_file or "config.json")
        if not cached:
            if not hub_reachable():
                why = "HF_HUB_OFFLINE=1" if _offline_env() else f"{HUB_HOST[0]} cannot be reached"
                return (
                    f"{setting}={ref}: not on disk and the hub is offline ({why}). "
                    f"Offline? Download the checkpoint and pass its local path ({setting}=/path/to/{Path(ref).name})"
                )
    try:
        read_config(ref, gguf_file=gguf_file, what=what, setting=setting)
    except CftError as exc:
        return f"{setting}={ref}: {_line(exc)}"
    return None


def _hub_id(ref: str) -> bool:
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        return False
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(ref)
    except Exception:  # the hub client's validation error: not a hub id
        return False
    return True


def _in_hub_cache(ref: str, filename: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(ref, filename), str)
    except Exception:  # an unreadable cache: as if not cached
        return False


def _offline_env() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether the hub answers (a TCP connection within 3 s; once per process): offline, a hub id fails in
    seconds here instead of after the hub client's 20-50 s of retries."""
    if _offline_env():
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=3):
            return True
    except OSError:
        return False


def _data_problems(node: Mapping[str, Any], key: str) -> list[str]:
    if not node or node.get("use_instruct_checkpoint"):
        return []
    if not node.get("path") and node.get("source") not in (None, "demo"):
        return []  # a hub dataset: read (and checked) when the cell starts; the hub client has its own cache
    return [p for p in [_dataset_problem(json.dumps(dict(node), sort_keys=True, default=str), key)] if p]


@cache
def _dataset_problem(node_json: str, key: str) -> str | None:
    """Load and validate the dataset as the cell will (every record parsed); the reason it cannot be, or None."""
    from cft.data.sources import load_config

    try:
        load_config(json.loads(node_json), key)
    except CftError as exc:
        line = _line(exc)
        return line if key in line else f"{key}: {line}"  # the key to fix, when the loader's message lacks it
    return None


def failed_cells() -> dict[str, str]:
    """{run folder: reason} of this sweep's cells that failed the preflight (set by cft.config.checks)."""
    try:
        return dict(json.loads(os.environ.get(ENV) or "{}"))
    except ValueError:
        return {}
