"""AlpacaEval (Li et al., 2023): the model's answers to the 805 AlpacaEval instructions, judged
pairwise against the reference answers by the `alpaca_eval` package.

The answers are generated (greedy, the model's chat template) only when they will be judged: with
an annotator that can run, or with `save_outputs: true` (e.g. `eval.tasks.alpaca_eval.save_outputs=true`),
which saves them in alpaca_eval's format, `<out_dir>/model_outputs.json`, next to
`reference_outputs.json`, to judge later with
`alpaca_eval --model_outputs ... --reference_outputs ... --annotators_config ...`. Without either,
nothing is generated (no model time) and the score is recorded as not computed.
The win rate is computed only when an annotator is configured: an OpenAI judge
(e.g. `alpaca_eval_gpt4_turbo_fn`, needs OPENAI_API_KEY) or a local judge (the path of an
alpaca_eval annotator config folder, e.g. one using `huggingface_local_completions`). Without an
annotator, without the `alpaca_eval` package (`pip install alpaca-eval`; not a dependency of cft
because it pins openai and other packages), or when judging fails, the score is recorded as not
computed, with the reason, never as 0.

Data: `<data_dir>/alpaca_eval/alpaca_eval.jsonl` (one JSON object per line with `instruction`,
`output` = the reference answer, `generator`, `dataset`), or, with no data_dir, the hub file
`alpaca_eval.json` of the tatsu-lab/alpaca_eval dataset.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from cft.data.format import render_prompt
from cft.data.records import Example
from cft.errors import ConfigError, DataError
from cft.evaluation.harness import fit_generation, model_context
from cft.evaluation.scores import TaskScores
from cft.models.generate import generate

log = logging.getLogger(__name__)

HUB_REPO = "tatsu-lab/alpaca_eval"
HUB_FILE = "alpaca_eval.json"
LOCAL_FILE = Path("alpaca_eval") / "alpaca_eval.jsonl"


def read_alpaca_eval(path: str | Path) -> list[dict]:
    """Records of an AlpacaEval file (JSON list or JSON Lines); DataError with file:line on a bad one."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    records: list[dict] = []
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
        numbered = list(enumerate(records, 1))
    else:
        numbered = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not valid JSON ({exc})") from exc
    for where, record in numbered:
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("instruction"), str)
            or not isinstance(record.get("output"), str)
        ):
            raise DataError(f"{path}:{where}: an AlpacaEval record needs string fields 'instruction' and 'output'")
    return [r for _, r in numbered]


class AlpacaEvalTask:
    """AlpacaEval as an evaluation task (see the module docstring)."""

    def __init__(
        self,
        annotator: Annotated[
            str | None,
            Field(description="alpaca_eval annotator config (a name, or a local judge folder); null = generate and save only"),
        ] = None,
        data_dir: Annotated[
            str | Path | None, Field(description="folder in the layout of the shared data folder; null = the hub file")
        ] = None,
        ability: Annotated[Literal["ta", "la"], Field(description="ta (the paper's) or la")] = "ta",
        name: Annotated[str, Field(description="the task's name in metric keys")] = "alpaca_eval",
        max_new_tokens: Annotated[
            int, Field(ge=1, description="the longest answer, in tokens (clipped to the model's context)")
        ] = 1024,
        batch_size: Annotated[int, Field(ge=1, description="prompts per generation batch (cft.models.generate)")] = 16,
        generator: Annotated[str, Field(description="the model's name in alpaca_eval's leaderboard")] = "cft_model",
        metric: Annotated[
            Literal["win_rate", "length_controlled_winrate"],
            Field(description="the headline metric (when alpaca_eval computes it)"),
        ] = "win_rate",
        limit: Annotated[int | None, Field(ge=1, description="the first N of the 805 instructions; null = all")] = None,
        save_outputs: Annotated[
            bool, Field(description="generate and save the answers for later judging even without a judge here")
        ] = False,
    ):
        if ability not in ("ta", "la"):
            raise ConfigError(f"eval task {name}: ability must be 'ta' or 'la', not {ability!r}")
        if metric not in ("win_rate", "length_controlled_winrate"):
            raise ConfigError(f"eval task {name}: metric must be win_rate or length_controlled_winrate, not {metric!r}")
        for option, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size), ("limit", limit)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"eval task {name}: {option} must be a positive integer, not {value!r}")
        self.annotator = annotator or None
        if not isinstance(save_outputs, bool):
            raise ConfigError(f"eval task {name}: save_outputs must be true or false, not {save_outputs!r}")
        self.save_outputs = save_outputs
        self.ability, self.name, self.metric, self.limit = ability, name, metric, limit
        self.max_new_tokens, self.batch_size, self.generator = max_new_tokens, batch_size, generator
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        if self.data_dir is not None and not (self.data_dir / LOCAL_FILE).is_file():
            raise DataError(f"eval task {name}: eval.data_dir={self.data_dir} lacks {LOCAL_FILE}")

    def load(self) -> list[dict]:
        if self.data_dir is not None:
            return read_alpaca_eval(self.data_dir / LOCAL_FILE)
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(HUB_REPO, HUB_FILE, repo_type="dataset")
        except Exception as exc:  # offline, no cache, hub error: all need the same advice
            raise DataError(
                f"eval task {self.name}: could not fetch {HUB_FILE} from the hub dataset {HUB_REPO} ({type(exc).__name__}); "
                f"put a local copy at <dir>/{LOCAL_FILE} and set eval.data_dir=<dir>"
            ) from exc
        return read_alpaca_eval(path)

    def why_not_judged(self) -> str | None:
        """The reason the win rate cannot be computed, or None when it can be tried."""
        if self.annotator is None:
            return "no AlpacaEval annotator configured (set the task's annotator, e.g. alpaca_eval_gpt4_turbo_fn or a local judge config)"
        try:
            import alpaca_eval  # noqa: F401
        except ImportError:
            return "the alpaca_eval package is not installed (pip install alpaca-eval)"
        looks_openai = any(k in str(self.annotator).lower() for k in ("gpt", "openai")) and not Path(str(self.annotator)).exists()
        if looks_openai and not os.environ.get("OPENAI_API_KEY"):
            return f"annotator {self.annotator} is an OpenAI judge and OPENAI_API_KEY is not set"
        return None

    def run(self, model, tokenizer, *, out_dir: Path) -> list[TaskScores]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        reason = self.why_not_judged()
        if reason is not None and not self.save_outputs:  # nobody will read the answers: generate none
            reason += f" (nothing generated; eval.tasks.{self.name}.save_outputs=true saves answers for later judging)"
            log.warning("AlpacaEval win rate not computed: %s", reason)
            (out_dir / "score.json").write_text(json.dumps({"not_computed": reason}, indent=1))
            return [TaskScores(self.name, self.ability, math.nan, not_computed=reason)]
        records = self.load()
        if self.limit:
            records = records[: self.limit]
        prompts = [render_prompt(tokenizer, Example(instruction=r["instruction"], output="")) for r in records]
        max_new_tokens = fit_generation(self.name, self.max_new_tokens, model_context(model, tokenizer))
        outputs = generate(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=self.batch_size, desc="alpaca_eval"
        )
        model_outputs = [
            {"instruction": r["instruction"], "output": o, "generator": self.generator, "dataset": r.get("dataset", "")}
            for r, o in zip(records, outputs)
        ]
        references = [
            {
                "instruction": r["instruction"],
                "output": r["output"],
                "generator": r.get("generator", "reference"),
                "dataset": r.get("dataset", ""),
            }
            for r in records
        ]
        (out_dir / "model_outputs.json").write_text(json.dumps(model_outputs, indent=1, ensure_ascii=False))
        (out_dir / "reference_outputs.json").write_text(json.dumps(references, indent=1, ensure_ascii=False))
        result = None
        if reason is None:
            try:
                result = self._judge(model_outputs, references, out_dir)
            except Exception as exc:  # a judge that fails must not lose the other scores
                log.exception("AlpacaEval judging failed")
                reason = f"judging with {self.annotator} failed: {type(exc).__name__}: {exc}"
        if result is None:
            log.warning("AlpacaEval win rate not computed: %s (outputs saved in %s)", reason, out_dir)
            (out_dir / "score.json").write_text(json.dumps({"not_computed": reason}, indent=1))
            return [TaskScores(self.name, self.ability, math.nan, not_computed=reason)]
        (out_dir / "score.json").write_text(json.dumps(result, indent=1))
        if self.metric not in result:
            reason = f"alpaca_eval reported no {self.metric} (only {sorted(result)})"
            return [TaskScores(self.name, self.ability, math.nan, not_computed=reason)]
        stderr = result.pop("standard_error", None) if self.metric == "win_rate" else None
        result.pop("standard_error", None)
        others = {k: v for k, v in result.items() if k != self.metric}
        return [TaskScores(self.name, self.ability, result[self.metric], metrics=others, stderr=stderr)]

    def _judge(self, model_outputs: list[dict], references: list[dict], out_dir: Path) -> dict[str, float]:
        import pandas as pd
        from alpaca_eval import evaluate as alpaca_evaluate

        leaderboard, _ = alpaca_evaluate(
            model_outputs=pd.DataFrame(model_outputs),
            reference_outputs=pd.DataFrame(references),
            annotators_config=self.annotator,
            name=self.generator,
            output_path=str(out_dir / "judge"),
            precomputed_leaderboard=None,
            is_return_instead_of_print=True,
        )
        row = leaderboard.loc[self.generator]
        # alpaca_eval reports percentages; scores here are in [0, 1].
        # standard_error is alpaca_eval's error of the win rate (over the instructions), also in percent.
        names = ("win_rate", "length_controlled_winrate", "standard_error")
        return {k: float(row[k]) / 100 for k in names if k in row and row[k] == row[k]}
