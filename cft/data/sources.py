"""Loading an instruction dataset from its config: the built-in demo generator, a local file or
folder (`path`), or a hub id (`source`). Returns validated `Example`s and per-language sizes.

A local `path` is a .json array, .jsonl or .parquet file, or a folder of per-language files named
by language code (`fr.jsonl`, `ja.json`, ...). A hub dataset is either read whole with
`datasets.load_dataset` or, with `hub_files: "{lang}.jsonl"`, one file per language (MultiAlpaca),
downloaded and then read like a local file (so bad records are reported with file and line).

Sampling is seeded by the dataset's own `seed`: `max_per_language` caps each language,
`balance: true` gives every language the same number of examples (the smallest language's size,
within the caps), and `max_examples` caps the total (split equally over the languages when
balanced).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cft.data import demo as demo_data
from cft.data.records import DEFAULT_FIELDS, READABLE_SUFFIXES, Example, convert_records, read_examples
from cft.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = READABLE_SUFFIXES


@dataclass
class SFTData:
    name: str
    examples: list[Example]
    skipped: int = 0  # bad records skipped (on_bad_record=skip)
    sizes: dict[str, int] = field(default_factory=dict)
    skipped_by: dict[str, int] = field(default_factory=dict)  # skipped records by reason: bad_record, empty_output

    def __len__(self) -> int:
        return len(self.examples)


def _files_by_language(folder: Path) -> dict[str, Path]:
    by_lang: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix in LOCAL_SUFFIXES and p.is_file() and not p.name.startswith((".", "_")):
            if p.stem in by_lang:
                raise DataError(f"{folder}: two files for language '{p.stem}' ({by_lang[p.stem].name}, {p.name}); keep one")
            by_lang[p.stem] = p
    return by_lang


def _read_local(
    path: Path, languages: Sequence[str] | None, fields, reading, files: dict[str, Path]
) -> tuple[list[Example], int]:
    if path.is_dir():
        by_lang = _files_by_language(path)
        wanted = list(languages) if languages else sorted(by_lang)
        missing = [lang for lang in wanted if lang not in by_lang]
        if missing:
            raise DataError(
                f"{path}: no file for language(s) {missing} (found: {', '.join(sorted(by_lang)) or 'no .json/.jsonl/.parquet files'})"
            )
        out, skipped = [], 0
        files.update({lang: by_lang[lang] for lang in wanted})  # a language left empty names its file
        for lang in wanted:
            # The file name says the language; a per-record language field must not contradict it.
            ex, sk = read_examples(by_lang[lang], fields={**fields, "lang": None}, lang=lang, **reading)
            out.extend(ex)
            skipped += sk
        return out, skipped
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if path.suffix not in LOCAL_SUFFIXES:
        raise DataError(
            f"{path}: unsupported data file type '{path.suffix}' (use .json, .jsonl or .parquet, or a folder of <lang>.jsonl files)"
        )
    # One file: records name their language in fields.lang; otherwise it is the one language asked for.
    if languages and len(languages) > 1:
        default = None
    else:
        default = languages[0] if languages else "en"
    examples, skipped = read_examples(path, fields=fields, lang=default or "?", **reading)
    if default is None and any(e.lang == "?" for e in examples):
        raise DataError(
            f"{path}: records have no '{fields.get('lang')}' field, so the file cannot be split into languages "
            f"{list(languages)}; give a folder of per-language files (fr.jsonl, ja.jsonl, ...) or one language"
        )
    return examples, skipped


def _hub_error(source: str, exc: Exception, key: str) -> DataError:
    return DataError(
        f"could not load dataset '{source}' from the hub ({type(exc).__name__}: {str(exc)[:300]}). "
        f"Offline? Download it and pass a local copy with {key}.path=/path/to/file_or_folder"
    )


def _read_hub_files(source: str, pattern: str, languages: Sequence[str], fields, reading) -> tuple[list[Example], int]:
    from huggingface_hub import hf_hub_download

    out, skipped = [], 0
    for lang in languages:
        try:
            local = hf_hub_download(repo_id=source, filename=pattern.format(lang=lang), repo_type="dataset")
        except Exception as exc:  # offline, not found, auth: all mean "use a local copy"
            raise _hub_error(source, exc, reading["config_key"]) from exc
        ex, sk = read_examples(local, fields={**fields, "lang": None}, lang=lang, **reading)
        out.extend(ex)
        skipped += sk
    return out, skipped


def _read_hub(
    source: str, split: str, languages, fields, reading, *, presample: int | None, seed: int
) -> tuple[list[Example], int]:
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as exc:  # the hub client raises many types; all mean "not reachable or not found"
        raise _hub_error(source, exc, reading["config_key"]) from exc
    rows = list(range(len(ds)))
    if presample and len(ds) > presample:
        # Large hub sets (OpenOrca: 4.2M rows) are subsampled before validation, by the same seed.
        rows = sorted(random.Random(seed).sample(rows, presample))
        ds = ds.select(rows)
    located = ((f"{source}[{split}] row {i}", dict(raw)) for i, raw in zip(rows, ds))
    out, skipped = convert_records(located, fields, lang="en", **reading)
    if languages:
        out = [e for e in out if e.lang in languages]
    return out, skipped


def _check_languages(name: str, languages: Sequence[str] | None, available: Sequence[str] | None) -> None:
    if not languages or not available:
        return
    unknown = [lang for lang in languages if lang not in available]
    if unknown:
        raise ConfigError(f"dataset '{name}': unknown language code(s) {unknown}; it has: {', '.join(available)}")


def subsample(
    examples: list[Example], *, seed: int, max_examples: int | None, max_per_language: int | None, balance: bool
) -> list[Example]:
    """Seeded per-language caps, equal proportions, and a total cap (see the module docstring)."""
    by_lang: dict[str, list[Example]] = {}
    for e in examples:
        by_lang.setdefault(e.lang, []).append(e)
    caps = {lang: len(v) for lang, v in by_lang.items()}
    if max_per_language:
        caps = {lang: min(n, int(max_per_language)) for lang, n in caps.items()}
    if balance and caps:
        n = min(caps.values())
        if max_examples:
            n = min(n, int(max_examples) // len(caps))
        caps = dict.fromkeys(caps, n)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for lang in sorted(by_lang):
        items = by_lang[lang]
        chosen.update(map(id, rng.sample(items, caps[lang]) if caps[lang] < len(items) else items))
    out = [e for e in examples if id(e) in chosen]  # the file order, whatever was sampled
    if max_examples and len(out) > int(max_examples):
        out = random.Random(seed).sample(out, int(max_examples))
    return out


def load_sft(
    *,
    name: str,
    source: str | None = None,
    path: str | None = None,
    languages: Sequence[str] | None = None,
    available_languages: Sequence[str] | None = None,
    max_examples: int | None = None,
    max_per_language: int | None = None,
    balance: bool = False,
    seed: int = 0,
    split: str = "train",
    hub_files: str | None = None,
    fields: Mapping[str, Any] | None = None,
    on_bad_record: str = "error",
    demo: Mapping[str, Any] | None = None,
    hint: str | None = None,
    skip_empty_output: bool = False,
    config_key: str = "<group>",
) -> SFTData:
    """Load, validate and subsample one instruction dataset. A local `path` wins over `source`.
    `config_key` is where the dataset's config lives (e.g. phase2_data.counterpart): messages name it."""
    if on_bad_record not in ("error", "skip"):
        raise ConfigError(f"{config_key}.on_bad_record={on_bad_record!r} must be 'error' or 'skip'")
    if languages is not None and not list(languages):  # [] is not "all languages" (null is): it would train on nothing
        raise ConfigError(f"{config_key}.languages is empty: name at least one language, or null for all the dataset has")
    tally: Counter = Counter()
    reading = {"on_bad_record": on_bad_record, "skip_empty_output": skip_empty_output, "config_key": config_key, "tally": tally}
    languages = list(languages) if languages else None
    available = list(available_languages) if available_languages else None
    fields = {**DEFAULT_FIELDS, **(dict(fields) if fields else {})}
    files: dict[str, Path] = {}  # language -> the file it was read from (a folder of per-language files)
    if path:
        examples, skipped = _read_local(Path(str(path)).expanduser(), languages, fields, reading, files)
        where = str(path)
    elif source == "demo":
        spec = dict(demo or {})
        examples = demo_data.make_examples(
            spec.get("tasks", demo_data.FAMILIES["A"]), languages or ["en"], int(spec.get("per_task_language", 100)), seed, split
        )
        skipped, where = 0, "built-in demo data"
    elif source:
        _check_languages(name, languages, available)
        if hub_files:
            wanted = languages or available
            if not wanted:
                raise ConfigError(f"dataset '{name}': hub_files needs `languages` (or `available_languages`)")
            examples, skipped = _read_hub_files(source, hub_files, wanted, fields, reading)
        else:
            presample = None if (languages or max_per_language or balance) else max_examples
            examples, skipped = _read_hub(source, split, languages, fields, reading, presample=presample, seed=seed)
        where = source
    else:
        raise ConfigError(f"dataset '{name}' has neither a source (hub id) nor a path" + (f". {hint}" if hint else ""))
    if languages:
        examples = [e for e in examples if e.lang in languages]
    examples = subsample(examples, seed=seed, max_examples=max_examples, max_per_language=max_per_language, balance=balance)
    if not examples:
        raise DataError(
            f"{where}: dataset '{name}' is empty" + (f" after filtering to languages {languages}" if languages else "")
        )
    sizes = dict(sorted(Counter(e.lang for e in examples).items()))
    left_empty = [lang for lang in languages or [] if not sizes.get(lang)]
    if left_empty:  # a requested language with no records would silently train on the others
        lang = left_empty[0]
        source_of = str(files[lang]) if lang in files else where
        raise DataError(
            f"{source_of}: dataset '{name}' has no records for language '{lang}' ({config_key}.languages"
            + (f"; also empty: {left_empty[1:]}" if left_empty[1:] else "")
            + "): the file is empty, or every record was skipped or filtered out. Fix the file or drop the language"
        )
    empty = tally["empty_output"]
    log.info(
        "Loaded %s from %s: %d examples, per language %s%s%s",
        name,
        where,
        len(examples),
        sizes,
        f", {skipped} bad records skipped" if skipped else "",
        f", {empty} records shipped with an empty output skipped" if empty else "",
    )
    return SFTData(name=name, examples=examples, skipped=skipped, sizes=sizes, skipped_by=dict(tally))


# Keys of a dataset config node that are not loader arguments: the English counterpart (a dataset
# config of its own) and the marker of phase1_data=instruct (no dataset at all).
NOT_LOADER_KEYS = ("counterpart", "use_instruct_checkpoint")


def load_config(node: Mapping[str, Any], key: str = "<group>") -> SFTData:
    """Load a dataset from its config node (a phase1_data / phase2_data option, or a counterpart):
    the one place where a config node becomes loader arguments. `key` is the node's place in the
    config (phase2_data.counterpart), which error messages name."""
    if node.get("use_instruct_checkpoint"):
        raise ConfigError(f"{key}={node.get('name')} has no data: it takes the model's Instruct checkpoint")
    return load_sft(**{k: v for k, v in node.items() if k not in NOT_LOADER_KEYS}, config_key=key)
