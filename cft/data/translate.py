"""Build a translated dataset (the paper's mOpenOrca) with a seq2seq translation model.

The paper made mOpenOrca by selectively translating a 50k OpenOrca subset into the 11 MultiAlpaca
languages; it is not published. This builder translates any dataset config into given languages:

    python -m cft.data.translate phase1_data@source=openorca source.path=/data/openorca.parquet \\
        out_dir=/data/mopenorca translation_model=facebook/nllb-200-distilled-600M languages=[fr,ja]

It writes `<out_dir>/<lang>.jsonl` (one record per source record, with its source `id`), the
source records themselves as `<out_dir>/en.jsonl` (the English counterpart), `translation.meta`
(the settings) and `DONE`. The folder is what `phase2_data=mopenorca phase2_data.path=<out_dir>` reads.

Selective: fenced and inline code, URLs and text without letters (numbers-only answers, formulas)
are copied, not translated; the rest is translated line by line (long lines sentence by sentence),
keeping the whitespace and line structure. Identical segments are translated once.

Resumable: records are appended in chunks, each flushed to disk; a rerun after a kill drops a
torn last line, skips the ids already written and goes on. A rerun with other settings is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from cft.data.records import Example
from cft.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# FLORES-200 codes of NLLB checkpoints; M2M100 checkpoints use "__<code>__" tokens.
NLLB_CODES = {
    "en": "eng_Latn",
    "fr": "fra_Latn",
    "ar": "arb_Arab",
    "de": "deu_Latn",
    "es": "spa_Latn",
    "id": "ind_Latn",
    "ja": "jpn_Jpan",
    "ko": "kor_Hang",
    "pt": "por_Latn",
    "ru": "rus_Cyrl",
    "th": "tha_Thai",
    "vi": "vie_Latn",
    "it": "ita_Latn",
    "zh": "zho_Hans",
    "hi": "hin_Deva",
    "tr": "tur_Latn",
    "el": "ell_Grek",
    "ro": "ron_Latn",
}
TRANSLATED_FIELDS = ("system", "instruction", "input", "output")

_PROTECTED = re.compile(
    r"(```.*?```|~~~.*?~~~"  # fenced code blocks
    r"|`[^`\n]+`"  # inline code
    r"|(?:https?|ftp)://[^\s<>\"')\]]+|www\.[^\s<>\"')\]]+"  # URLs
    r"|[\w.+-]+@[\w-]+\.[\w.-]+)",  # e-mail addresses
    re.DOTALL,
)
_LETTER = re.compile(r"[^\W\d_]")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def needs_translation(text: str) -> bool:
    """False for text with no letters: numbers-only answers, formulas, punctuation, whitespace."""
    return bool(_LETTER.search(text))


def _split_long(line: str, max_chars: int) -> list[str]:
    """Split a line into pieces of at most ~max_chars at sentence ends (keeping the separators)."""
    if len(line) <= max_chars:
        return [line]
    pieces, cur, pos = [], "", 0
    for m in _SENTENCE_END.finditer(line):
        sentence = line[pos : m.end()]
        if cur and len(cur) + len(sentence) > max_chars:
            pieces.append(cur)
            cur = ""
        cur += sentence
        pos = m.end()
    cur += line[pos:]
    if cur:
        pieces.append(cur)
    return pieces


def segments(text: str, max_chars: int = 400) -> list[tuple[str, bool]]:
    """Split text into (piece, translate?) pieces whose concatenation is the text."""
    if not needs_translation(text):
        return [(text, False)]
    out: list[tuple[str, bool]] = []
    pos = 0
    for m in list(_PROTECTED.finditer(text)) + [None]:
        plain = text[pos : m.start()] if m else text[pos:]
        for line in re.split(r"(\n)", plain):
            for piece in _split_long(line, max_chars):
                core = piece.strip()
                if core and needs_translation(core):
                    lead = piece[: len(piece) - len(piece.lstrip())]
                    trail = piece[len(piece.rstrip()) :]
                    out.extend([(lead, False), (core, True), (trail, False)])
                elif piece:
                    out.append((piece, False))
        if m:
            out.append((m.group(0), False))
            pos = m.end()
    return [(s, t) for s, t in out if s]


class Seq2SeqTranslator:
    """Batched translation with a transformers seq2seq model (NLLB, M2M100, or a model whose
    target language is set by a forced first token). Call: (texts, lang) -> translations."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        src_lang: str = "en",
        lang_tokens: Mapping[str, str] | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 256,
        num_beams: int = 1,
    ):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.lang_tokens = dict(lang_tokens or {})
        self.batch_size, self.max_new_tokens, self.num_beams = batch_size, max_new_tokens, num_beams
        self.calls = 0
        src = self.token_for(src_lang, required=False)
        if src and hasattr(tokenizer, "src_lang"):
            tokenizer.src_lang = src

    def token_for(self, lang: str, *, required: bool = True) -> str | None:
        """The tokenizer's language token: lang_tokens[lang], else the NLLB code, "__<lang>__" or lang."""
        candidates = [self.lang_tokens[lang]] if lang in self.lang_tokens else [NLLB_CODES.get(lang), f"__{lang}__", lang]
        unk = self.tokenizer.unk_token_id
        for tok in filter(None, candidates):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if tid is not None and tid != unk and tok in self.tokenizer.get_vocab():
                return tok
        if required:
            raise ConfigError(
                f"the translation tokenizer has no language token for '{lang}' (tried {[c for c in candidates if c]}); "
                f"set lang_tokens.{lang}=<token>"
            )
        return None

    def __call__(self, texts: Sequence[str], lang: str) -> list[str]:
        import torch

        target = self.tokenizer.convert_tokens_to_ids(self.token_for(lang))
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths share a batch
        out: list[str] = [""] * len(texts)
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True).to(device)
            enc.pop("token_type_ids", None)
            with torch.no_grad():
                gen = self.model.generate(
                    **enc,
                    forced_bos_token_id=target,
                    max_new_tokens=self.max_new_tokens,
                    num_beams=self.num_beams,
                    do_sample=False,
                )
            self.calls += 1
            for i, text in zip(idx, self.tokenizer.batch_decode(gen, skip_special_tokens=True)):
                out[i] = text.strip()
        return out


@dataclass
class TranslateStats:
    records: dict[str, int] = field(default_factory=dict)  # written per language (including earlier runs)
    resumed: dict[str, int] = field(default_factory=dict)  # found on disk at the start
    segments_translated: int = 0
    segments_copied: int = 0  # code, URLs, text without letters
    empty_translations: int = 0  # the model returned nothing: the source text was kept


def _read_done(path: Path) -> set[int]:
    """Ids already written; a torn last line (a kill mid-write) is cut off."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s: dropping a torn last line from an interrupted run", path)
        with open(path, "r+b") as f:
            f.truncate(end)
    done = set()
    for lineno, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                done.add(int(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{path}:{lineno}: not a record written by the translation builder ({exc}); use another out_dir"
                ) from None
    return done


def _record(i: int, ex: Example, lang: str) -> dict:
    return {"id": i, "system": ex.system, "instruction": ex.instruction, "input": ex.input, "output": ex.output, "lang": lang}


def translate_examples(
    examples: Sequence[Example],
    out_dir: str | Path,
    languages: Sequence[str],
    translate: Callable[[list[str], str], list[str]],
    *,
    settings: Mapping | None = None,
    fields: Sequence[str] = TRANSLATED_FIELDS,
    chunk_size: int = 64,
    max_chars: int = 400,
    src_lang: str = "en",
) -> TranslateStats:
    """Translate `examples` into each language, appending to <out_dir>/<lang>.jsonl (resumable)."""
    bad = [f for f in fields if f not in TRANSLATED_FIELDS]
    if bad:
        raise ConfigError(f"fields {bad} cannot be translated; choose from {list(TRANSLATED_FIELDS)}")
    if not examples:
        raise DataError("nothing to translate: the source dataset is empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"settings": dict(settings or {}), "n": len(examples), "fields": list(fields), "src_lang": src_lang}
    meta_path = out / "translation.meta"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != json.loads(json.dumps(meta)):
            raise ConfigError(
                f"{out} holds a translation made with other settings ({meta_path}); use another out_dir or delete it"
            )
    else:
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    (out / "DONE").unlink(missing_ok=True)
    src_path = out / f"{src_lang}.jsonl"
    tmp = out / f".{src_lang}.jsonl.tmp"
    tmp.write_text(
        "".join(json.dumps(_record(i, e, src_lang), ensure_ascii=False) + "\n" for i, e in enumerate(examples)), encoding="utf-8"
    )
    os.replace(tmp, src_path)

    stats = TranslateStats()
    for lang in languages:
        if lang == src_lang:
            raise ConfigError(f"languages lists the source language '{lang}'")
        path = out / f"{lang}.jsonl"
        done = _read_done(path)
        stats.resumed[lang] = len(done)
        todo = [i for i in range(len(examples)) if i not in done]
        with (
            open(path, "a", encoding="utf-8") as f,
            tqdm(total=len(examples), initial=len(done), desc=f"translate {lang}") as bar,
        ):
            for start in range(0, len(todo), chunk_size):
                ids = todo[start : start + chunk_size]
                rows = _translate_chunk([examples[i] for i in ids], lang, translate, fields, max_chars, stats)
                f.write(
                    "".join(json.dumps({"id": i, **row, "lang": lang}, ensure_ascii=False) + "\n" for i, row in zip(ids, rows))
                )
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(ids))
        stats.records[lang] = len(done) + len(todo)
    (out / "DONE").write_text(json.dumps(stats.records))
    log.info("translated %d records into %s: %s", len(examples), ", ".join(languages), stats)
    return stats


def _translate_chunk(chunk: Sequence[Example], lang: str, translate, fields, max_chars: int, stats: TranslateStats) -> list[dict]:
    split = [
        {f: segments(getattr(ex, f), max_chars) if f in fields else [(getattr(ex, f), False)] for f in TRANSLATED_FIELDS}
        for ex in chunk
    ]
    unique = sorted({s for rec in split for segs in rec.values() for s, t in segs if t})
    translated = dict(zip(unique, translate(unique, lang))) if unique else {}
    for src, tgt in translated.items():
        if not tgt.strip():
            translated[src] = src
            stats.empty_translations += 1
    rows = []
    for rec in split:
        row = {}
        for f, segs in rec.items():
            row[f] = "".join(translated[s] if t else s for s, t in segs)
            stats.segments_translated += sum(t for _, t in segs)
            stats.segments_copied += sum(not t and bool(s.strip()) for s, t in segs)
        rows.append({k: row[k] for k in ("system", "instruction", "input", "output")})
    return rows
