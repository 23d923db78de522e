"""Loading an instruction dataset from its config: the built-in demo generator, a local file or
folder (`path`), or a hub id (`source`). Returns validated `Example`s and per-language sizes."""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from cft.data import demo as demo_data
from cft.data.records import DEFAULT_FIELDS, Example, read_examples, to_example
from cft.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".json", ".jsonl")


@dataclass
class SFTData:
    name: str
    examples: list[Example]
    skipped: int = 0
    sizes: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)


def _read_local(path: Path, languages: Sequence[str] | None, fields, on_bad_record) -> tuple[list[Example], int]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_SUFFIXES)
        by_lang = {p.stem: p for p in files}
        wanted = list(languages) if languages else sorted(by_lang)
        missing = [lang for lang in wanted if lang not in by_lang]
        if missing:
            raise DataError(f"{path}: no file for language(s) {missing} (found: {sorted(by_lang) or 'none'})")
        out, skipped = [], 0
        for lang in wanted:
            ex, sk = read_examples(by_lang[lang], fields=fields, lang=lang, on_bad_record=on_bad_record)
            out.extend(ex)
            skipped += sk
        return out, skipped
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    lang = languages[0] if languages and len(languages) == 1 else "en"
    return read_examples(path, fields=fields, lang=lang, on_bad_record=on_bad_record)


def _read_hub(source: str, split: str, languages, fields, on_bad_record) -> tuple[list[Example], int]:
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as exc:  # the hub client raises many types; all mean "not reachable or not found"
        raise DataError(
            f"could not load dataset '{source}' from the hub ({type(exc).__name__}: {exc}). "
            "Offline? Download it and pass a local copy with <group>.path=/path/to/file_or_folder"
        ) from exc
    out, skipped = [], 0
    for i, raw in enumerate(ds):
        try:
            out.append(to_example(dict(raw), fields, lang=raw.get("lang", "en") if isinstance(raw, dict) else "en", where=f"{source}[{split}] row {i}"))
        except DataError:
            if on_bad_record == "error":
                raise
            skipped += 1
    if languages:
        out = [e for e in out if e.lang in languages]
    return out, skipped


def load_sft(
    *,
    name: str,
    source: str | None = None,
    path: str | None = None,
    languages: Sequence[str] | None = None,
    max_examples: int | None = None,
    max_per_language: int | None = None,
    seed: int = 0,
    split: str = "train",
    fields: Mapping[str, Any] | None = None,
    on_bad_record: str = "error",
    demo: Mapping[str, Any] | None = None,
) -> SFTData:
    """Load, validate and subsample one instruction dataset. A local `path` wins over `source`."""
    languages = list(languages) if languages else None
    fields = {**DEFAULT_FIELDS, **(dict(fields) if fields else {})}
    if path:
        examples, skipped = _read_local(Path(path).expanduser(), languages, fields, on_bad_record)
        where = str(path)
    elif source == "demo":
        spec = dict(demo or {})
        examples = demo_data.make_examples(
            spec.get("tasks", demo_data.FAMILIES["A"]), languages or ["en"], int(spec.get("per_task_language", 100)), seed, split
        )
        skipped, where = 0, "built-in demo data"
    elif source:
        examples, skipped = _read_hub(source, split, languages, fields, on_bad_record)
        where = source
    else:
        raise ConfigError(f"dataset '{name}' has neither a source nor a path")
    if max_per_language:
        rng = random.Random(seed)
        by_lang: dict[str, list[Example]] = {}
        for e in examples:
            by_lang.setdefault(e.lang, []).append(e)
        examples = [e for lang in by_lang for e in (rng.sample(by_lang[lang], max_per_language) if len(by_lang[lang]) > max_per_language else by_lang[lang])]
    if max_examples and len(examples) > max_examples:
        examples = random.Random(seed).sample(examples, max_examples)
    if not examples:
        raise DataError(f"{where}: dataset '{name}' is empty" + (f" after filtering to languages {languages}" if languages else ""))
    sizes = dict(sorted(Counter(e.lang for e in examples).items()))
    log.info("Loaded %s from %s: %d examples %s%s", name, where, len(examples), sizes, f", {skipped} bad records skipped" if skipped else "")
    return SFTData(name=name, examples=examples, skipped=skipped, sizes=sizes)
