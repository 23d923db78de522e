"""The instruction record every dataset is turned into, and strict readers for local files.

Three field layouts are read, chosen by the `fields` mapping of a dataset config:

- instruction / input / output records (Alpaca, MultiAlpaca); `input` may be missing, empty or null;
- the same with a system prompt field (OpenOrca: system_prompt + question -> response);
- chat `messages` records: a list of {role, content}; a system turn gives the system prompt, the
  one user turn the instruction and the assistant turn the output (or `output` names another field,
  e.g. the `preferred_output` of preference data).

Field names may be dotted paths into nested objects (`input.messages`). A field holding a list of
chat messages where a string is expected gives the content of its message(s).

Readers validate every record and name the file and line of the first bad one (a Parquet row
number); with `on_bad_record="skip"` they skip bad records and count them instead. Records whose
authors shipped them with an empty response (2 in the Alpaca 5k subset, 1 in MultiAlpaca ja) are
their own case: `skip_empty_output=True` (set by the named datasets' configs) skips and counts them
as `empty_output`, while malformed records still stop the run. Nothing is dropped silently.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cft.errors import DataError


class EmptyOutput(DataError):
    """A well-formed record whose response is empty (shipped so by the dataset's authors)."""


log = logging.getLogger(__name__)

READABLE_SUFFIXES = (".json", ".jsonl", ".parquet")


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


DEFAULT_FIELDS = {
    "instruction": "instruction",
    "input": "input",
    "output": "output",
    "system": None,
    "messages": None,
    "lang": "lang",
}

_MISSING = object()
# Bytes that are not UTF-8 are decoded with surrogateescape, so they show up as lone surrogates in
# exactly the records that hold them (which can then be skipped one by one).
_BAD_TEXT = re.compile("[\ud800-\udfff]")


def _iter_json_array(text: str, path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ("line (record k)", element) for each element of a top-level JSON array: the record
    number makes the place findable in a one-line file too."""
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
    record = 0
    while True:
        record += 1
        line = text.count("\n", 0, i) + 1
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{text.count(chr(10), 0, exc.pos) + 1}: invalid JSON ({exc.msg})") from None
        yield f"{line} (record {record})", value
        i = skip_ws(i)
        if i < n and text[i] == ",":
            i = skip_ws(i + 1)
            continue
        if i < n and text[i] == "]":
            return
        raise DataError(f"{path}:{text.count(chr(10), 0, i) + 1}: invalid JSON (expected ',' or ']')")


def iter_raw_records(path: str | Path, *, on_bad_json: str = "error") -> Iterator[tuple[int | str, Any]]:
    """Yield (line number, parsed JSON value) for a .json array, a .jsonl file or a .parquet file
    (whose "line" is its row number). Invalid JSON lines raise; with on_bad_json="skip" a bad
    JSON Lines line yields (line, DataError) instead, so the caller can count it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if path.suffix == ".parquet":
        yield from _iter_parquet(path)
        return
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        yield from _iter_json_array(text, path)
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            err = DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})")
            if on_bad_json == "skip":
                yield lineno, err
                continue
            raise err from None


def head_records(path: str | Path, n: int) -> Iterator[tuple[int | str, Any]]:
    """The first `n` of `iter_raw_records(path)`, without reading the rest of a .jsonl file (a .json array is
    parsed whole; a .parquet file is read by batches): what the preflight samples of a large downloaded file."""
    path = Path(path)
    if path.suffix != ".jsonl":
        yield from itertools.islice(iter_raw_records(path), n)
        return
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, 1):
            line = line.lstrip("\ufeff") if lineno == 1 else line
            if not line.strip():
                continue
            if n <= 0:
                return
            n -= 1
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError subclasses for unreadable files
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    row = 0
    for batch in table.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield f"row {row}", record


def _lookup(raw: Mapping[str, Any], name: str) -> Any:
    value: Any = raw
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _check_messages(value: Any, name: str, where: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise DataError(
            f"{where}: field '{name}' must be a list of chat messages ({{role, content}}), got {type(value).__name__}"
        )
    for m in value:
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field '{name}': every message needs a string 'role' and 'content', got {m!r:.80}")
    return value


def _as_text(value: Any, name: str, role: str, where: str, *, required: bool) -> str:
    """A string field; a list of chat messages gives its (assistant, for outputs) content."""
    if value is None and not required:
        return ""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        msgs = _check_messages(value, name, where)
        if role == "output":
            msgs = [m for m in msgs if m["role"] == "assistant"] or msgs
        if len(msgs) != 1:
            raise DataError(f"{where}: field '{name}' holds {len(msgs)} messages; expected one")
        value = msgs[0]["content"]
    if not isinstance(value, str):
        kind = "a string" if required else "a string or null"
        raise DataError(f"{where}: field '{name}' must be {kind}, got {type(value).__name__}")
    return value


def _from_messages(raw: dict, name: str, where: str) -> dict[str, str]:
    value = _lookup(raw, name)
    if value is _MISSING:
        raise DataError(f"{where}: missing field '{name}' (messages)")
    msgs = _check_messages(value, name, where)
    users = [m["content"] for m in msgs if m["role"] == "user"]
    if len(users) != 1:
        raise DataError(
            f"{where}: field '{name}' has {len(users)} user turns; one instruction per record is expected (multi-turn chats are not supported)"
        )
    out: dict[str, str] = {"instruction": users[0], "system": "\n\n".join(m["content"] for m in msgs if m["role"] == "system")}
    assistants = [m["content"] for m in msgs if m["role"] == "assistant"]
    if len(assistants) > 1:
        raise DataError(f"{where}: field '{name}' has {len(assistants)} assistant turns; expected at most one")
    if assistants:
        out["output"] = assistants[0]
    return out


def to_example(raw: Any, fields: Mapping[str, str | None], *, lang: str, where: str) -> Example:
    """Validate one raw record and map its fields; `where` is "file:line" for the message."""
    if isinstance(raw, DataError):
        raise raw
    if not isinstance(raw, dict):
        raise DataError(f"{where}: record must be a JSON object, got {type(raw).__name__}")
    fields = {**DEFAULT_FIELDS, **fields}
    values: dict[str, str] = {}
    roles = ("instruction", "output", "input", "system")
    if fields.get("messages"):
        values = _from_messages(raw, fields["messages"], where)
        roles = () if "output" in values else ("output",)
    for role in roles:
        name = fields.get(role)
        if not name:
            continue
        value = _lookup(raw, name)
        required = role in ("instruction", "output")
        if value is _MISSING:
            if required:
                raise DataError(f"{where}: missing field '{name}' ({role})")
            value = None  # input / system may be missing or null
        values[role] = _as_text(value, name, role, where, required=required)
    for role in ("instruction", "output"):
        if role not in values:
            raise DataError(f"{where}: no {role} (set fields.{role} or fields.messages)")
        if not values[role].strip():
            error = EmptyOutput if role == "output" and values["instruction"].strip() else DataError
            raise error(f"{where}: field '{fields.get(role) or fields.get('messages')}' ({role}) is empty")
    for role, text in values.items():
        if _BAD_TEXT.search(text):
            raise DataError(f"{where}: field '{fields.get(role) or fields.get('messages')}' ({role}) is not valid UTF-8 text")
    rec_lang = _lookup(raw, fields["lang"]) if fields.get("lang") else _MISSING
    task = raw.get("task", "")
    return Example(
        lang=rec_lang if isinstance(rec_lang, str) and rec_lang else lang, task=task if isinstance(task, str) else "", **values
    )


def read_examples(
    path: str | Path,
    *,
    fields: Mapping[str, str | None] | None = None,
    lang: str = "en",
    on_bad_record: str = "error",
    skip_empty_output: bool = False,
    config_key: str = "<group>",
    tally: Counter | None = None,
) -> tuple[list[Example], int]:
    """Read a .json/.jsonl/.parquet file of instruction records. Returns (examples, number of skipped bad
    records); `tally` (if given) also counts the skipped records by reason (bad_record, empty_output)."""
    if on_bad_record not in ("error", "skip"):
        raise DataError(f"on_bad_record must be 'error' or 'skip', not {on_bad_record!r}")
    fields = {**DEFAULT_FIELDS, **(fields or {})}
    located = ((f"{path}:{lineno}", raw) for lineno, raw in iter_raw_records(path, on_bad_json=on_bad_record))
    counts = Counter()
    examples, skipped = convert_records(
        located,
        fields,
        lang=lang,
        on_bad_record=on_bad_record,
        skip_empty_output=skip_empty_output,
        config_key=config_key,
        tally=counts,
    )
    if skipped:
        log.warning("%s: skipped %d bad record(s)", path, skipped)
    if counts["empty_output"]:
        log.info("%s: skipped %d record(s) shipped with an empty output", path, counts["empty_output"])
    if tally is not None:
        tally.update(counts)
    return examples, skipped


def convert_records(
    located: Iterable[tuple[str, Any]],
    fields: Mapping[str, Any],
    *,
    lang: str,
    on_bad_record: str,
    skip_empty_output: bool = False,
    config_key: str = "<group>",
    tally: Counter | None = None,
) -> tuple[list[Example], int]:
    """(where, raw record) pairs -> Examples; a bad record stops with its place, or is skipped and counted.
    Returns (examples, skipped bad records); `tally` counts skips by reason. `config_key` is the config
    node the records come from (e.g. phase2_data.counterpart), so the message names the key to set."""
    examples: list[Example] = []
    skipped = 0
    for where, raw in located:
        try:
            examples.append(to_example(raw, fields, lang=lang, where=where))
        except EmptyOutput as exc:
            if skip_empty_output:
                if tally is not None:
                    tally["empty_output"] += 1
                continue
            if on_bad_record == "error":
                raise DataError(
                    f"{exc} (the dataset's authors shipped some records so: set {config_key}.skip_empty_output=true to skip "
                    f"and count them, or {config_key}.on_bad_record=skip to skip every bad record)"
                ) from None
            skipped += 1
            if tally is not None:
                tally["bad_record"] += 1
            log.warning("skipping bad record: %s", exc)
        except DataError as exc:
            if on_bad_record == "error":
                raise DataError(f"{exc} (to skip such records and count them, set {config_key}.on_bad_record=skip)") from None
            skipped += 1
            if tally is not None:
                tally["bad_record"] += 1
            log.warning("skipping bad record: %s", exc)
    return examples, skipped
