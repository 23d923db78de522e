"""Phase-2 strategies on a tiny model, in-process through their hooks and the real training loop:
freezing is exact, replay shares are exact, generative replay is the Phase-1 model's own output,
LoRA merges faithfully, CoFiTune scales gradients as specified, bad options stop early."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from cft.data.demo import make_examples
from cft.errors import ConfigError
from cft.models import build_model, build_tokenizer, load_model
from cft.strategies.base import Strategy, StrategyContext
from cft.training.loop import TrainSettings, fit

ARCH = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
HEAD_DIM = 8


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("base")
    build_model(ARCH, tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def fresh(base_dir):
    return load_model(str(base_dir), dtype="fp32")[0]


def data(lang="es", n=4):
    return make_examples(["repeat", "reverse", "number"], [lang], n, seed=0)


def context(tmp_path, tok, base_dir, phase1_dir=None, counterpart=None, phase2_size=0, seed=0, **kw):
    phase1_dir = phase1_dir or base_dir
    return StrategyContext(
        base_ref=str(base_dir),
        phase1_dir=Path(phase1_dir),
        tokenizer=tok,
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        seed=seed,
        phase2_size=phase2_size,
        counterpart=(lambda: list(counterpart)) if counterpart is not None else list,
        counterpart_spec={"name": "demo_en"},
        phase1_key=f"p1-{Path(phase1_dir).name}",
        load_phase1=lambda: load_model(str(phase1_dir), dtype="fp32")[0],
        max_length=64,
        **kw,
    )


def train(model, tok, examples, hooks, steps=2, **settings):
    values = dict(
        lr=1e-2,
        max_steps=steps,
        global_batch_size=4,
        micro_batch_size=2,
        warmup_steps=0,
        scheduler="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=0,
    )
    values.update(settings)
    model, _, _ = fit(model, tok, examples, settings=TrainSettings(**values), max_length=64, hooks=hooks, phase="phase2")
    return model


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_frozen_exactly(before, model, frozen_names):
    after = dict(model.named_parameters())
    for name, old in before.items():
        if name in frozen_names:
            assert torch.equal(after[name], old), f"{name} is frozen but changed"
        else:
            assert not torch.equal(after[name], old), f"{name} is trainable but did not change"


def model_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=300, **ARCH)


# ---------------------------------------------------------------- layer freezing


def test_lf_h1_freezes_seeded_random_layers_exactly(tmp_path, tok, base_dir):
    from cft.strategies.lf_h1 import RandomLayerFreeze

    strategy = RandomLayerFreeze(k=2)
    strategy.validate(model_config())
    model = strategy.prepare(fresh(base_dir), context(tmp_path, tok, base_dir))
    layers = [int(x) for x in strategy.report()["frozen_layers"].split(",")]
    assert len(layers) == 2
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if any(f"layers.{i}." in n for i in layers)}
    # The same seed picks the same layers, another seed (here) other ones.
    again = RandomLayerFreeze(k=2)
    again.prepare(fresh(base_dir), context(tmp_path, tok, base_dir))
    other = RandomLayerFreeze(k=2)
    other.prepare(fresh(base_dir), context(tmp_path, tok, base_dir, seed=1))
    assert again.layers == strategy.layers and other.layers != strategy.layers
    before = snapshot(model)
    model = train(model, tok, data(), strategy)
    assert_frozen_exactly(before, model, frozen)
    report = strategy.report()
    assert report["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report["trainable_params"] < report["total_params"]


def perturbed_checkpoint(base_dir, out, changes):
    """A 'Phase-1' checkpoint: base weights with chosen (module, layer[, head]) slices moved by chosen amounts."""
    model, tok = load_model(str(base_dir), dtype="fp32")
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params.values():  # a small change everywhere, so every rank is well defined
            if p.dim() == 2:
                p.add_(0.001 * p.abs().mean() * torch.randn(p.shape, generator=gen))
        for (module, layer, head), size in changes.items():
            block = "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            p = params[f"model.layers.{layer}.{block}.{module}.weight"]
            rows = slice(None) if head is None else slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
            p[rows] += size * p[rows].abs().mean() * torch.randn(p[rows].shape, generator=gen)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_lf_h2_freezes_the_layers_that_changed_most(tmp_path, tok, base_dir):
    from cft.strategies.lf_h2 import ChangeRankedFreeze

    moved = {
        ("q_proj", 1, None): 0.5,
        ("q_proj", 3, None): 0.3,
        ("q_proj", 0, None): 0.1,
        ("k_proj", 0, None): 0.4,
        ("k_proj", 2, None): 0.2,
        ("v_proj", 2, None): 0.6,
        ("v_proj", 3, None): 0.5,
        ("o_proj", 1, None): 9.0,
    }  # o_proj is not ranked: no effect on the choice
    phase1 = perturbed_checkpoint(base_dir, tmp_path / "phase1", moved)
    strategy = ChangeRankedFreeze(k=2, selection="layer", change="relative")
    strategy.validate(model_config())
    ctx = context(tmp_path, tok, base_dir, phase1_dir=phase1)
    model = strategy.prepare(fresh(phase1), ctx)
    assert strategy.selected == {"q_proj": [1, 3], "k_proj": [0, 2], "v_proj": [2, 3]}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    expected = {f"model.layers.{layer}.self_attn.{m}.weight" for m, layers in strategy.selected.items() for layer in layers}
    assert frozen == expected
    report = strategy.report()
    assert report["frozen/q_proj"] == "1,3" and report["frozen/v_proj"] == "2,3" and report["k"] == 2
    # The change table with its ranks is in the run folder (and offered as a tracker table).
    rows = list(csv.DictReader(open(tmp_path / "run" / "lf_h2_frozen.csv")))
    q1 = next(r for r in rows if r["module"] == "q_proj" and r["layer"] == "1")
    assert q1["rank"] == "1" and q1["frozen"] == "True"
    assert len(rows) == 7 * 4 and "lf_h2_changes" in strategy.tables()  # every projection of every layer
    assert sum(r["frozen"] == "True" for r in rows) == 6
    # The change is computed once per (base, Phase-1 model): a second run reuses it.
    again = ChangeRankedFreeze(k=1, modules=["v_proj"], selection="layer", change="relative")
    again.prepare(fresh(phase1), ctx)
    assert again.selected == {"v_proj": [2]}
    assert len([p for p in (tmp_path / "cache" / "layer_changes").iterdir() if p.is_dir()]) == 1
    before = snapshot(model)
    model = train(model, tok, data(), strategy)
    assert_frozen_exactly(before, model, frozen)


def test_lf_h2_top_heads_keeps_the_most_changed_heads_anywhere(tmp_path, tok, base_dir):
    from cft.strategies.lf_h2 import ChangeRankedFreeze

    moved = {
        ("q_proj", 2, 3): 0.9,
        ("q_proj", 0, 1): 0.7,
        ("k_proj", 1, 0): 0.8,
        ("k_proj", 3, 1): 0.6,
        ("v_proj", 0, 0): 0.5,
        ("v_proj", 0, 1): 0.4,
    }
    phase1 = perturbed_checkpoint(base_dir, tmp_path / "phase1", moved)
    strategy = ChangeRankedFreeze(k=2, selection="top_heads", change="relative")
    strategy.validate(model_config())
    model = strategy.prepare(fresh(phase1), context(tmp_path, tok, base_dir, phase1_dir=phase1))
    assert strategy.selected == {"q_proj": [(0, 1), (2, 3)], "k_proj": [(1, 0), (3, 1)], "v_proj": [(0, 0), (0, 1)]}
    assert strategy.report()["frozen/q_proj"] == "L0H1,L2H3"
    before = snapshot(model)
    model = train(model, tok, data(), strategy)
    after = dict(model.named_parameters())
    for module, units in strategy.selected.items():
        for layer, head in units:
            name = f"model.layers.{layer}.self_attn.{module}.weight"
            rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
            assert torch.equal(after[name][rows], before[name][rows]), (name, head)
            others = torch.ones(after[name].shape[0], dtype=torch.bool)
            others[rows] = False
            for layer2, head2 in units:  # e.g. both KV heads of v_proj in layer 0 are kept
                if layer2 == layer:
                    others[head2 * HEAD_DIM : (head2 + 1) * HEAD_DIM] = False
            if others.any():
                assert not torch.equal(after[name][others], before[name][others])


def test_lf_h2_per_head_freezes_each_heads_top_layers_exactly(tmp_path, tok, base_dir):
    """The paper's LF_H2: for every head and each of q/k/v, the k layers where that head's slice changed most
    (by ||W_p1 - W_base||) stay bit-identical; every other slice trains. K/V heads are the 2 KV heads (GQA)."""
    from cft.strategies.lf_h2 import ChangeRankedFreeze

    # Per (module, layer, head): how far Phase 1 moved that slice (the rest moves a little everywhere).
    moved = {
        ("q_proj", 3, 0): 0.9, ("q_proj", 1, 0): 0.8,  # head 0 of q: layers 3 and 1
        ("q_proj", 0, 1): 0.9, ("q_proj", 2, 1): 0.7,  # head 1 of q: layers 0 and 2
        ("k_proj", 2, 1): 0.9, ("k_proj", 3, 1): 0.6,  # KV head 1 of k: layers 2 and 3
        ("v_proj", 0, 0): 0.9, ("v_proj", 1, 0): 0.8,  # KV head 0 of v: layers 0 and 1
    }  # fmt: skip
    phase1 = perturbed_checkpoint(base_dir, tmp_path / "phase1", moved)
    strategy = ChangeRankedFreeze(k=2)  # the default: selection=per_head, change=norm
    strategy.validate(model_config())
    model = strategy.prepare(fresh(phase1), context(tmp_path, tok, base_dir, phase1_dir=phase1))
    chosen = {m: {(layer, head) for layer, head in units} for m, units in strategy.selected.items()}
    assert {(3, 0), (1, 0), (0, 1), (2, 1)} <= chosen["q_proj"]
    assert {(2, 1), (3, 1)} <= chosen["k_proj"] and {(0, 0), (1, 0)} <= chosen["v_proj"]
    # k layers for every head of every module: 4 q heads, 2 KV heads of k and v.
    heads = {"q_proj": 4, "k_proj": 2, "v_proj": 2}
    for module, n in heads.items():
        for head in range(n):
            assert len([u for u in chosen[module] if u[1] == head]) == 2, (module, head)
    assert strategy.report()["frozen_slices"] == 2 * (4 + 2 + 2)
    # The ranking is by the norm of the difference, per head: check one head by hand.
    import pandas as pd

    table = pd.read_csv(tmp_path / "run" / "lf_h2_frozen.csv")
    before_p1 = dict(fresh(base_dir).named_parameters())
    after_p1 = dict(fresh(phase1).named_parameters())
    for layer in range(4):
        name = f"model.layers.{layer}.self_attn.q_proj.weight"
        by_hand = float(torch.linalg.vector_norm((after_p1[name] - before_p1[name]).detach()[0:HEAD_DIM]))
        row = table[(table.module == "q_proj") & (table.layer == layer) & (table["head"] == 0)].iloc[0]
        assert row["change"] == pytest.approx(by_hand, rel=1e-5)
    # Head by head: the chosen slices are bit-identical after training, every other slice changed.
    before = snapshot(model)
    model = train(model, tok, data(), strategy)
    after = dict(model.named_parameters())
    for module, n in heads.items():
        for layer in range(4):
            name = f"model.layers.{layer}.self_attn.{module}.weight"
            for head in range(n):
                rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
                same = torch.equal(after[name][rows], before[name][rows])
                assert same == ((layer, head) in chosen[module]), (module, layer, head)


def test_lf_h2_refuses_a_phase1_model_identical_to_the_base_and_ranks_ties_by_layer(tmp_path, tok, base_dir):
    from cft.measures.layers import layer_changes, rank_layers
    from cft.strategies.lf_h2 import ChangeRankedFreeze

    strategy = ChangeRankedFreeze(k=2)
    with pytest.raises(ConfigError, match="every change from the base to the Phase-1 model is zero: they are the same weights"):
        strategy.prepare(fresh(base_dir), context(tmp_path, tok, base_dir, phase1_dir=base_dir))
    # Equal changes rank in layer order (not in the string order of tensor names: layers.10 < layers.2).
    frame = layer_changes(base_dir, base_dir)
    frame["change"] = 0.0
    ranks = rank_layers(frame)
    q = ranks[ranks.module == "q_proj"].sort_values("layer")
    assert list(q["rank"]) == [1, 2, 3, 4]


# ---------------------------------------------------------------- replay


def test_english_replay_share_is_exact_and_seeded(tmp_path, tok, base_dir):
    from cft.strategies.er import EnglishReplay

    phase2 = data("es", 20)  # 60 examples
    counterpart = data("en", 20)
    for ratio, n in ((0.1, 6), (0.25, 15), (1.0, 60)):
        strategy = EnglishReplay(ratio=ratio)
        strategy.validate(model_config())
        mixed = strategy.phase2_data(list(phase2), context(tmp_path, tok, base_dir, counterpart=counterpart, phase2_size=60))
        assert mixed[:60] == phase2 and len(mixed) == 60 + n
        assert all(ex in counterpart for ex in mixed[60:]) and len(set(map(id, mixed[60:]))) == n
        assert strategy.report()["replay_examples"] == n and strategy.report()["replay_share"] == pytest.approx(n / 60)
    a = EnglishReplay(0.1).phase2_data([], context(tmp_path, tok, base_dir, counterpart=counterpart, phase2_size=60))
    b = EnglishReplay(0.1).phase2_data([], context(tmp_path, tok, base_dir, counterpart=counterpart, phase2_size=60))
    c = EnglishReplay(0.1).phase2_data([], context(tmp_path, tok, base_dir, counterpart=counterpart, phase2_size=60, seed=3))
    assert a == b and a != c


def test_english_replay_needs_a_big_enough_counterpart(tmp_path, tok, base_dir):
    from cft.strategies.er import EnglishReplay

    with pytest.raises(ConfigError, match="no `counterpart`"):
        EnglishReplay(0.1).phase2_data(data(), context(tmp_path, tok, base_dir, phase2_size=12))
    with pytest.raises(ConfigError, match="13 examples needed but only 12"):
        EnglishReplay(1.0).phase2_data(
            data("es", 5)[:13], context(tmp_path, tok, base_dir, counterpart=data("en"), phase2_size=13)
        )


def test_generative_replay_is_the_phase1_models_own_output_and_cached(tmp_path, tok, base_dir):
    from cft.data.format import render_prompt
    from cft.models.generate import generate
    from cft.strategies.gr import GenerativeReplay

    phase1 = tmp_path / "phase1"
    model = fresh(base_dir)
    train(model, tok, data("en", 8), None, steps=10, lr=3e-3)  # a Phase-1 model that answers something
    model.save_pretrained(phase1)
    tok.save_pretrained(phase1)
    counterpart = data("en", 10)
    loads = []
    ctx = context(tmp_path, tok, base_dir, phase1_dir=phase1, counterpart=counterpart, phase2_size=40)
    ctx.load_phase1 = lambda: loads.append(1) or load_model(str(phase1), dtype="fp32")[0]
    strategy = GenerativeReplay(ratio=0.1, max_new_tokens=6, batch_size=3, keep_empty=True, keep_capped=True)
    strategy.validate(model_config())
    mixed = strategy.phase2_data(data("es"), ctx)
    replay = mixed[12:]
    assert len(replay) == 4 and loads == [1]
    own = generate(
        load_model(str(phase1), dtype="fp32")[0],
        tok,
        [render_prompt(tok, ex) for ex in replay],
        max_new_tokens=6,
        batch_size=1,
        progress=False,
    )
    assert [ex.output for ex in replay] == own
    assert {(ex.instruction, ex.input) for ex in replay} <= {(ex.instruction, ex.input) for ex in counterpart}
    report = strategy.report()
    assert report["replay_examples"] == 4 and report["replay_share"] == pytest.approx(0.1)
    assert report["generation/requested"] == 4 and "generation/mean_new_tokens" in report
    # Same Phase-1 model, counterpart, size and settings: the cached set is reused, nothing generated.
    again = GenerativeReplay(ratio=0.1, max_new_tokens=6, batch_size=3, keep_empty=True, keep_capped=True)
    assert again.phase2_data(data("es"), ctx)[12:] == replay and loads == [1]
    # Another size is another artifact.
    GenerativeReplay(ratio=0.05, max_new_tokens=6, keep_empty=True).phase2_data(data("es"), ctx)
    assert loads == [1, 1]
    assert len([p for p in (tmp_path / "cache" / "generative_replay").iterdir() if p.is_dir()]) == 2


def test_generative_replay_passes_its_generation_levers_and_keeps_its_cache_key(tmp_path, tok, base_dir, monkeypatch):
    import cft.models.generate as gen
    from cft.config.schema import check_target_node
    from cft.strategies.gr import GenerativeReplay

    seen = []
    real = gen.generate
    monkeypatch.setattr(gen, "generate", lambda *a, **k: seen.append(k) or real(*a, **k))
    ctx = context(tmp_path, tok, base_dir, counterpart=data("en", 10), phase2_size=30)
    loads = []
    ctx.load_phase1 = lambda: loads.append(1) or fresh(base_dir)
    opts = {"ratio": 0.1, "max_new_tokens": 4, "keep_empty": True, "keep_capped": True}
    fast = GenerativeReplay(**opts, cache="static", width_multiple=8).phase2_data(data("es", 10), ctx)
    assert (seen[0]["cache"], seen[0]["width_multiple"]) == ("static", 8) and loads == [1]
    # The levers do not change greedy outputs (tests/test_generate.py): the cached set serves the default too.
    assert GenerativeReplay(**opts).phase2_data(data("es", 10), ctx) == fast and loads == [1]
    node = {"_target_": "cft.strategies.gr.GenerativeReplay", "ratio": 0.05}
    assert check_target_node(node, "strategy") == []
    assert any("cache" in e for e in check_target_node({**node, "cache": "paged"}, "strategy"))
    assert any("width_multiple" in e for e in check_target_node({**node, "width_multiple": 0}, "strategy"))


def test_generative_replay_leaves_out_empty_responses_and_reports_the_share(tmp_path, tok, base_dir):
    from cft.strategies.gr import GenerativeReplay

    class Silent(torch.nn.Module):  # a "Phase-1 model" that answers with EOS at once
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.training = False

        def generate(self, input_ids, max_new_tokens, **kw):
            return torch.cat([input_ids, torch.full((input_ids.shape[0], 1), tok.eos_token_id)], dim=1)

    ctx = context(tmp_path, tok, base_dir, counterpart=data("en", 10), phase2_size=30)
    ctx.load_phase1 = Silent
    strategy = GenerativeReplay(ratio=0.1)
    mixed = strategy.phase2_data(data("es", 10), ctx)
    assert len(mixed) == 30
    report = strategy.report()
    assert report["replay_examples"] == 0 and report["replay_share"] == 0 and report["generation/empty"] == 3


# ---------------------------------------------------------------- LoRA


def test_lora_trains_adapters_only_and_merges_to_the_same_outputs(tmp_path, tok, base_dir):
    from cft.strategies.lora import LoRA

    strategy = LoRA(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    strategy.validate(model_config())
    ctx = context(tmp_path, tok, base_dir)
    model = strategy.prepare(fresh(base_dir), ctx)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert strategy.report()["trainable_params"] == sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    model = train(model, tok, data(), strategy)
    ids = tok("<|user|>\nabc<|end|>\n", return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    merged = strategy.finalize(model, ctx)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    base_logits = fresh(base_dir)(input_ids=ids).logits.detach()
    assert not torch.allclose(adapted, base_logits, atol=1e-4)  # the adapters learned something
    torch.testing.assert_close(merged_logits, adapted, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- CoFiTune


def test_cofitune_normalization_by_hand():
    from cft.strategies.cofitune import default_layers, normalize

    # mean 2, sample std 1 -> z = (-1, 0, 1) -> |tanh z|
    t = torch.tanh(torch.tensor(1.0)).item()
    assert normalize(torch.tensor([1.0, 2.0, 3.0])).tolist() == pytest.approx([t, 0.0, t])
    assert normalize(torch.tensor([5.0, 5.0])).tolist() == [0.0, 0.0]
    assert default_layers(32) == list(range(8, 16))  # 1-based layers 9..16 = (N/4, N/2]
    assert default_layers(4) == [1] and default_layers(2) == [0]


def test_cofitune_importance_is_zero_exactly_for_dead_units(tok, base_dir):
    """A unit whose output is always 0 cannot change the KL between the two dropout passes."""
    from cft.data.format import PadCollator, tokenize_examples
    from cft.strategies.cofitune import unit_importance

    model = fresh(base_dir)
    with torch.no_grad():
        mlp, attn = model.model.layers[1].mlp, model.model.layers[1].self_attn
        mlp.up_proj.weight[5] = 0  # FFN unit 5 outputs silu(gate) * 0 = 0
        attn.o_proj.weight[:, 2 * HEAD_DIM : 3 * HEAD_DIM] = 0  # head 2 writes nothing
    tokenized, _ = tokenize_examples(tok, data(n=2), 64)
    batches = [PadCollator(tok.pad_token_id)(tokenized)]
    torch.manual_seed(0)
    raw = unit_importance(model, batches, [1], heads=True, ffn=True, dropout=0.1, num_heads=4)
    assert raw["ffn.1"][5] == 0 and raw["heads.1"][2] == 0
    assert (raw["ffn.1"].count_nonzero() == 63) and (raw["heads.1"].count_nonzero() == 3)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_cofitune_trains_the_region_and_scales_its_gradients(tmp_path, tok, base_dir):
    from cft.strategies.cofitune import CoFiTune

    strategy = CoFiTune(
        modules=["up_proj", "down_proj", "q_proj", "k_proj", "o_proj"], importance_examples=8, importance_batch_size=4
    )
    strategy.validate(model_config())
    ctx = context(tmp_path, tok, base_dir)
    examples = strategy.phase2_data(data(), ctx)
    model = strategy.prepare(fresh(base_dir), ctx)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        f"model.layers.1.{b}.{m}.weight"
        for b, m in [
            ("mlp", "up_proj"),
            ("mlp", "down_proj"),
            ("self_attn", "q_proj"),
            ("self_attn", "k_proj"),
            ("self_attn", "o_proj"),
        ]
    }
    ffn, heads = strategy.importance["ffn.1"], strategy.importance["heads.1"]
    assert ffn.shape == (64,) and heads.shape == (4,)
    assert ((ffn >= 0) & (ffn < 1)).all() and ffn.max() > 0.5  # |tanh z|: the outliers get close to 1
    # Gradients of each unit are multiplied by (1 - its importance) before the optimizer step.
    params = dict(model.named_parameters())
    grads = {n: torch.randn_like(params[n]) for n in trainable}
    for n in trainable:
        params[n].grad = grads[n].clone()
    strategy.on_before_optimizer_step(model)
    up, down = "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(params[up].grad, grads[up] * (1 - ffn)[:, None])
    torch.testing.assert_close(params[down].grad, grads[down] * (1 - ffn)[None, :])
    q, k, o = (f"model.layers.1.self_attn.{m}.weight" for m in ("q_proj", "k_proj", "o_proj"))
    per_row = (1 - heads).repeat_interleave(HEAD_DIM)
    torch.testing.assert_close(params[q].grad, grads[q] * per_row[:, None])
    torch.testing.assert_close(params[o].grad, grads[o] * per_row[None, :])
    kv = (1 - heads.view(2, 2).mean(1)).repeat_interleave(HEAD_DIM)  # 2 KV heads, each serving 2 query heads
    torch.testing.assert_close(params[k].grad, grads[k] * kv[:, None])
    rows = list(csv.DictReader(open(tmp_path / "run" / "cofitune_importance.csv")))
    assert len(rows) == 64 + 4
    # The importance is an artifact: another run with the same settings reuses it.
    again = CoFiTune(
        modules=["up_proj", "down_proj", "q_proj", "k_proj", "o_proj"], importance_examples=8, importance_batch_size=4
    )
    again.phase2_data(examples, ctx)
    again.prepare(fresh(base_dir), ctx)
    assert torch.equal(again.importance["ffn.1"], ffn)
    assert len([p for p in (tmp_path / "cache" / "cofitune_importance").iterdir() if p.is_dir()]) == 1
    # And it trains: the region moves, everything else stays bit-identical.
    before = snapshot(model)
    model = train(model, tok, examples, strategy)
    assert_frozen_exactly(before, model, set(before) - trainable)


# ---------------------------------------------------------------- Spectrum


def test_spectrum_snr_by_hand():
    from cft.strategies.spectrum import snr, top_count

    # Singular values 8, 4 and six 1s: IQR = 1.75 - 1 (linear quantiles) -> sigma = 0.75 / 1.349, the
    # Marchenko-Pastur bound for a square matrix is 2 sigma = 1.11: signal 12, noise 6, SNR 2 / max 8.
    assert snr(torch.diag(torch.tensor([8.0, 4, 1, 1, 1, 1, 1, 1]))) == pytest.approx(0.25)
    w = torch.randn(16, 24)
    assert snr(0.1 * w) == pytest.approx(10 * snr(w))  # scale-dependent through max(S), as published
    assert top_count(0.25, 4) == 1 and top_count(0.25, 32) == 8 and top_count(0.3, 4) == 2


def test_spectrum_trains_the_highest_snr_layers(tmp_path, tok, base_dir):
    from cft.strategies.spectrum import Spectrum

    model = fresh(base_dir)
    with torch.no_grad():  # scaling by 0.1 multiplies the SNR by 10: layer 2's q_proj ranks first
        model.model.layers[2].self_attn.q_proj.weight.mul_(0.1)
        model.model.layers[1].self_attn.v_proj.weight.mul_(0.1)
    strategy = Spectrum(fraction=0.25, modules=["q_proj", "v_proj"])
    strategy.validate(model_config())
    model = strategy.prepare(model, context(tmp_path, tok, base_dir))
    assert strategy.selected == {"q_proj": [2], "v_proj": [1]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.layers.2.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight"}
    report = strategy.report()
    assert report["trained/q_proj"] == "2" and report["trainable_params"] == 32 * 32 + 16 * 32
    assert (tmp_path / "run" / "spectrum_snr.csv").exists() and len(strategy.tables()["spectrum_snr"][1]) == 8
    before = snapshot(model)
    model = train(model, tok, data(), strategy)
    assert_frozen_exactly(before, model, set(before) - trainable)


# ---------------------------------------------------------------- combinations and bad options


def test_combination_from_the_same_configs(tmp_path, tok, base_dir):
    from helpers import compose
    from hydra.utils import instantiate

    cfg = compose(
        [
            "model=tiny",
            "strategy=combine",
            "+strategy@strategy.parts.er=er10",
            "+strategy@strategy.parts.lf=lf_h1",
            "strategy.parts.lf.k=2",
            "strategy.parts.er.ratio=0.25",
        ]
    )
    strategy = instantiate(cfg.strategy)
    assert list(strategy.parts) == ["er", "lf"]
    strategy.validate(model_config())
    ctx = context(tmp_path, tok, base_dir, counterpart=data("en", 10), phase2_size=12)
    mixed = strategy.phase2_data(data(), ctx)
    assert len(mixed) == 12 + 3
    model = strategy.prepare(fresh(base_dir), ctx)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    before = snapshot(model)
    model = train(model, tok, mixed, strategy)
    assert_frozen_exactly(before, model, frozen)
    report = strategy.report()
    assert report["er/replay_examples"] == 3 and len(report["lf/frozen_layers"].split(",")) == 2
    assert report["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report["parts"] == "er,lf"


def test_every_strategy_config_instantiates(tmp_path):
    from helpers import REPO, compose
    from hydra.utils import instantiate

    names = sorted(p.stem for p in (REPO / "conf" / "strategy").glob("*.yaml"))
    assert {"full", "lf_h1", "lf_h2", "gr5", "gr10", "er10", "lora", "cofitune", "spectrum", "combine"} <= set(names)
    for name in names:
        strategy = instantiate(compose(["model=tiny", f"strategy={name}"]).strategy)
        assert isinstance(strategy, Strategy)
        if name not in ("combine", "lf_h1", "lf_h2"):  # k=10 > 4 layers is rejected (tested below)
            strategy.validate(model_config())


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("lf_h1", {"k": 10}, "strategy.k=10 must be an integer from 1 to 4"),
        ("lf_h2", {"k": 5}, "strategy.k=5 must be an integer from 1 to 4"),
        ("lf_h2", {"k": 9, "selection": "top_heads"}, "strategy.k=9 must be an integer from 1 to 8"),
        ("lf_h2", {"k": 5}, "strategy.k=5 must be an integer from 1 to 4 (the model has 4 layers, ranked per head)"),
        ("lf_h2", {"modules": ["query"]}, "unknown module name(s) ['query']"),
        ("lf_h2", {"selection": "neuron", "k": 2}, "strategy.selection='neuron'"),
        ("er10", {"ratio": 1.5}, "strategy.ratio=1.5 must be a number in (0, 1]"),
        ("gr5", {"ratio": 0}, "strategy.ratio=0 must be a number in (0, 1]"),
        ("lora", {"target_modules": ["q_proj", "qkv"]}, "strategy.target_modules: unknown module name(s) ['qkv']"),
        ("lora", {"r": 0}, "strategy.r=0"),
        ("cofitune", {"modules": ["ffn"]}, "unknown module name(s) ['ffn']"),
        ("cofitune", {"layers": [1, 7]}, "[7] not layer indices of a model with 4 layers"),
        ("spectrum", {"fraction": 0}, "strategy.fraction=0 must be a number in (0, 1]"),
    ],
)
def test_bad_options_are_rejected_before_training(name, options, message):
    from helpers import compose
    from hydra.utils import instantiate

    strategy = instantiate(
        compose(["model=tiny", f"strategy={name}", *[f"strategy.{k}={json.dumps(v)}" for k, v in options.items()]]).strategy
    )
    with pytest.raises(ConfigError) as err:
        strategy.validate(model_config())
    assert message in str(err.value)


def test_combination_validates_its_parts():
    from helpers import compose
    from hydra.utils import instantiate

    empty = instantiate(compose(["strategy=combine"]).strategy)
    with pytest.raises(ConfigError, match="has no parts"):
        empty.validate(model_config())
    bad = instantiate(
        compose(
            ["model=tiny", "strategy=combine", "+strategy@strategy.parts.gr=gr5", "+strategy@strategy.parts.lf=lf_h1"]
        ).strategy
    )
    with pytest.raises(ConfigError, match="strategy.k=10"):
        bad.validate(model_config())
