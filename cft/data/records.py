"""The instruction record every dataset is turned into, and strict readers for local files.

Readers validate every record and name the file and line of the first bad one; with
`on_bad_record="skip"` they skip bad records and count them instead. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from cft.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Example:
    instruction: str
    output: str
    input: str = ""
    system: str = ""
    lang: str = "en"
    task: str = ""  # a sub-task name where the dataset has them (the demo's tasks)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


DEFAULT_FIELDS = {"instruction": "instruction", "input": "input", "output": "output", "system": None}


def _iter_json_array(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line, element) for each element of a top-level JSON array, keeping line numbers."""
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    n = len(text)

    def skip_ws(j: int) -> int:
        while j < n and text[j] in " \t\r\n":
            j += 1
        return j

    i = skip_ws(i)
    if i < n and text[i] == "]":
        return
    while True:
        line = text.count("\n", 0, i) + 1
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{text.count(chr(10), 0, exc.pos) + 1}: invalid JSON ({exc.msg})") from None
        yield line, value
        i = skip_ws(i)
        if i < n and text[i] == ",":
            i = skip_ws(i + 1)
            continue
        if i < n and text[i] == "]":
            return
        raise DataError(f"{path}:{text.count(chr(10), 0, i) + 1}: invalid JSON (expected ',' or ']')")


def iter_raw_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed JSON value) for a .json array or a .jsonl file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: text is not valid UTF-8 ({exc.reason})") from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        yield from _iter_json_array(text, path)
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None


def to_example(raw: Any, fields: Mapping[str, str | None], *, lang: str, where: str) -> Example:
    """Validate one raw record and map its fields; `where` is "file:line" for the message."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: record must be a JSON object, got {type(raw).__name__}")
    values: dict[str, str] = {}
    for role in ("instruction", "output", "input", "system"):
        name = fields.get(role)
        if not name:
            continue
        value = raw.get(name)
        if role in ("instruction", "output"):
            if name not in raw:
                raise DataError(f"{where}: missing field '{name}' ({role})")
            if not isinstance(value, str):
                raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
            if not value.strip():
                raise DataError(f"{where}: field '{name}' ({role}) is empty")
        elif value is None:
            value = ""  # input / system may be missing or null
        elif not isinstance(value, str):
            raise DataError(f"{where}: field '{name}' must be a string or null, got {type(value).__name__}")
        values[role] = value
    return Example(lang=raw.get("lang", lang) if isinstance(raw.get("lang"), str) else lang, task=str(raw.get("task", "")), **values)


def read_examples(
    path: str | Path,
    *,
    fields: Mapping[str, str | None] | None = None,
    lang: str = "en",
    on_bad_record: str = "error",
) -> tuple[list[Example], int]:
    """Read a .json/.jsonl file of instruction records. Returns (examples, number of skipped bad records)."""
    if on_bad_record not in ("error", "skip"):
        raise DataError(f"on_bad_record must be 'error' or 'skip', not {on_bad_record!r}")
    fields = {**DEFAULT_FIELDS, **(fields or {})}
    examples: list[Example] = []
    skipped = 0
    for lineno, raw in iter_raw_records(path):
        try:
            examples.append(to_example(raw, fields, lang=lang, where=f"{path}:{lineno}"))
        except DataError as exc:
            if on_bad_record == "error":
                raise
            skipped += 1
            log.warning("skipping bad record: %s", exc)
    return examples, skipped
