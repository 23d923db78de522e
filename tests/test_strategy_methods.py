"""Phase-2 methods as arXiv 2410.16006 runs them, on a tiny model through the real loop: the replay the
loop actually trained on is counted exactly (also across a resume), generative replay stops at the chat
template's end of turn and leaves out replies cut at the cap, every training response ends with the
template's end-of-turn token, and each strategy carries its own Phase-2 learning rate."""

from __future__ import annotations

import json

import pytest
import torch

from cft.data.demo import make_examples
from cft.data.format import end_of_turn, end_of_turn_id, stop_token_ids, tokenize_example, tokenize_examples
from cft.data.records import Example
from cft.models import build_model, build_tokenizer
from cft.strategies.base import StrategyContext
from cft.training.loop import TrainSettings, epoch_batches, fit

ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def eot_tok():
    """A tokenizer whose chat template closes a turn with <|eot|>, not with its EOS <|end|> (as Llama-3's <|eot_id|>)."""
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>", "<|eot|>"]})
    tok.chat_template = tok.chat_template.replace("<|end|>", "<|eot|>")
    return tok


def ctx(tmp_path, tok, counterpart, size, load=None):
    return StrategyContext(
        base_ref="",
        phase1_dir=tmp_path,
        tokenizer=tok,
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        seed=0,
        phase2_size=size,
        counterpart=lambda: list(counterpart),
        counterpart_spec={"name": "en"},
        phase1_key="p1",
        load_phase1=load,
        max_length=64,
    )


def settings(steps, **kw):
    values = dict(lr=1e-3, max_steps=steps, global_batch_size=4, micro_batch_size=2, warmup_steps=0, scheduler="constant")
    return TrainSettings(**{**values, "seed": 0, **kw})


def test_the_replay_trained_on_is_counted_exactly_also_across_a_resume(tmp_path, tok):
    from cft.strategies.er import EnglishReplay

    phase2 = make_examples(["repeat", "reverse"], ["es"], 10, seed=0)  # 20 examples
    counterpart = make_examples(["repeat"], ["en"], 10, seed=1)

    def run(steps):
        strategy = EnglishReplay(ratio=0.25)
        mixed = strategy.phase2_data(list(phase2), ctx(tmp_path, tok, counterpart, len(phase2)))
        assert len(mixed) == 25
        fit(
            build_model(ARCH, tok, seed=0),
            tok,
            mixed,
            settings=settings(steps, checkpoint_every=4),
            max_length=64,
            hooks=strategy,
            phase="phase2",
            checkpoint_dir=tmp_path / "ckpt",
        )
        return strategy.report()

    # The loop's order is a pure function of the seed: 12 micro-batches of 2 per epoch, 2 per step
    # (6 steps an epoch, the 25th example left out); replay is positions 20 to 24.
    fed = [j for epoch in (0, 1) for idx in epoch_batches(25, 2, 2, 0, epoch) for j in idx]
    five = run(5)  # writes a checkpoint at step 4
    assert five["replay_share"] == pytest.approx(5 / 20)  # the configured share, as before
    assert five["replay_trained"] == sum(j >= 20 for j in fed[:20]) and five["replay_share_trained"] == pytest.approx(
        five["replay_trained"] / 20
    )
    # Resumed from step 4 into the second epoch: the steps it did not redo are counted too.
    eight = run(8)
    assert eight["replay_trained"] == sum(j >= 20 for j in fed[:32]) > five["replay_trained"]
    assert eight["replay_share_trained"] == pytest.approx(eight["replay_trained"] / 32)


def test_responses_end_with_the_templates_end_of_turn_not_a_bare_eos(tok, eot_tok):
    eot = eot_tok.convert_tokens_to_ids("<|eot|>")
    assert end_of_turn(eot_tok) == "<|eot|>" and end_of_turn_id(eot_tok) == eot != eot_tok.eos_token_id
    assert end_of_turn(tok) == "<|end|>" and end_of_turn_id(tok) == tok.eos_token_id  # the built-in: the same token
    ex = Example(instruction="Say hi", output="hi")
    item, _ = tokenize_example(eot_tok, ex, 64)
    assert item["input_ids"][-1] == eot and item["labels"][-1] == eot and eot_tok.eos_token_id not in item["input_ids"]
    items, _ = tokenize_examples(eot_tok, [ex, ex], 64)
    assert [i["example"] for i in items] == [0, 1] and items[0]["input_ids"][-1] == eot
    # No template: the Alpaca prompt, closed by EOS.
    plain = build_tokenizer()
    plain.chat_template = None
    assert end_of_turn(plain) is None and tokenize_example(plain, ex, 512)[0]["input_ids"][-1] == plain.eos_token_id
    # Generation stops at the model's EOS ids, the tokenizer's EOS and the end of turn.
    model = build_model(ARCH, eot_tok, seed=0)
    model.generation_config.eos_token_id = [eot_tok.eos_token_id, 7]
    assert stop_token_ids(eot_tok, model) == [eot_tok.eos_token_id, 7, eot]


class Scripted(torch.nn.Module):
    """A "Phase-1 model" that answers prompt k with 3 tokens and the end of turn, except every second
    prompt, which it answers past the cap (no stop token); it records the stop ids it was given."""

    def __init__(self, tok, stop):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.stop, self.seen = stop, []
        self.text = lambda text: tok(text, add_special_tokens=False)["input_ids"]
        self.generation_config = type("G", (), {"eos_token_id": tok.eos_token_id})()

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, **kw):
        self.seen.append(eos_token_id)
        rows = []
        for row in input_ids:
            capped = int(row[-5]) % 2 == 0  # a pseudo-random half, fixed by the prompt
            new = self.text("aaaaaaaa") if capped else [*self.text("bcd"), self.stop]
            new = (new + [pad_token_id] * max_new_tokens)[:max_new_tokens]
            rows.append(torch.cat([row, torch.tensor(new)]))
        return torch.stack(rows)


def test_generative_replay_stops_at_the_end_of_turn_and_leaves_out_capped_replies(tmp_path, eot_tok):
    from cft.strategies.gr import GenerativeReplay

    eot = eot_tok.convert_tokens_to_ids("<|eot|>")
    counterpart = make_examples(["repeat", "reverse", "number"], ["en"], 10, seed=0)
    model = Scripted(eot_tok, eot)
    strategy = GenerativeReplay(ratio=0.5, max_new_tokens=6, batch_size=4)
    mixed = strategy.phase2_data(
        make_examples(["repeat"], ["es"], 20, seed=0), ctx(tmp_path, eot_tok, counterpart, 20, lambda: model)
    )
    assert model.seen and all(eot in ids and eot_tok.eos_token_id in ids for ids in model.seen)
    finished = json.loads(next((tmp_path / "cache" / "generative_replay").glob("*/finished.json")).read_text())
    report = strategy.report()
    assert report["generation/requested"] == 10 and report["generation/hit_max_new_tokens"] == finished.count(False) > 0
    assert report["replay_capped_left_out"] == finished.count(False) and finished.count(True) > 0
    assert report["replay_examples"] == finished.count(True) == len(mixed) - 20
    assert all(ex.output == "bcd" for ex in mixed[20:])  # the end of turn is not part of the reply
    kept = GenerativeReplay(ratio=0.5, max_new_tokens=6, batch_size=4, keep_capped=True)
    assert len(kept.phase2_data([], ctx(tmp_path, eot_tok, counterpart, 20, lambda: model))) == 10
    assert kept.report()["replay_capped_left_out"] == 0


def test_each_strategy_carries_its_own_phase2_learning_rate(tmp_path):
    from helpers import compose
    from hydra.utils import instantiate

    from cft.config.schema import check_target_node
    from cft.recipes.common import phase_train_config

    cfg = compose(["model=tiny", "train=paper", "strategy=lora"])
    lora = instantiate(cfg.strategy)
    train2 = lora.phase2_train(phase_train_config(cfg.train, "phase2"))
    assert lora.lr == 2e-4 and train2["lr"] == 2e-4 and phase_train_config(cfg.train, "phase1")["lr"] == 2e-5
    full = instantiate(compose(["model=tiny", "train=paper", "strategy=full"]).strategy)
    assert full.phase2_train(phase_train_config(cfg.train, "phase2"))["lr"] == 2e-5  # null: train.lr
    mine = instantiate(
        compose(["model=tiny", "train=paper", "strategy=gr5", "strategy.lr=3e-5", "train.phase2.lr=1e-5"]).strategy
    )
    assert mine.phase2_train(phase_train_config(compose(["train=paper", "train.phase2.lr=1e-5"]).train, "phase2"))["lr"] == 3e-5
    both = instantiate(
        compose(
            ["model=tiny", "strategy=combine", "+strategy@strategy.parts.lora=lora", "+strategy@strategy.parts.lf=lf_h1"]
        ).strategy
    )
    assert both.phase2_train({"lr": 1.0})["lr"] == 2e-4  # a part's rate applies
    problems = check_target_node({**dict(compose(["strategy=er10"]).strategy), "lr": -1}, "strategy")
    assert problems and "strategy.lr" in problems[0]
