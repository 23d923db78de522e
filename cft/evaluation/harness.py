"""Running lm-evaluation-harness in-process on the model in memory: the prompt format (chat
template), the lm-eval model (hf or vllm), generation lengths that fit the model's context, and the
samples and results saved next to the scores.

Prompts are formatted as in training: with the tokenizer's chat template (lm-eval's
apply_chat_template, few-shot examples as turns) or, for a tokenizer without one, with the Alpaca
prompt that cft.data.format trains such models with; `apply_chat_template=false` gives plain prompts.
Under a chat template, generation also stops at the template's end-of-turn marker (e.g. Llama-3's
`<|eot_id|>`, which is not its tokenizer's eos token, the one stop lm-eval adds itself).

Data parallel (`sharded=True` under a process group of several ranks, every rank calling with the same
model weights): `RankedHFLM` tells lm-eval this process's rank and the world size, so each rank scores
its share of every task's documents (lm-eval deals them out: document i to rank i mod world) and rank 0
gathers the per-document metrics and samples. It puts them back in document order, so the scores, the
standard errors (bootstraps included) and the samples are those of one rank; rank 0 alone gets results.

Context length: a generation length that leaves less than `prompt_room(context)` tokens of the
model's context for the prompt is clipped to what leaves that room, with a warning naming the task
and both numbers (lm-eval would otherwise stop with an AssertionError once the generation length
reaches the context, and cut prompts to almost nothing just below it).

lm-eval's environment report in its results (torch's collect_env, versions, git hashes) is computed once
per process (`cache_env_info`), not once per benchmark run as lm-eval itself does.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cft.data.format import ALPACA_PROMPT
from cft.errors import ConfigError

log = logging.getLogger(__name__)

# cft.data.format's Alpaca prompt (used in training for tokenizers without a chat template) as a
# chat template, so that lm-eval's multi-turn few-shot prompts take the same form.
_ALPACA_BEFORE, _ALPACA_AFTER = ALPACA_PROMPT.split("{instruction}")
ALPACA_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}"
    + _ALPACA_BEFORE
    + "{{ m['content'] }}"
    + _ALPACA_AFTER
    + "{% else %}{{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
)
# The most tokens of the context a prompt is guaranteed (half of a context shorter than twice this).
PROMPT_ROOM = 256


def chat_template(mode: bool | str, tokenizer, task: str) -> str | None:
    """The chat template lm-eval formats prompts with: the tokenizer's, the Alpaca prompt, or none."""
    has_own = bool(getattr(tokenizer, "chat_template", None))
    if mode == "auto":
        # As in training (cft.data.format.render_prompt): the tokenizer's template, else the Alpaca prompt.
        return tokenizer.chat_template if has_own else ALPACA_CHAT_TEMPLATE
    if mode == "alpaca":
        return ALPACA_CHAT_TEMPLATE
    if mode is True and not has_own:
        raise ConfigError(
            f"eval task {task}: apply_chat_template=true but the tokenizer has no chat template (use auto or alpaca)"
        )
    return tokenizer.chat_template if mode is True else None


def turn_end(tokenizer, template: str) -> str | None:
    """The text `template` puts after an assistant turn (its end-of-turn marker), or None."""
    marker = "\x00cft-answer\x00"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], chat_template=template, tokenize=False
        )
    except Exception:  # a template that refuses this conversation: no marker, lm-eval's eos stop remains
        return None
    after = text.partition(marker)[2].strip()
    return after or None


def prompt_room(context: int) -> int:
    """Tokens of the context kept for the prompt when a generation length is clipped."""
    return min(PROMPT_ROOM, context // 2)


def fit_generation(task: str, max_gen_toks: int, context: int) -> int:
    """`max_gen_toks`, or the most that leaves `prompt_room(context)` tokens for the prompt (with a warning)."""
    most = context - prompt_room(context)
    if max_gen_toks <= most:
        return max_gen_toks
    log.warning(
        "eval task %s: a generation length of %d tokens does not fit the model's context of %d tokens with room "
        "for a prompt; clipped to %d (leaving %d tokens for the prompt)",
        task,
        max_gen_toks,
        context,
        most,
        context - most,
    )
    return most


def model_context(model, tokenizer, max_length: int | None = None) -> int:
    """The context length as lm-eval's HF model reads it: `max_length`, else the model config's
    (n_positions, max_position_embeddings, n_ctx), else the tokenizer's model_max_length, else 2048."""
    if max_length:
        return int(max_length)
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit < 10**9 else 2048


def in_document_order(parts: list[Any]) -> Any:
    """The per-rank objects lm-eval gathers at the end of a data-parallel run ({task: [sample records]}, or
    {task: {(metric, filter): [one value per document]}}) merged into what one rank would have made: rank
    r scored documents r, r + world, ... (lm-eval's islice), so the lists are dealt back in turn, and
    sample records (one per document and filter) are put in filter order, then document order."""
    first = next((p for p in parts if p), parts[0])
    if isinstance(first, Mapping):
        keys = list(dict.fromkeys(k for p in parts for k in p))  # a rank with no document of a task lacks its keys
        return {k: in_document_order([p.get(k, []) for p in parts]) for k in keys}
    dealt = []
    for i in range(max(map(len, parts), default=0)):
        dealt.extend(p[i] for p in parts if i < len(p))
    if dealt and all(isinstance(r, Mapping) and "doc_id" in r and "filter" in r for r in dealt):
        filters = list(dict.fromkeys(r["filter"] for r in dealt))
        dealt.sort(key=lambda r: (filters.index(r["filter"]), r["doc_id"]))
    return dealt


@functools.cache
def cft_hflm():
    """lm-eval's HFLM whose `batch_size: auto` sizes generation batches from the requests: lm-eval probes the
    largest batch at the model's whole context (32,768 tokens for Mistral v0.1, so a batch that fits a sequence
    that long, usually 1), where the longest request needs its prompt plus its generation length."""
    from lm_eval.models.huggingface import HFLM

    class CftHFLM(HFLM):
        _probe_length: int | None = None  # set while generate_until sizes its batches

        def generation_length(self, requests) -> int:
            """Tokens the longest of these generation requests can fill: its prompt and its max_gen_toks (the
            prompt cut as lm-eval cuts it, to leave room for the generation), at most the model's context."""
            from lm_eval.models.utils import normalize_gen_kwargs

            longest = 0
            for request in requests:
                context, gen_kwargs = request.args
                new = int(normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)["max_gen_toks"])
                prompt = min(len(self.tok_encode(context)), max(self.max_length - new, 0))
                longest = max(longest, prompt + new)
            return min(longest, self.max_length)

        def generate_until(self, requests, disable_tqdm: bool = False):
            if self.batch_size != "auto" or not requests:
                return super().generate_until(requests, disable_tqdm=disable_tqdm)
            self._probe_length = self.generation_length(requests)
            try:
                return super().generate_until(requests, disable_tqdm=disable_tqdm)
            finally:
                self._probe_length = None

        def _detect_batch_size(self, requests=None, pos: int = 0):
            if requests is None and self._probe_length is not None:
                # lm-eval's probe of a log-likelihood request: its forward passes at the request's length.
                requests = [(None, [0] * self._probe_length, [0])]
            return super()._detect_batch_size(requests, pos)

    return CftHFLM


@functools.cache
def ranked_hflm():
    """HFLM evaluating this rank's share of each task over the live process group (see the module docstring).
    lm-eval's HFLM on an in-memory model says rank 0 of 1, and its collectives go through an accelerate
    Accelerator it only builds for a model it loads itself; these go through torch.distributed."""
    import torch
    import torch.distributed as dist

    class RankedHFLM(cft_hflm()):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._rank, self._world_size = dist.get_rank(), dist.get_world_size()

        def all_gather(self, tensor):
            # lm-eval gathers request counts (to pad its batches) and auto batch sizes (to take the least).
            parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
            dist.all_gather(parts, tensor.contiguous())
            return torch.cat([p.reshape(-1) for p in parts])

        def gather_object(self, obj, dst=0):
            parts = super().gather_object(obj, dst=dst)
            return None if parts is None else [in_document_order(parts)]

        def barrier(self):
            dist.barrier()

    return RankedHFLM


def without_padding(samples: Mapping[str, list[dict]], configs: Mapping[str, Mapping[str, Any]]) -> None:
    """Drop the responses lm-eval's data-parallel padding added to a sample: a rank with fewer requests than
    another repeats its last request (for DDP/FSDP's even batches), and the repeat's responses are appended to
    that request's own. Each request keeps its task's `repeats` responses, as in a one-rank run."""
    for task, records in samples.items():
        repeats = int((configs.get(task) or {}).get("repeats") or 1)
        for record in records:
            record["resps"] = [list(r)[:repeats] for r in record["resps"]]


def data_parallel(sharded: bool) -> bool:
    """Whether an evaluation asked to be `sharded` runs data-parallel here: a process group of several ranks."""
    if not sharded:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def make_lm(
    backend: str,
    model,
    tokenizer,
    *,
    batch_size: int | str,
    max_length: int | None,
    seed: int,
    vllm_kwargs: Mapping[str, Any],
    scratch: Path,
    sharded: bool = False,
):
    """lm-eval's model object: HFLM on the in-memory model (`cft_hflm`; `RankedHFLM`, this rank's share, when
    `sharded` under several ranks), or VLLM on a scratch copy of it."""
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        if hasattr(model, "peft_config"):
            raise ConfigError("backend=vllm needs a plain model: merge the LoRA weights first (or use backend=hf)")
        # vLLM loads weights from disk only: a scratch copy, removed after the run.
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        kwargs = {"max_model_len": max_length} if max_length else {}
        kwargs.update(vllm_kwargs)
        return VLLM(pretrained=str(scratch), tokenizer=str(scratch), batch_size=batch_size, seed=seed, **kwargs)
    if isinstance(batch_size, str):
        device = getattr(model, "device", None)
        if device is None or getattr(device, "type", "cpu") == "cpu":
            batch_size = 16  # lm-eval's batch-size search is for GPUs
    cls = ranked_hflm() if data_parallel(sharded) else cft_hflm()
    return cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=str(model.device))


@functools.cache
def _env_info() -> dict[str, Any]:
    """lm-eval's environment report (torch's collect_env, lm-eval's and transformers' versions, git hashes),
    computed once per process: lm-eval's own add_env_info recomputes it on every simple_evaluate call, each
    time starting `python -m pip list` and other commands, about a second of CPU per benchmark run, though
    nothing it reports changes within a process."""
    from lm_eval.loggers.utils import add_env_info

    storage: dict[str, Any] = {}
    add_env_info(storage)
    return storage


def _add_env_info(storage: dict[str, Any]) -> None:
    storage.update(_env_info())


def cache_env_info() -> None:
    """Make lm-eval's simple_evaluate take its environment report from `_env_info` (the same keys and values)."""
    import lm_eval.evaluator

    lm_eval.evaluator.add_env_info = _add_env_info


class Session:
    """One lm-eval run on the caller's model and tokenizer: sets the chat template and eval mode,
    builds the lm-eval model, and leaves both as they were (and removes a vLLM scratch copy) on exit."""

    def __init__(self, model, tokenizer, *, template: str | None, backend: str, out_dir: Path, **lm_kwargs):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.backend, self.out_dir, self.lm_kwargs = backend, out_dir, lm_kwargs
        self.scratch: Path | None = None

    def __enter__(self):
        self.was_training = self.model.training
        self.own_template = getattr(self.tokenizer, "chat_template", None)
        self.model.eval()
        if self.template is not None:
            self.tokenizer.chat_template = self.template  # restored on exit: the tokenizer is the caller's
        if self.backend == "vllm":
            self.scratch = Path(tempfile.mkdtemp(prefix="vllm-model-", dir=self.out_dir))
        self.lm = make_lm(self.backend, self.model, self.tokenizer, scratch=self.scratch or self.out_dir, **self.lm_kwargs)
        return self

    def __exit__(self, *exc):
        self.model.train(self.was_training)
        self.tokenizer.chat_template = self.own_template
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return False


def save(results: dict, out_dir: Path) -> None:
    """lm-eval's samples in the format of its CLI's --log_samples files (`samples/<task>.jsonl`), and
    its aggregated results and task configs (`lm_eval_results.json`)."""
    from lm_eval.utils import handle_non_serializable, sanitize_list

    samples_dir = out_dir / "samples"
    samples_dir.mkdir(exist_ok=True)
    for task_name, records in (results.get("samples") or {}).items():
        with open(samples_dir / f"{task_name}.jsonl", "w", encoding="utf-8") as f:
            for record in records:
                record = dict(record)
                record["arguments"] = {
                    f"gen_args_{i}": {f"arg_{j}": value for j, value in enumerate(args)}
                    for i, args in enumerate(record["arguments"])
                }
                record["resps"] = sanitize_list(record["resps"])
                record["filtered_resps"] = sanitize_list(record["filtered_resps"])
                record["target"] = str(record["target"])
                f.write(json.dumps(record, ensure_ascii=False, default=handle_non_serializable) + "\n")
    summary = {k: v for k, v in results.items() if k != "samples"}
    (out_dir / "lm_eval_results.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False, default=handle_non_serializable)
    )
