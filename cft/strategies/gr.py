"""`gr5`, `gr10`: generative replay of arXiv 2410.16006 -- the Phase-1 model answers English
instructions of the Phase-2 data's English counterpart, and those self-generated responses are
mixed into Phase 2 (5% / 10% of the Phase-2 size), so Phase 2 keeps rehearsing the Phase-1
model's own task behaviour without needing its original training data.

Replies stop at the chat template's end of turn (or the model's EOS ids; cft.data.format.stop_token_ids).
A reply that reaches `max_new_tokens` without stopping is cut mid-answer: it is left out (and counted,
`generation/hit_max_new_tokens`), since training on it would teach the model to stop mid-answer;
`keep_capped=true` keeps it. Each kept reply is then closed by the template's end-of-turn token.

The generated set is an artifact cached by (Phase-1 model, counterpart, size, seed, generation
settings): a sweep generates it once per size and reruns reuse it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from cft.data.format import render_prompt
from cft.data.records import Example
from cft.errors import ConfigError
from cft.strategies.base import PhaseLR, StrategyContext, check_ratio
from cft.strategies.er import CountsReplay, counterpart_sample, replay_count

log = logging.getLogger(__name__)


class GenerativeReplay(CountsReplay):
    """Mix `ratio` x |Phase-2 data| English examples answered by the Phase-1 model into Phase 2."""

    NEEDS = frozenset({"counterpart"})

    def __init__(
        self,
        ratio: Annotated[float, Field(gt=0, le=1, description="generated examples as a share of the Phase-2 size")] = 0.1,
        seed: Annotated[int | None, Field(ge=0, description="which instructions are answered; null = the run's seed")] = None,
        max_new_tokens: Annotated[int, Field(ge=1, description="longest generated response, in tokens")] = 256,
        batch_size: Annotated[int, Field(ge=1, description="prompts per generate call")] = 16,
        cache: Annotated[
            Literal["dynamic", "static", "static_compiled"],
            Field(description="KV cache: dynamic, static (preallocated), static_compiled (+ compiled step on CUDA)"),
        ] = "dynamic",
        width_multiple: Annotated[
            int, Field(ge=1, le=4096, description="prompt widths rounded up to this multiple, so static shapes repeat")
        ] = 1,
        do_sample: Annotated[bool, Field(description="sample (temperature, top_p) instead of greedy decoding")] = False,
        temperature: Annotated[float, Field(gt=0, description="sampling temperature (do_sample=true)")] = 1.0,
        top_p: Annotated[float, Field(gt=0, le=1, description="nucleus sampling mass (do_sample=true)")] = 1.0,
        keep_empty: Annotated[bool, Field(description="keep empty responses in the replay data")] = False,
        keep_capped: Annotated[bool, Field(description="keep replies cut at max_new_tokens (default: left out)")] = False,
        lr: PhaseLR = None,
    ):
        self.lr = lr
        self.ratio = ratio
        self.seed = seed
        self.generation = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            **({"temperature": temperature, "top_p": top_p} if do_sample else {}),
        }
        self.batch_size = batch_size
        # Throughput levers, like batch_size outside the artifact's key: greedy outputs are the same
        # (tests/test_generate.py), so a cached set is reused whichever is set.
        self.speed = {"cache": cache, "width_multiple": width_multiple}
        self.keep_empty = keep_empty
        self.keep_capped = keep_capped
        self._report: dict[str, Any] = {}
        self.artifact: Path | None = None

    def validate(self, model_config) -> None:
        check_ratio("strategy.ratio", self.ratio)
        if not isinstance(self.generation["max_new_tokens"], int) or self.generation["max_new_tokens"] < 1:
            raise ConfigError(f"strategy.max_new_tokens={self.generation['max_new_tokens']!r} must be a positive integer")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"strategy.batch_size={self.batch_size!r} must be a positive integer")

    def generated_set(self, ctx: StrategyContext, n: int, seed: int) -> Path:
        spec = {
            "phase1": ctx.phase1_key or str(ctx.phase1_dir),
            "counterpart": ctx.counterpart_spec,
            "n": n,
            "seed": seed,
            "generation": self.generation,
            "stops": "end_of_turn",  # replies stop at the template's end of turn; which ones hit the cap is kept
        }

        def build(tmp: Path) -> None:
            from cft.models.generate import generate

            prompts_from = counterpart_sample(ctx, n, seed, "generative replay (gr)")
            if ctx.load_phase1 is None:
                raise ConfigError("generative replay needs the Phase-1 model, but the context gives no loader")
            model = ctx.load_phase1()
            start = time.time()
            outputs, finished = generate(
                model,
                ctx.tokenizer,
                [render_prompt(ctx.tokenizer, ex) for ex in prompts_from],
                batch_size=self.batch_size,
                **self.speed,
                desc="generative replay",
                return_finished=True,
                sharded=True,  # every rank answers its share of the batches
                **self.generation,
            )
            seconds = time.time() - start
            del model
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            from cft.training import distributed

            if not distributed.is_main():  # every rank has every output; rank 0 writes them
                return
            lengths = [len(ctx.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs]
            with open(tmp / "replay.jsonl", "w", encoding="utf-8") as f:
                for ex, out in zip(prompts_from, outputs):
                    f.write(json.dumps(asdict(replace(ex, output=out)), ensure_ascii=False) + "\n")
            (tmp / "finished.json").write_text(json.dumps(finished))
            stats = {
                "requested": n,
                "empty": sum(not o.strip() for o in outputs),
                "mean_new_tokens": sum(lengths) / max(len(lengths), 1),
                # replies that reached max_new_tokens without a stop token (cut mid-answer)
                "hit_max_new_tokens": sum(not f for f in finished),
                "seconds": seconds,
                "new_tokens_per_second": sum(lengths) / max(seconds, 1e-9),
            }
            (tmp / "stats.json").write_text(json.dumps(stats, indent=2))

        return ctx.artifact("generative_replay", spec, build, collective=True)

    def phase2_data(self, examples: list[Example], ctx: StrategyContext) -> list[Example]:
        size = ctx.phase2_size or len(examples)
        n = replay_count(self.ratio, size)
        seed = ctx.seed if self.seed is None else self.seed
        self.artifact = self.generated_set(ctx, n, seed)
        generated = [
            Example(**json.loads(line)) for line in (self.artifact / "replay.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        finished = json.loads((self.artifact / "finished.json").read_text())
        capped = [ex for ex, f in zip(generated, finished) if not f]
        replay = generated if self.keep_capped else [ex for ex, f in zip(generated, finished) if f]
        if not self.keep_capped and capped:
            log.warning(
                "generative replay: %d of %d replies reached max_new_tokens=%d without an end of turn and are left out",
                len(capped),
                len(generated),
                self.generation["max_new_tokens"],
            )
        kept = len(replay)
        replay = replay if self.keep_empty else [ex for ex in replay if ex.output.strip()]
        if len(replay) < kept:
            log.warning("generative replay: %d of %d generated responses are empty and left out", kept - len(replay), kept)
        stats = json.loads((self.artifact / "stats.json").read_text())
        self._report = {
            "replay_examples": len(replay),
            "replay_ratio": self.ratio,
            "replay_share": len(replay) / size,
            "phase2_examples": size,
            "replay_capped_left_out": 0 if self.keep_capped else len(capped),
            "replay_artifact": self.artifact.name,
            **{f"generation/{k}": v for k, v in stats.items()},
        }
        self._replay = (len(examples), len(examples) + len(replay))
        return list(examples) + replay
