"""The demo's own evaluation: exact-match accuracy per demo task and language, by greedy generation
on held-out examples (a different random stream from the training data).

English scores are task ability (`ta/<task>`), the other languages language ability
(`la/<task>/<lang>`, and `la/<task>` their mean). Each score carries a bootstrap standard error over
its examples, and its per-example hits (the paired bootstrap of differences reads them)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Annotated

from pydantic import Field

from cft.data.demo import make_examples
from cft.data.format import render_prompt
from cft.evaluation.scores import TaskScores
from cft.evaluation.uncertainty import bootstrap_stderr, propagated
from cft.models.generate import generate


class DemoExactMatch:
    def __init__(
        self,
        tasks: Annotated[
            list[str], Field(min_length=1, description="demo task families (cft.data.demo), e.g. [repeat, reverse, number]")
        ],
        languages: Annotated[list[str], Field(min_length=1, description="languages evaluated (the English one is task ability)")],
        english: Annotated[str, Field(description="the language scored as task ability (ta/<task>)")] = "en",
        per_task_language: Annotated[int, Field(ge=1, description="held-out examples per task and language")] = 40,
        seed: Annotated[int, Field(ge=0, le=2**32 - 1, description="seed of the held-out examples")] = 1234,
        max_new_tokens: Annotated[int, Field(ge=1, description="the longest answer, in tokens")] = 24,
        batch_size: Annotated[int, Field(ge=1, description="prompts per generation batch")] = 64,
        limit: Annotated[
            int | None, Field(ge=1, description="at most this many examples per task and language; null = all")
        ] = None,
    ):
        self.tasks, self.languages, self.english = list(tasks), list(languages), english
        self.n, self.seed, self.max_new_tokens, self.batch_size = per_task_language, seed, max_new_tokens, batch_size
        self.limit = limit
        make_examples(self.tasks, self.languages, 0, seed)  # reject unknown tasks/languages before any model work

    def run(self, model, tokenizer, *, out_dir: Path, sharded: bool = False) -> list[TaskScores]:
        """`sharded`: every rank calls this with the same weights and generates its share of the batches (every rank
        gets every answer: cft.models.generate)."""
        n = min(self.n, self.limit) if self.limit else self.n
        examples = make_examples(self.tasks, self.languages, n, self.seed, split="test")
        outputs = generate(
            model,
            tokenizer,
            [render_prompt(tokenizer, e) for e in examples],
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            desc="eval demo",
            sharded=sharded,
        )
        hits: dict[tuple[str, str], list[bool]] = defaultdict(list)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as f:
            for e, o in zip(examples, outputs):
                ok = o.strip() == e.output.strip()
                hits[(e.task, e.lang)].append(ok)
                f.write(
                    json.dumps(
                        {"task": e.task, "lang": e.lang, "prompt": e.instruction, "target": e.output, "output": o, "correct": ok},
                        ensure_ascii=False,
                    )
                    + "\n"
                )
        acc = {k: sum(v) / len(v) for k, v in hits.items()}
        err = {k: bootstrap_stderr([float(h) for h in v], seed=self.seed) for k, v in hits.items()}
        per_item = {k: {str(i): float(h) for i, h in enumerate(v)} for k, v in hits.items()}
        results = []
        for task in self.tasks:
            en = (task, self.english)
            if self.english in self.languages:
                results.append(TaskScores(task, "ta", acc[en], stderr=err[en], items={"": per_item[en]}))
            others = [lang for lang in self.languages if lang != self.english]
            if others:
                results.append(
                    TaskScores(
                        name=task,
                        ability="la",
                        score=sum(acc[(task, lang)] for lang in others) / len(others),
                        per_language={lang: acc[(task, lang)] for lang in others},
                        stderr=propagated([err[(task, lang)] for lang in others]),
                        language_stderr={lang: err[(task, lang)] for lang in others if err[(task, lang)] is not None},
                        items={lang: per_item[(task, lang)] for lang in others},
                    )
                )
        return results
