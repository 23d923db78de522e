"""Formatting, loss masking, truncation, and packing without attention across examples."""

from __future__ import annotations

import pytest
import torch

from cft.data.format import ALPACA_PROMPT, IGNORE, PadCollator, render_prompt, tokenize_example, tokenize_examples
from cft.data.packing import PackingCollator, no_kv_cache, pack_rows, padding_fraction
from cft.data.records import Example
from cft.models import build_model, build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_loss_mask_token_by_token_with_chat_template(tok):
    ex = Example(instruction="Hi", input="x", output="ok", system="S")
    item, truncated = tokenize_example(tok, ex, max_length=64)
    prompt = "<|system|>\nS<|end|>\n<|user|>\nHi\n\nx<|end|>\n<|assistant|>\n"
    assert render_prompt(tok, ex) == prompt and not truncated
    expected_ids = (
        tok(prompt, add_special_tokens=False)["input_ids"] + tok("ok", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    )
    assert item["input_ids"] == expected_ids
    n_prompt = len(expected_ids) - 3  # "o", "k" (bytes) and <|end|>
    for i, (tid, label) in enumerate(zip(item["input_ids"], item["labels"])):
        assert label == (IGNORE if i < n_prompt else tid), (i, tok.decode([tid]))
    assert tok.decode([t for t, lab in zip(item["input_ids"], item["labels"]) if lab != IGNORE]) == "ok<|end|>"
    with_prompt, _ = tokenize_example(tok, ex, max_length=64, loss_on_prompt=True)
    assert with_prompt["labels"] == with_prompt["input_ids"]


def test_alpaca_prompt_without_chat_template():
    tok = build_tokenizer()
    tok.chat_template = None
    ex = Example(instruction="Add", input="2 3", output="5", system="Sys")
    assert render_prompt(tok, ex) == "Sys\n\n" + ALPACA_PROMPT.format(instruction="Add\n\n2 3")
    item, _ = tokenize_example(tok, ex, max_length=512)
    response = [t for t, lab in zip(item["input_ids"], item["labels"]) if lab != IGNORE]
    assert tok.decode(response) == "5<|end|>"


def test_template_rejecting_system_turn_gets_it_in_the_user_turn():
    tok = build_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
        "[INST] {{ m['content'] }} [/INST]{% endfor %}"
    )
    assert render_prompt(tok, Example(instruction="Q", output="A", system="S")) == "[INST] S\n\nQ [/INST]"


def test_truncation_and_dropping_are_counted(tok):
    examples = [
        Example(instruction="a", output="b" * 10),
        Example(instruction="a", output="b" * 100),
        Example(instruction="a" * 100, output="b"),
    ]
    items, stats = tokenize_examples(tok, examples, max_length=40)
    assert (stats.total, stats.truncated, stats.dropped) == (3, 1, 1)
    assert len(items) == 2 and len(items[1]["input_ids"]) == 40 and items[1]["labels"][-1] != IGNORE
    assert stats.tokens == sum(len(i["input_ids"]) for i in items)


def test_padding_fraction_by_hand():
    # batches [5, 3] and [2]: slots 5*2 + 2 = 12, real 10
    assert padding_fraction([5, 3, 2], [[0, 1], [2]]) == pytest.approx(1 - 10 / 12)
    # Packed into rows of width 5 (the longest): [5], [4, 1], [3, 2] fill 15 of 15 slots, padded 25.
    assert pack_rows([5, 3, 2, 4, 1], 5) == [[0], [3, 4], [1, 2]]
    assert padding_fraction([5, 3, 2, 4, 1], [[0, 1, 2, 3, 4]]) == pytest.approx(1 - 15 / 25)
    assert padding_fraction([5, 3, 2, 4, 1], [[0, 1, 2, 3, 4]], packed=True) == 0.0
    # [5], [3], [3]: the two 3s do not share a row of 5, so 11 real tokens in 15 slots.
    assert padding_fraction([5, 3, 3], [[0, 1, 2]], packed=True) == pytest.approx(1 - 11 / 15)
    assert padding_fraction([5, 3, 3], [[0, 1, 2]], packed=True, single_row=True) == 0.0


def test_packing_has_no_cross_example_attention(tok, tiny_arch):
    torch.manual_seed(0)
    model = build_model(tiny_arch, tok, seed=0).eval()
    examples = [
        Example(instruction="Repeat: abc", output="abc abc"),
        Example(instruction="Hi", output="hello there, friend"),
        Example(instruction="Reverse: xyz", input="now", output="zyx"),
    ]
    items, _ = tokenize_examples(tok, examples, max_length=128)
    packed = PackingCollator(single_row=True)(items)
    assert packed["input_ids"].shape == (1, sum(len(i["input_ids"]) for i in items)) and "attention_mask" not in packed
    first = len(items[0]["input_ids"])
    for attn in ("eager", "sdpa"):
        model.set_attn_implementation(attn)
        with torch.no_grad():
            with no_kv_cache(model):
                logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0]
                loss_packed = model(**packed).loss
            start = 0
            for item in items:
                n = len(item["input_ids"])
                alone = model(input_ids=torch.tensor([item["input_ids"]])).logits[0]
                torch.testing.assert_close(logits[start : start + n], alone, atol=1e-5, rtol=1e-4)
                start += n
            # The check can fail: with a KV cache (use_cache=True, the default) transformers does not
            # look for packed sequences, and later examples attend to earlier ones.
            leaky = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0]
            assert torch.allclose(leaky[:first], logits[:first], atol=1e-5)
            assert not torch.allclose(leaky[first:], logits[first:], atol=1e-3)
            # The packed mean loss equals the padded batch's (each example's first label is masked).
            loss_padded = model(**PadCollator(tok.pad_token_id)(items)).loss
        torch.testing.assert_close(loss_packed, loss_padded, atol=1e-5, rtol=1e-4)
    assert model.config.use_cache  # restored


def test_packing_into_rows_as_wide_as_the_longest_example(tok, tiny_arch):
    """Examples go first-fit into rows no wider than the longest example (so attention never costs
    more than the padded batch); each example's logits still equal its unpacked forward pass (row
    padding is a separate, ignored sequence)."""
    model = build_model(tiny_arch, tok, seed=0).eval()
    examples = [Example(instruction=f"Task {i}", output="y" * n) for i, n in enumerate((1, 3, 60, 6, 25))]
    items, _ = tokenize_examples(tok, examples, max_length=128)
    lengths = [len(i["input_ids"]) for i in items]
    packed = PackingCollator(pad_id=tok.pad_token_id)(items)
    rows, width = packed["input_ids"].shape
    assert width == max(lengths) and rows == len(pack_rows(lengths, max(lengths))) and 1 < rows < len(items)
    assert int((packed["input_ids"] != tok.pad_token_id).sum()) == sum(lengths)
    assert int((packed["labels"] != IGNORE).sum()) == sum(sum(t != IGNORE for t in i["labels"][1:]) for i in items)
    with torch.no_grad(), no_kv_cache(model):
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
        seen = 0
        for row in range(rows):
            starts = (packed["position_ids"][row] == 0).nonzero().flatten().tolist() + [width]
            for a, b in zip(starts, starts[1:]):
                ids = packed["input_ids"][row, a:b].tolist()
                match = [i for i in items if i["input_ids"] == ids]
                if not match:  # row padding
                    continue
                alone = model(input_ids=torch.tensor([ids])).logits[0]
                torch.testing.assert_close(logits[row, a:b], alone, atol=1e-5, rtol=1e-4)
                seen += 1
    assert seen == len(items)


def test_fit_with_packing_trains_like_padding_and_reports_padding(tok, tiny_arch):
    """Same batches, same mean loss: two packed steps give the weights of two padded steps
    (attention across examples, or a loss on the next example's first token, would not)."""
    from cft.training.loop import TrainSettings, fit

    examples = [Example(instruction=f"Say {i}", output="x" * (1 + 9 * (i % 4))) for i in range(16)]
    settings = TrainSettings(lr=1e-3, max_steps=2, global_batch_size=8, micro_batch_size=4, warmup_steps=0)
    runs = {}
    for packing in (False, True):
        model, stats, tok_stats = fit(
            build_model(tiny_arch, tok, seed=0), tok, examples, settings=settings, max_length=64, packing=packing
        )
        runs[packing] = (model.state_dict(), stats, tok_stats)
    (padded, s0, t0), (packed, s1, t1) = runs[False], runs[True]
    assert s1.steps == 2 and s1.final_loss == pytest.approx(s0.final_loss, rel=1e-4)
    assert s1.tokens == s0.tokens  # real tokens, not padding slots
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], atol=1e-4, rtol=1e-3)
    assert t1.packing and not t0.packing
    assert 0 <= t1.padding_fraction_packed < t1.padding_fraction == t0.padding_fraction < 1


def test_attention_kernel_choice_and_row_policy(tok, tiny_arch):
    """train.attn_implementation reaches the model; flash-attention (variable-length) packs one row
    per micro-batch, the others rows as wide as the longest example; a kernel that cannot load is a
    config error naming the option."""
    from types import SimpleNamespace

    from cft.data.packing import uses_varlen_attention
    from cft.errors import ConfigError
    from cft.training.loop import TrainSettings, fit

    def kind(impl):
        return uses_varlen_attention(SimpleNamespace(config=SimpleNamespace(_attn_implementation=impl)))

    assert kind("flash_attention_2") and kind("flash_attention_3") and not kind("sdpa") and not kind("eager")
    examples = [Example(instruction=f"Say {i}", output="x" * (1 + 9 * (i % 4))) for i in range(8)]
    settings = TrainSettings(lr=1e-3, max_steps=1, global_batch_size=4, micro_batch_size=4)
    model, _, stats = fit(
        build_model(tiny_arch, tok), tok, examples, settings=settings, max_length=64, packing=True, attn_implementation="eager"
    )
    assert model.config._attn_implementation == "eager" and stats.padding_fraction_packed > 0
    with pytest.raises(ConfigError, match="train.attn_implementation=no_such_kernel"):
        fit(build_model(tiny_arch, tok), tok, examples, settings=settings, max_length=64, attn_implementation="no_such_kernel")
