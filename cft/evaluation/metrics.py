"""Metrics the project computes itself, where lm-eval's or the usual library's fall short.

- ROUGE-L for XLSUM in any script. `rouge_score`'s default tokenizer keeps only ASCII letters and
  digits, so an Arabic, Hindi or Chinese summary scores 0 against anything. `rouge_tokens` keeps
  every letter, mark and digit (so Devanagari vowel signs and Arabic diacritics stay inside their
  word), and splits scripts written without spaces (Chinese, Japanese kana, Thai, Lao, Khmer,
  Myanmar) into one token per character, as the XL-Sum authors did for those languages.
  The LCS itself is `rouge_score`'s.
- Extractive-QA F1 and exact match (XQuAD, MLQA) with the SQuAD normalisation: case-folded,
  punctuation (all Unicode P* categories) and articles removed. Articles follow the MLQA
  evaluation script for its languages (English ones otherwise, as SQuAD's script); texts in
  scripts without spaces are compared character by character, as MLQA does for Chinese.
  (lm-eval's built-in xquad imports `transformers.data.metrics.squad_metrics`, which
  transformers 5 removed, so it cannot be used as is.)
"""

from __future__ import annotations

import re
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
# Extractive QA (SQuAD / XQuAD / MLQA)

_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "ar": r"(?:^|\s)ال",
}


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P") or ch in "$+<=>^`|~"


def qa_tokens(text: str, lang: str | None = None) -> list[str]:
    """SQuAD-normalised answer tokens: lower case, no punctuation, no articles.

    `lang` picks the articles (MLQA's lists; English for None or a language without a list);
    scripts without spaces are split into characters.
    """
    text = text.lower()
    text = "".join(" " if _is_punct(ch) else ch for ch in text)
    pattern = _ARTICLES.get(lang or "en")
    if pattern:
        text = re.sub(pattern, " ", text)
    tokens: list[str] = []
    for chunk in text.split():
        word = ""
        for ch in chunk:
            if is_no_space_char(ch):
                if word:
                    tokens.append(word)
                    word = ""
                tokens.append(ch)
            else:
                word += ch
        if word:
            tokens.append(word)
    return tokens


def qa_exact(prediction: str, references: str | Sequence[str], lang: str | None = None) -> float:
    """1.0 when the normalised prediction equals a normalised reference, else 0.0."""
    refs = [references] if isinstance(references, str) else list(references)
    pred = qa_tokens(prediction, lang)
    return float(any(pred == qa_tokens(r, lang) for r in refs))


def qa_f1(prediction: str, references: str | Sequence[str], lang: str | None = None) -> float:
    """Token-overlap F1 in [0, 1], the best over the references (SQuAD)."""
    refs = [references] if isinstance(references, str) else list(references)
    pred = qa_tokens(prediction, lang)
    best = 0.0
    for ref in refs:
        gold = qa_tokens(ref, lang)
        if not pred or not gold:
            # SQuAD v2 convention: two empty answers agree, one empty one does not.
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common == 0:
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
