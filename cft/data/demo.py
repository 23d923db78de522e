"""Built-in demo data: instruction tasks generated from templates in English and six other languages.

No text is copied from any dataset: the instructions are the project's own templates, the words
are pseudo-words and number words, and the answers follow from the input by a rule.
Two task families let the demo show the paper's effect of dataset similarity:

- family A (`repeat`, `reverse`, `number`): word tasks over a closed vocabulary (repeat or reverse
  one of 14 pseudo-words; write a number word of the prompt's language, 0 to 20, in digits).
  Phase 1 = family A in English (task ability); Phase 2 "similar" = family A in the other
  languages (language ability).
- family B (`add`, `count`, `max`): small arithmetic tasks, the "dissimilar" Phase-2 data.

Every example is a pure function of (task, language, input), so the English counterpart of a
Phase-2 example is the same task and input with the English template.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

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
        "en": "Write the number in digits: {x}",
        "es": "Escribe el número en cifras: {x}",
        "de": "Schreibe die Zahl in Ziffern: {x}",
        "fr": "Écris le nombre en chiffres : {x}",
        "pt": "Escreva o número em algarismos: {x}",
        "it": "Scrivi il numero in cifre: {x}",
        "ja": "数字を算用数字で書いてください: {x}",
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


# Family A's words: a closed vocabulary of 14 two-syllable pseudo-words, one per initial consonant.
# A small model on a CPU learns a closed-vocabulary mapping in minutes, while copying arbitrary
# strings takes it far longer; the demo is about forgetting, not about how hard the skill is.
WORDS = tuple(c + v1 + c2 + v2 for c, v1, c2, v2 in zip(_CONSONANTS, "aeiouaeiouaeio", "lmnrstvkdbgpfz", "oiuaeoiuaeoiua"))


def _pseudo_word(rng: random.Random, syllables: tuple[int, int] = (1, 4)) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(*syllables)))


def make_example(task: str, lang: str, rng: random.Random) -> Example:
    """One example of `task` in `lang`, its input drawn from `rng`."""
    template = TEMPLATES[task][lang]
    if task in ("repeat", "reverse", "count"):
        word = _pseudo_word(rng) if task == "count" else rng.choice(WORDS)
        instruction = template.format(x=word)
        output = {"repeat": f"{word} {word}", "reverse": word[::-1], "count": str(len(word))}[task]
    elif task == "number":
        n = rng.randint(0, 20)
        # The number word is in the prompt's language and the answer in digits: reading the number
        # words of a language is that language's ability, and no language's answer contradicts
        # another's (so Phase 2 on the similar pair does not teach the model to answer in Spanish).
        instruction, output = template.format(x=NUMBER_WORDS[lang].split()[n]), str(n)
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


def make_examples(
    tasks: Sequence[str], languages: Sequence[str], per_task_language: int, seed: int, split: str = "train"
) -> list[Example]:
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


def raw_documents(
    tasks: Sequence[str],
    languages: Sequence[str],
    per_task_language: int,
    seed: int,
    per_document: int = 8,
    parallel: bool = False,
) -> list[str]:
    """Raw text for the demo's phase-0 pre-training: the tasks written as plain text (instruction,
    then answer, no chat template).

    parallel=False: each document holds `per_document` examples drawn from all tasks and languages.
    parallel=True: each document holds one input in every language (the same task and input with
    each language's template), like the parallel text that aligns languages in real pre-training.
    The inputs come from their own random stream (split "pretrain"), apart from the fine-tuning and
    test data's."""
    examples = make_examples(tasks, languages, per_task_language, seed, split="pretrain")
    text = [f"{e.instruction}\n{e.output}" for e in examples]
    rng = random.Random(f"{seed}/pretrain-docs")
    if parallel:
        # make_examples lists languages, then tasks, then inputs: one input's versions are a stride apart.
        stride = len(tasks) * per_task_language
        docs = ["\n\n".join(text[i + k * stride] for k in range(len(languages))) for i in range(stride)]
        rng.shuffle(docs)
        return docs
    rng.shuffle(text)
    return ["\n\n".join(text[i : i + per_document]) for i in range(0, len(text), per_document)]
