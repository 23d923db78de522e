"""The demo's own evaluation: exact-match accuracy per demo task and language, by greedy generation
on held-out examples (a different random stream from the training data).

English scores are task ability (`ta/<task>`), the other languages language ability
(`la/<task>/<lang>`, and `la/<task>` their mean)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from cft.data.demo import make_examples
from cft.data.format import render_prompt
from cft.evaluation import TaskScores
from cft.models.generate import generate


class DemoExactMatch:
    def __init__(
        self,
        tasks: Sequence[str],
        languages: Sequence[str],
        english: str = "en",
        per_task_language: int = 40,
        seed: int = 1234,
        max_new_tokens: int = 24,
        batch_size: int = 64,
    ):
        self.tasks, self.languages, self.english = list(tasks), list(languages), english
        self.n, self.seed, self.max_new_tokens, self.batch_size = per_task_language, seed, max_new_tokens, batch_size
        make_examples(self.tasks, self.languages, 0, seed)  # reject unknown tasks/languages before any model work

    def run(self, model, tokenizer, *, limit: int | None, out_dir: Path) -> list[TaskScores]:
        n = min(self.n, limit) if limit else self.n
        examples = make_examples(self.tasks, self.languages, n, self.seed, split="test")
        outputs = generate(
            model,
            tokenizer,
            [render_prompt(tokenizer, e) for e in examples],
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            desc="eval demo",
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
        results = []
        for task in self.tasks:
            if self.english in self.languages:
                results.append(TaskScores(name=task, ability="ta", score=acc[(task, self.english)]))
            others = {lang: acc[(task, lang)] for lang in self.languages if lang != self.english}
            if others:
                results.append(TaskScores(name=task, ability="la", score=sum(others.values()) / len(others), per_language=others))
        return results
