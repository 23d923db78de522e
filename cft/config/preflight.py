"""The preflight: everything about a cell that can be checked without training, for every cell of a
sweep, before the first one trains.

    problems = preflight(values)      # values: one cell's resolved config; [] when it can run

A cell is checked for what it will read: each checkpoint it needs (the base, the Instruct model, a GGUF
file) resolves to a readable config (a local folder or file, or a hub id in the local cache or on a hub
that answers; offline, the message says so), its datasets (and the English counterpart) exist and
parse (a local file fully; a hub dataset in the local cache by its first records, through the cell's own
record parser; one that is not is resolved on a hub that answers, or, offline, named as for a checkpoint),
its strategy's options fit the model's shape and its needs are met (a strategy declares them
with `needs()`: LF_H2 reads the base, GR and ER the counterpart), and the output root is writable (by
`cft.config.checks`). What many cells share (a checkpoint, a dataset) is checked once per process.

`cft.config.checks.Checks` runs it on every cell; cells that fail are listed with their reasons before
any work. `preflight=lenient` (the default) runs the others, and each failing cell stops at its start
with its reason (FAILED; the end of the sweep lists it); `preflight=strict` stops the sweep; `check=true`
runs the same preflight and exits 2 when a cell fails it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from cft.errors import CftError

ENV = "CFT_PREFLIGHT_FAILED"  # JSON {run folder: reason} of the cells of this sweep that failed the preflight
HUB_HOST = ("huggingface.co", 443)
HUB_TIMEOUT = 3.0  # seconds: the TCP check, and a hub dataset's resolution
SAMPLE = 20  # records of a cached hub dataset parsed (a wrong field name fails on the first)


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
        problems += data_problems(phase1, "phase1_data")
    problems += data_problems({k: v for k, v in phase2.items() if k != "counterpart"}, "phase2_data")
    if "counterpart" in needs:
        if phase2.get("counterpart"):
            problems += data_problems(phase2["counterpart"], "phase2_data.counterpart")
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
        with socket.create_connection(HUB_HOST, timeout=HUB_TIMEOUT):
            return True
    except OSError:
        return False


def data_problems(node: Mapping[str, Any], key: str) -> list[str]:
    """Why the dataset of config node `key` cannot be read as the cell will read it ([] when it can)."""
    if not node or node.get("use_instruct_checkpoint"):
        return []
    node_json = json.dumps(dict(node), sort_keys=True, default=str)
    if not node.get("path") and node.get("source") not in (None, "demo"):
        return [p for p in [_hub_dataset_problem(node_json, key)] if p]
    return [p for p in [_dataset_problem(node_json, key)] if p]


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


@cache
def _hub_dataset_problem(node_json: str, key: str) -> str | None:
    """A hub dataset (`source`), checked where the cell will find it: per-language files (`hub_files`) in the
    hub cache, or what `datasets.load_dataset` left in the datasets cache, parsed by their first records
    through the cell's record parser; what is not cached is resolved on the hub (offline: named)."""
    from cft.data.records import DEFAULT_FIELDS, head_records

    node = json.loads(node_json)
    source = str(node["source"])
    if not _hub_id(source):
        return None  # not a hub id: the loader's own message, when the cell starts
    fields = {**DEFAULT_FIELDS, **(node.get("fields") or {})}
    reading = {
        "on_bad_record": node.get("on_bad_record") or "error",
        "skip_empty_output": bool(node.get("skip_empty_output")),
        "config_key": key,
    }
    pattern = node.get("hub_files")
    if pattern:  # one file per language, as cft.data.sources._read_hub_files downloads them
        languages = node.get("languages") or node.get("available_languages") or []
        files = {lang: str(pattern).format(lang=lang) for lang in languages}
        missing = []
        for lang, name in files.items():
            local = _hub_cache_file(source, name)
            if local is None:
                missing.append(name)
                continue
            located = ((f"{local}:{line}", raw) for line, raw in head_records(local, SAMPLE))
            problem = _sample_problem(located, {**fields, "lang": None}, lang, reading, key, local)
            if problem:
                return problem
        return _resolve_on_hub(source, missing, key, datasets_client=False) if missing else None
    cached = _datasets_cache(source)
    if cached is None:
        return _resolve_on_hub(source, [], key, datasets_client=True)
    split = str(node.get("split") or "train")
    arrows = sorted(cached.glob(f"*-{split}.arrow")) + sorted(cached.glob(f"*-{split}-*-of-*.arrow"))
    if not arrows:
        try:
            splits = sorted(json.loads((cached / "dataset_info.json").read_text()).get("splits") or {})
        except (OSError, ValueError):
            splits = []
        return f"{key}.split={split}: the cached copy of dataset '{source}' ({cached}) has no split '{split}' (it has: {', '.join(splits) or 'none'})"
    try:
        rows = _arrow_head(arrows[0], SAMPLE)
    except Exception as exc:  # pyarrow's errors on a damaged cache file
        return f"{key}.source={source}: the cached copy {arrows[0]} cannot be read ({type(exc).__name__}: {_line(exc)[:160]})"
    located = ((f"{source}[{split}] row {i}", raw) for i, raw in enumerate(rows))  # as _read_hub names them
    return _sample_problem(located, fields, "en", reading, key, arrows[0])


def _sample_problem(located, fields, lang: str, reading: Mapping[str, Any], key: str, where) -> str | None:
    """The first records of a cached hub dataset through the cell's record parser: a wrong field name, a record
    that is not an object, or (on_bad_record=skip) a sample with no good record, in one line."""
    from cft.data.records import convert_records

    quiet = logging.getLogger("cft.data.records")  # skipped records would each warn: the one line says it
    disabled, quiet.disabled = quiet.disabled, True
    try:
        examples, skipped = convert_records(located, fields, lang=lang, **reading)
    except CftError as exc:
        line = _line(exc)
        return line if key in line else f"{key}: {line}"
    finally:
        quiet.disabled = disabled
    if skipped and not examples:
        return f"{key}: none of the first {skipped} records of {where} can be read ({key}.fields: {json.dumps(fields)})"
    return None


def _hub_cache_file(source: str, filename: str) -> str | None:
    """The hub cache's copy of a dataset file (what hf_hub_download gives offline), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, filename, repo_type="dataset")
    except Exception:  # an unreadable cache: as if not cached
        return None
    return found if isinstance(found, str) else None


def _datasets_cache(source: str) -> Path | None:
    """The folder `datasets.load_dataset(source)` reads offline: its latest prepared configuration in the
    datasets cache (<cache>/<namespace>___<name>/<config>/<version>/<hash>/), or None."""
    import datasets.config
    from datasets.naming import camelcase_to_snakecase

    parts = source.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = Path(datasets.config.HF_DATASETS_CACHE).expanduser() / "___".join(parts)
    folders = [p for p in root.glob("*/*/*") if (p / "dataset_info.json").is_file()]
    return max(folders, key=lambda p: p.stat().st_mtime) if folders else None


def _arrow_head(path: Path, n: int) -> list[dict]:
    """The first `n` rows of a datasets cache file (Arrow IPC stream), without reading the rest."""
    import pyarrow as pa

    rows: list[dict] = []
    with pa.memory_map(str(path)) as source:
        for batch in pa.ipc.open_stream(source):
            rows += batch.slice(0, n - len(rows)).to_pylist()
            if len(rows) >= n:
                break
    return rows


def _offline_variable(datasets_client: bool) -> str | None:
    """The variable that keeps the client that reads a dataset offline, or None: huggingface_hub's (per-language
    files) or also the datasets library's (`datasets.load_dataset`)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") + (("HF_DATASETS_OFFLINE",) if datasets_client else ())
    for name in names:
        if os.environ.get(name, "").lower() in ("1", "true", "yes"):
            return name
    return None


def _resolve_on_hub(source: str, files: list[str], key: str, *, datasets_client: bool) -> str | None:
    """A hub dataset that is not cached: it (and `files` of it) exist on a hub that answers within HUB_TIMEOUT;
    offline, the line says so and how to pass a local copy, as for a checkpoint."""
    local = f"{key}.path=/path/to/file_or_folder"
    offline = _offline_variable(datasets_client)
    if offline or not hub_reachable():
        why = f"{offline}=1" if offline else f"{HUB_HOST[0]} cannot be reached"
        what = f" ({', '.join(files)})" if files else ""
        return f"{key}.source={source}{what}: not on disk and the hub is offline ({why}). Offline? Download it and pass a local copy ({local})"
    try:
        from huggingface_hub import HfApi

        info = HfApi().dataset_info(source, timeout=HUB_TIMEOUT)
    except Exception as exc:  # not found, gated, a timeout: the hub client raises many types
        return f"{key}.source={source}: the hub does not give this dataset ({type(exc).__name__}: {_line(exc)[:200]}). A local copy: {local}"
    present = {s.rfilename for s in (info.siblings or [])}
    absent = [f for f in files if f not in present]
    if absent:
        return f"{key}.source={source}: the hub's dataset has no {', '.join(absent)} ({key}.languages, {key}.hub_files)"
    return None


def failed_cells() -> dict[str, str]:
    """{run folder: reason} of this sweep's cells that failed the preflight (set by cft.config.checks)."""
    try:
        return dict(json.loads(os.environ.get(ENV) or "{}"))
    except ValueError:
        return {}
