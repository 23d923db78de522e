"""Generation in the evaluation: extractive QA stops at the end of the answer (a newline, or the chat
template's end of turn) within a bounded length, and a generation length that does not fit the
model's context is clipped with a warning instead of lm-eval's AssertionError."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from test_evaluation_lmeval import read_samples, write_benchmarks

from cft.evaluation import harness
from cft.evaluation.alpaca_eval import AlpacaEvalTask
from cft.evaluation.lmeval import LMEvalTask


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    return write_benchmarks(tmp_path_factory.mktemp("benchmarks"))


def answering_model(chain: dict[str, str], max_position_embeddings: int = 256):
    """A tiny Llama whose next token depends only on the current one, along `chain` (e.g. a newline
    -> 'x' -> 'y' -> a newline): its layers add nothing to the residual stream (attention and MLP
    outputs are zero), so the last token's embedding alone picks the next token through lm_head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from cft.models.build import build_tokenizer

    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    ids = {text: tok(text, add_special_tokens=False)["input_ids"] for text in chain}
    assert all(len(v) == 1 for v in ids.values()), ids
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for i, (current, following) in enumerate(chain.items()):
            embed[ids[current][0]] = torch.nn.functional.one_hot(torch.tensor(i), 32).float()
            head[ids[following][0]] += 10 * embed[ids[current][0]]  # orthogonal rows: several tokens may lead to one
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.eval()
    return model, tok


def count_generated(model) -> list[int]:
    """Record how many tokens each of the model's generate() calls produced (beyond the prompt)."""
    counts: list[int] = []
    generate = model.generate

    def counting(*args, **kwargs):
        out = generate(*args, **kwargs)
        counts.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    model.generate = counting
    return counts


def test_qa_stops_at_the_end_of_the_answer(bench_dir, tmp_path):
    # The chat prompt ends with a newline ('<|assistant|>\n'); the model then answers 'xy' and a newline, forever.
    model, tok = answering_model({"\n": "x", "x": "y", "y": "\n"})
    counts = count_generated(model)
    task = LMEvalTask("xquad", data_dir=bench_dir, languages=["de"], limit=1, batch_size=1)
    [scores] = task.run(model, tok, out_dir=tmp_path / "stop")
    [sample] = read_samples(tmp_path / "stop" / "samples" / "cft_xquad_de.jsonl")
    assert sample["resps"] == [["xy"]]  # cut at the newline
    assert counts == [3]  # x, y, newline: generation stopped there, not at the bound
    settings = json.loads(
        next(
            line
            for line in (tmp_path / "stop" / "lm_eval_tasks" / "cft_xquad_de.yaml").read_text().splitlines()
            if "generation_kwargs" in line
        ).split(": ", 1)[1]
    )
    assert settings["until"] == ["\n", "<|end|>"] and settings["max_gen_toks"] == 32  # the benchmark's bound + the end of turn

    # Without the stop string the same model runs to the bound: the answer has newlines and 32 tokens.
    counts.clear()
    LMEvalTask("xquad", data_dir=bench_dir, languages=["de"], limit=1, batch_size=1, gen_kwargs={"until": []}).run(
        model, tok, out_dir=tmp_path / "nostop"
    )
    [sample] = read_samples(tmp_path / "nostop" / "samples" / "cft_xquad_de.jsonl")
    assert counts == [32] and sample["resps"][0][0].startswith("xy\nxy\n")


def test_qa_stops_at_the_chat_templates_end_of_turn(bench_dir, tmp_path):
    """A chat template whose end of turn is not the tokenizer's eos token (as Llama-3's <|eot_id|>)."""
    model, tok = answering_model({"\n": "x", "x": "y", "y": "<|system|>", "<|system|>": "x"})
    tok.chat_template = tok.chat_template.replace("<|end|>", "<|system|>")  # the turn now ends with <|system|>
    assert harness.turn_end(tok, tok.chat_template) == "<|system|>" != tok.eos_token
    counts = count_generated(model)
    LMEvalTask("xquad", data_dir=bench_dir, languages=["de"], limit=1, batch_size=1).run(model, tok, out_dir=tmp_path)
    [sample] = read_samples(tmp_path / "samples" / "cft_xquad_de.jsonl")
    assert sample["resps"] == [["xy"]] and counts == [3]


def test_turn_end_of_templates():
    from cft.models.build import build_tokenizer

    tok = build_tokenizer()
    assert harness.turn_end(tok, tok.chat_template) == "<|end|>"
    assert harness.turn_end(tok, harness.ALPACA_CHAT_TEMPLATE) == tok.eos_token
    assert harness.turn_end(tok, "{{ raise_exception('no') }}") is None  # a template that refuses: no marker


def test_generation_length_clipped_to_the_context(bench_dir, tmp_path, caplog):
    """IFEval asks for 1,280 new tokens; the tiny model's context is 256: clipped to 128 with a
    warning naming the task and both numbers (before, lm-eval's AssertionError)."""
    assert harness.fit_generation("t", 1280, 4096) == 1280 and harness.fit_generation("t", 32, 512) == 32
    model, tok = answering_model({"\n": "x", "x": "y", "y": "\n"}, max_position_embeddings=256)
    counts = count_generated(model)
    with caplog.at_level(logging.WARNING, logger="cft.evaluation.harness"):
        [scores] = LMEvalTask("ifeval", data_dir=bench_dir, limit=1, batch_size=1).run(model, tok, out_dir=tmp_path / "i")
    assert (
        "eval task ifeval: a generation length of 1280 tokens does not fit the model's context of 256 tokens with room "
        "for a prompt; clipped to 128 (leaving 128 tokens for the prompt)"
    ) in caplog.messages
    assert counts == [128] and 0.0 <= scores.score <= 1.0
    assert '"max_gen_toks": 128' in (tmp_path / "i" / "lm_eval_tasks" / "cft_ifeval.yaml").read_text()
    # AlpacaEval (cft's own generation) is clipped the same way.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cft.evaluation.harness"):
        AlpacaEvalTask(data_dir=bench_dir, limit=1, batch_size=1, save_outputs=True).run(model, tok, out_dir=tmp_path / "a")
    assert any(m.startswith("eval task alpaca_eval: a generation length of 1024 tokens") for m in caplog.messages)


@pytest.mark.integration
@pytest.mark.slow
def test_evaluate_py_eval_local_on_a_small_context_model(tiny_model_dir, shared_data, tmp_path):
    """`evaluate.py eval=local` on a model whose context (256) is shorter than IFEval's 1,280 new
    tokens: it runs (clipped, with the warning), and says what its averages cover."""
    from helpers import run_script

    args = [
        f"checkpoint={tiny_model_dir}",
        "model=tiny",
        "eval=local",
        f"eval.data_dir={shared_data}",
        "eval.limit=1",
        "eval.batch_size=4",
        "eval.tasks.mmlu.subjects=[anatomy]",
        "eval.tasks.xquad.languages=[de,en]",
        "eval.tasks.alpaca_eval.max_new_tokens=8",
        "tracking=none",
    ]
    proc = run_script("evaluate.py", args, tmp_path)
    log = proc.stdout + proc.stderr  # Hydra logs to stdout
    assert "AssertionError" not in log
    assert "eval task ifeval: a generation length of 1280 tokens does not fit the model's context of 256 tokens" in log
    [metrics_file] = list(tmp_path.rglob("metrics.json"))
    metrics = json.loads(metrics_file.read_text())
    assert {"ta/ifeval", "ta/mmlu", "ta/hellaswag", "la/xquad", "la/xquad/de", "en/xquad", "ta_avg", "la_avg"} <= set(metrics)
    assert metrics["ta_avg_tasks"] == 3 and metrics["la_avg_tasks"] == 1 and "not_computed/ta/alpaca_eval" in metrics
    assert "* ta_avg covers 3 of the 4 TA benchmarks (alpaca_eval not computed: no AlpacaEval annotator" in proc.stdout
    assert (
        "* la_avg covers 1 of the 3 LA benchmarks (mlqa not computed: switched off in the suite (eval.tasks.mlqa=null); "
        "xlsum not computed: switched off in the suite (eval.tasks.xlsum=null)); the paper's average covers 3"
    ) in proc.stdout
