"""Built-in demo data: instruction tasks generated from templates in English and six other languages.

No text is copied from any dataset: the instructions are the project's own templates, the words
are random pseudo-words, and the answers follow from the input by a rule (or are number words).
Two task families let the demo show the paper's effect of dataset similarity:

- family A (`repeat`, `reverse`, `number`): word tasks. Phase 1 = family A in English (task
  ability); Phase 2 "similar" = family A in the other languages (language ability).
- family B (`add`, `count`, `max`): small arithmetic tasks, the "dissimilar" Phase-2 data.

Every example is a pure function of (task, language, input), so the English counterpart of a
Phase-2 example is the same task and input with the English template.
"""

from __future__ import annotations

import random
from typing import Iterable, Sequence

from cft.data.records import Example
from cft.errors import ConfigError

LANGUAGES = ("en", "es", "de", "fr", "pt", "it", "ja")
FAMILIES = {"A": ("repeat", "reverse", "number"), "B": ("add", "count", "max")}

NUMBER_WORDS = {
    "en": "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty",
    "es": "cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince dieciséis diecisiete dieciocho diecinueve veinte",
    "de": "null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn fünfzehn sechzehn siebzehn achtzehn neunzehn zwanzig",
    "fr": "zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize dix-sept dix-huit dix-neuf vingt",
    "pt": "zero um dois três quatro cinco seis sete oito nove dez onze doze treze catorze quinze dezesseis dezessete dezoito dezenove vinte",
    "it": "zero uno due tre quattro cinque sei sette otto nove dieci undici dodici tredici quattordici quindici sedici diciassette diciotto diciannove venti",
    "ja": "零 一 二 三 四 五 六 七 八 九 十 十一 十二 十三 十四 十五 十六 十七 十八 十九 二十",
}

TEMPLATES = {
    "repeat": {
        "en": "Repeat the word twice: {x}",
        "es": "Repite la palabra dos veces: {x}",
        "de": "Wiederhole das Wort zweimal: {x}",
        "fr": "Répète le mot deux fois : {x}",
        "pt": "Repita a palavra duas vezes: {x}",
        "it": "Ripeti la parola due volte: {x}",
        "ja": "単語を二回繰り返してください: {x}",
    },
    "reverse": {
        "en": "Write the word backwards: {x}",
        "es": "Escribe la palabra al revés: {x}",
        "de": "Schreibe das Wort rückwärts: {x}",
        "fr": "Écris le mot à l'envers : {x}",
        "pt": "Escreva a palavra de trás para frente: {x}",
        "it": "Scrivi la parola al contrario: {x}",
        "ja": "単語を逆から書いてください: {x}",
    },
    "number": {
        "en": "Write the number in words: {x}",
        "es": "Escribe el número con letras: {x}",
        "de": "Schreibe die Zahl in Worten: {x}",
        "fr": "Écris le nombre en lettres : {x}",
        "pt": "Escreva o número por extenso: {x}",
        "it": "Scrivi il numero in lettere: {x}",
        "ja": "数字を漢字で書いてください: {x}",
    },
    "add": {
        "en": "What is {a} plus {b}?",
        "es": "¿Cuánto es {a} más {b}?",
        "de": "Was ist {a} plus {b}?",
        "fr": "Combien font {a} plus {b} ?",
        "pt": "Quanto é {a} mais {b}?",
        "it": "Quanto fa {a} più {b}?",
        "ja": "{a} たす {b} はいくつですか?",
    },
    "count": {
        "en": "How many letters does this word have: {x}",
        "es": "¿Cuántas letras tiene esta palabra?: {x}",
        "de": "Wie viele Buchstaben hat dieses Wort: {x}",
        "fr": "Combien de lettres a ce mot : {x}",
        "pt": "Quantas letras tem esta palavra: {x}",
        "it": "Quante lettere ha questa parola: {x}",
        "ja": "この単語は何文字ですか: {x}",
    },
    "max": {
        "en": "Which number is the largest: {x}",
        "es": "¿Qué número es el mayor?: {x}",
        "de": "Welche Zahl ist die größte: {x}",
        "fr": "Quel nombre est le plus grand : {x}",
        "pt": "Qual número é o maior: {x}",
        "it": "Quale numero è il più grande: {x}",
        "ja": "一番大きい数はどれですか: {x}",
    },
}

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3)))


def make_example(task: str, lang: str, rng: random.Random) -> Example:
    """One example of `task` in `lang`, its input drawn from `rng`."""
    template = TEMPLATES[task][lang]
    if task in ("repeat", "reverse", "count"):
        word = _pseudo_word(rng)
        instruction = template.format(x=word)
        output = {"repeat": f"{word} {word}", "reverse": word[::-1], "count": str(len(word))}[task]
    elif task == "number":
        n = rng.randint(0, 20)
        instruction, output = template.format(x=n), NUMBER_WORDS[lang].split()[n]
    elif task == "add":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        instruction, output = template.format(a=a, b=b), str(a + b)
    else:  # max
        xs = rng.sample(range(10, 100), 3)
        instruction, output = template.format(x=", ".join(map(str, xs))), str(max(xs))
    return Example(instruction=instruction, output=output, lang=lang, task=task)


def check(tasks: Iterable[str], languages: Iterable[str]) -> None:
    for t in tasks:
        if t not in TEMPLATES:
            raise ConfigError(f"unknown demo task {t!r}; known: {', '.join(TEMPLATES)}")
    for lang in languages:
        if lang not in LANGUAGES:
            raise ConfigError(f"unknown demo language {lang!r}; known: {', '.join(LANGUAGES)}")


def make_examples(tasks: Sequence[str], languages: Sequence[str], per_task_language: int, seed: int, split: str = "train") -> list[Example]:
    """`per_task_language` examples of each task in each language.

    The split changes the random stream, so train and test draw different inputs; a language's
    examples use the same inputs as English ones for the same seed (parallel data, as MultiAlpaca
    is a translation of Alpaca)."""
    check(tasks, languages)
    out = []
    for lang in languages:
        for task in tasks:
            rng = random.Random(f"{seed}/{split}/{task}")
            out.extend(make_example(task, lang, rng) for _ in range(per_task_language))
    return out
