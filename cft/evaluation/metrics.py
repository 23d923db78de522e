"""Metrics the project computes itself, where lm-eval's or the usual library's fall short.

- ROUGE-L for XLSUM in any script. `rouge_score`'s default tokenizer keeps only ASCII letters and
  digits, so an Arabic, Hindi or Chinese summary scores 0 against anything. `rouge_tokens` keeps
  every letter, mark and digit (so Devanagari vowel signs and Arabic diacritics stay inside their
  word), and splits scripts written without spaces (Chinese, Japanese kana, Thai, Lao, Khmer,
  Myanmar) into one token per character, as the XL-Sum authors did for those languages.
  The LCS itself is `rouge_score`'s.
- Extractive-QA F1 and exact match as each benchmark's official script computes them: SQuAD v1.1's
  normalisation and whitespace tokens for XQuAD (its official scorer, in every language, Thai
  included), MLQA's script for MLQA (all Unicode punctuation, its articles per language, Chinese
  split into characters). An answer cut inside a character (a U+FFFD replacement character, a
  dangling combining mark, a Thai leading vowel at its end) scores 0.
  (lm-eval's built-in xquad imports `transformers.data.metrics.squad_metrics`, which
  transformers 5 removed, so it cannot be used as is.)
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

# Scripts written without spaces between words: one token per character.
_NO_SPACE_RANGES = (
    (0x2E80, 0x2FDF),  # CJK radicals
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x2FA1F),  # CJK extensions B-F, compatibility supplement
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
)


def is_no_space_char(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _NO_SPACE_RANGES)


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased word tokens of any script; characters of scripts without spaces are tokens alone.

    Punctuation and symbols separate tokens and are dropped.
    """
    tokens: list[str] = []
    word: list[str] = []
    for ch in unicodedata.normalize("NFKC", text).casefold():
        if is_no_space_char(ch):
            if word:
                tokens.append("".join(word))
                word = []
            if unicodedata.category(ch)[0] in "LMN":
                tokens.append(ch)
        elif unicodedata.category(ch)[0] in "LMN":
            word.append(ch)
        elif word:
            tokens.append("".join(word))
            word = []
    if word:
        tokens.append("".join(word))
    return tokens


class _RougeTokenizer:
    """The tokenizer interface `rouge_score` expects."""

    def tokenize(self, text: str) -> list[str]:
        return rouge_tokens(text)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_RougeTokenizer())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1] of one prediction against one reference, in any script."""
    if not rouge_tokens(reference) and not rouge_tokens(prediction):
        return 0.0
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


# ---------------------------------------------------------------------------------------------
# Extractive QA (SQuAD / XQuAD / MLQA), as the benchmarks' official scripts score it

QA_STYLES = ("squad", "mlqa")
# SQuAD v1.1's evaluate script (XQuAD's official scorer, every language): ASCII punctuation, English
# articles, whitespace tokens (so Thai and Chinese answers are compared as whole space-separated chunks).
_SQUAD_PUNCT = frozenset(string.punctuation)
_SQUAD_ARTICLES = r"\b(a|an|the)\b"
# MLQA's mlqa_evaluation_v1.py: all Unicode punctuation, its articles per language, whitespace tokens
# except Chinese (mixed segmentation: each CJK character and punctuation mark alone).
_MLQA_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": "\\sال^|ال",  # the script's pattern as written: every ال goes
}
_MLQA_MIXED = ("zh",)
_CJK = re.compile("[\u4e00-\u9fa5]")
# Leading vowels of Thai and Lao: written before the consonant they follow in speech, so an answer
# that ends with one was cut inside a syllable.
_LEADING_VOWELS = frozenset(chr(c) for c in (*range(0x0E40, 0x0E45), *range(0x0EC0, 0x0EC5)))


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P") or ch in _SQUAD_PUNCT


def cut_inside_character(text: str) -> bool:
    """An answer cut inside a character: a replacement character (bytes decoded mid-character), a
    combining mark with nothing to combine with at its start, or a Thai/Lao leading vowel at its end."""
    stripped = text.strip()
    if not stripped:
        return False
    return "\ufffd" in stripped or unicodedata.category(stripped[0]).startswith("M") or stripped[-1] in _LEADING_VOWELS


def _mlqa_segments(text: str) -> list[str]:
    out, chunk = [], ""
    for ch in text:
        if _CJK.match(ch) or _is_punct(ch):
            out.extend(chunk.split())
            chunk = ""
            out.append(ch)
        else:
            chunk += ch
    return out + chunk.split()


def qa_tokens(text: str, lang: str | None = None, style: str = "squad") -> list[str]:
    """Normalised answer tokens, as the official script of `style` makes them.

    squad (XQuAD; SQuAD v1.1's evaluate): lower case, ASCII punctuation and English articles removed,
    whitespace tokens, whatever the language. mlqa (MLQA's evaluation script): lower case, every
    Unicode punctuation mark and the language's articles removed, whitespace tokens, Chinese split
    into characters.
    """
    if style not in QA_STYLES:
        raise ValueError(f"style must be one of {QA_STYLES}, not {style!r}")
    text = text.lower()
    if style == "squad":
        text = "".join(ch for ch in text if ch not in _SQUAD_PUNCT)
        return re.sub(_SQUAD_ARTICLES, " ", text).split()
    text = "".join(ch for ch in text if not _is_punct(ch))
    pattern = _MLQA_ARTICLES.get(lang or "en")
    if pattern:
        text = re.sub(pattern, " ", text)
    tokens = _mlqa_segments(text) if lang in _MLQA_MIXED else text.split()
    return [t for t in tokens if t.strip()]


def qa_exact(prediction: str, references: str | Sequence[str], lang: str | None = None, style: str = "squad") -> float:
    """1.0 when the normalised prediction equals a normalised reference, else 0.0 (0 for an answer cut inside a character)."""
    refs = [references] if isinstance(references, str) else list(references)
    if cut_inside_character(prediction):
        return 0.0
    pred = qa_tokens(prediction, lang, style)
    return float(any(pred == qa_tokens(r, lang, style) for r in refs))


def qa_f1(prediction: str, references: str | Sequence[str], lang: str | None = None, style: str = "squad") -> float:
    """Token-overlap F1 in [0, 1], the best over the references (the official scripts); 0 for an
    answer cut inside a character."""
    refs = [references] if isinstance(references, str) else list(references)
    if cut_inside_character(prediction):
        return 0.0
    pred = qa_tokens(prediction, lang, style)
    best = 0.0
    for ref in refs:
        gold = qa_tokens(ref, lang, style)
        common = sum((Counter(pred) & Counter(gold)).values())
        if common == 0:  # SQuAD v1.1 and MLQA: no overlap (an empty answer included) scores 0
            continue
        precision, recall = common / len(pred), common / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def mean(values: Iterable[float]) -> float:
    """Plain mean; the paper's TA and LA averages weight every task (and language) equally."""
    values = list(values)
    if not values:
        raise ValueError("mean of no values")
    return sum(values) / len(values)
