"""The GPU kit (issue 22) on the CPU: each throughput lever behind its train setting reaches its code
path and trains correctly; the bundle covers what the pipeline imports on the GPU image; the one-command
kit (bench/gpu_e2e.sh --cpu-smoke) runs the whole pipeline on the tiny shape."""

from __future__ import annotations

import pytest
import torch

from cft.errors import ConfigError


def _data(n=8, lengths=None):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        width = lengths[i] if lengths else 12
        ids = torch.randint(5, 200, (width,), generator=g).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * width, "labels": ids})
    return out


def _train(tiny_model_dir, data=None, hooks=None, collator=None, **kw):
    from cft.data.format import PadCollator
    from cft.models import load_model
    from cft.training.loop import TrainSettings, train_phase

    model, tok = load_model(str(tiny_model_dir))
    settings = TrainSettings(**{"lr": 1e-3, "max_steps": 2, "global_batch_size": 4, "micro_batch_size": 2, "seed": 0, **kw})
    return train_phase(
        model,
        data or _data(),
        collator=collator or PadCollator(tok.pad_token_id),
        settings=settings,
        hooks=hooks,
        phase="phase2",
    )


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# --- the train schema ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"sdpa_backend": "fastest"},
        {"pack_width_multiple": 0},
        {"pack_width_multiple": 8192},
        {"adamw": "apex"},
        {"sync_every_step": "yes"},
        {"tokens_per_micro_batch": 8},
    ],
)
def test_lever_settings_are_typed_and_ranged(change):
    from pydantic import ValidationError

    from cft.config.schema import TrainSettings

    TrainSettings(lr=1e-3)  # the defaults are valid
    with pytest.raises(ValidationError) as err:
        TrainSettings(lr=1e-3, **change)
    assert next(iter(change)) in str(err.value)


def test_lever_settings_reach_the_loop_from_the_composed_config():
    from helpers import compose

    from cft.recipes.common import phase_train_config, train_settings

    cfg = compose(["model=tiny", "train.sdpa_backend=math", "train.adamw=for_loop", "+train.phase2.tokens_per_micro_batch=64"])
    s2 = train_settings(phase_train_config(cfg.train, "phase2"), seed=0)
    s1 = train_settings(phase_train_config(cfg.train, "phase1"), seed=0)
    assert (s2.sdpa_backend, s2.adamw, s2.tokens_per_micro_batch) == ("math", "for_loop", 64)
    assert s1.tokens_per_micro_batch is None


# --- (a) attention that plans no new graph per shape ----------------------------------------------


def test_sdpa_backend_holds_for_the_whole_phase_and_trains_the_same(tiny_model_dir):
    seen = []

    class Probe:
        def penalty(self, model, batch):
            seen.append((torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()))
            return None

        def on_before_optimizer_step(self, model):
            pass

    math_model, _ = _train(tiny_model_dir, hooks=Probe(), sdpa_backend="math")
    assert seen and all(flags == (False, True) for flags in seen)  # only the math kernel, at every micro-batch
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the phase
    auto_model, _ = _train(tiny_model_dir, sdpa_backend="auto")
    assert torch.allclose(_weights(math_model), _weights(auto_model), atol=1e-5)


def test_sdpa_backend_that_the_cpu_lacks_says_so(tiny_model_dir):
    with pytest.raises(ConfigError, match="train.sdpa_backend=efficient needs a CUDA GPU"):
        _train(tiny_model_dir, sdpa_backend="efficient")


def test_pack_width_multiple_pads_rows_and_keeps_the_loss(tiny_model):
    from cft.data.packing import PackingCollator

    model, tok = tiny_model
    feats = _data(4, lengths=[30, 7, 19, 12])
    plain = PackingCollator(tok.pad_token_id)(feats)
    rounded = PackingCollator(tok.pad_token_id, width_multiple=64)(feats)
    assert plain["input_ids"].shape[1] == 30 and rounded["input_ids"].shape[1] == 64
    assert int((rounded["labels"] != -100).sum()) == int((plain["labels"] != -100).sum())
    one_row = PackingCollator(tok.pad_token_id, single_row=True, width_multiple=64)(feats)
    assert one_row["input_ids"].shape == (1, 128)
    model.config.use_cache = False
    with torch.no_grad():
        a, b, c = (model(**batch).loss for batch in (plain, rounded, one_row))
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


def test_pack_width_multiple_reaches_fit(tiny_model_dir, monkeypatch):
    from cft.data import packing
    from cft.data.records import Example
    from cft.models import load_model
    from cft.training.loop import TrainSettings, fit

    widths = []
    real_call = packing.PackingCollator.__call__

    def spy(self, features, *a, **k):
        out = real_call(self, features, *a, **k)
        widths.append(out["input_ids"].shape[1])
        return out

    monkeypatch.setattr(packing.PackingCollator, "__call__", spy)
    model, tok = load_model(str(tiny_model_dir))
    examples = [Example(instruction=f"say {'a' * (i % 7)}", input="", output="b" * (3 + i % 5)) for i in range(8)]
    settings = TrainSettings(lr=1e-3, max_steps=2, global_batch_size=4, micro_batch_size=2, pack_width_multiple=32)
    _, stats, _ = fit(model, tok, examples, settings=settings, max_length=64, packing=True)
    assert widths and all(w % 32 == 0 for w in widths) and stats.steps == 2


# --- (b) fused AdamW ----------------------------------------------------------------------------


def test_adamw_auto_is_fused_on_cuda_and_foreach_elsewhere():
    from cft.training.loop import TrainSettings, adamw

    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    s = TrainSettings(lr=1e-3)
    assert adamw(params, s, on_cuda=True).defaults["fused"] is True
    cpu = adamw(params, s, on_cuda=False).defaults
    assert cpu["foreach"] is True and not cpu["fused"]
    assert adamw(params, s, on_cuda=True, deepspeed=True).defaults["foreach"] is True
    assert adamw(params, TrainSettings(lr=1e-3, adamw="for_loop"), on_cuda=True).defaults["foreach"] is False


def test_fused_adamw_trains_like_foreach(tiny_model_dir, monkeypatch):
    from cft.training import loop

    made = []
    real = loop.adamw
    monkeypatch.setattr(loop, "adamw", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    fused, _ = _train(tiny_model_dir, adamw="fused")
    foreach, _ = _train(tiny_model_dir, adamw="foreach")
    assert made[0].defaults["fused"] is True and made[1].defaults["foreach"] is True
    assert torch.allclose(_weights(fused), _weights(foreach), atol=1e-5)


# --- (c) no host sync per step ------------------------------------------------------------------


def _count_items(monkeypatch) -> list[int]:
    """Host syncs the loop itself asks for (`.item()` called from cft/training/loop.py)."""
    import sys

    calls = [0]
    real_item = torch.Tensor.item

    def item(self):
        calls[0] += sys._getframe(1).f_code.co_filename.endswith("loop.py")
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", item)
    return calls


def test_loss_is_read_at_log_steps_only(tiny_model_dir, monkeypatch):
    calls = _count_items(monkeypatch)
    _, stats = _train(tiny_model_dir, max_steps=8, log_every=4, max_grad_norm=None)
    lazy = calls[0]
    calls[0] = 0
    _, stats_sync = _train(tiny_model_dir, max_steps=8, log_every=4, max_grad_norm=None, sync_every_step=True)
    assert lazy <= 2 * 2  # two checks (steps 4 and 8), each reads the bad-step flag and the loss
    assert calls[0] >= 8 * 2  # every step: each micro-batch's finite check, plus the step's loss
    assert stats.final_loss == pytest.approx(stats_sync.final_loss, abs=1e-6)


def test_nan_loss_found_at_the_log_step_names_its_step_and_lr(tiny_model_dir):
    from cft.training.loop import TrainingError

    class NanAtThird:
        n = 0

        def penalty(self, model, batch):
            self.n += 1
            return torch.tensor(float("nan")) if self.n == 5 else None  # micro-batch 5 = step 3

        def on_before_optimizer_step(self, model):
            pass

    with pytest.raises(TrainingError, match=r"phase2: loss is nan at step 3 \(epoch 1, rank 0; lr 0\.001; .*steps 1-6\)"):
        _train(tiny_model_dir, hooks=NanAtThird(), max_steps=6, log_every=10, scheduler="constant")


def test_no_checkpoint_holds_a_nan_step(tiny_model_dir, tmp_path):
    from cft.data.format import PadCollator
    from cft.models import load_model
    from cft.training.loop import TrainingError, TrainSettings, train_phase

    class NanAtSecond:
        n = 0

        def penalty(self, model, batch):
            self.n += 1
            return torch.tensor(float("inf")) if self.n == 3 else None

        def on_before_optimizer_step(self, model):
            pass

    model, tok = load_model(str(tiny_model_dir))
    settings = TrainSettings(lr=1e-3, max_steps=4, global_batch_size=4, micro_batch_size=2, checkpoint_every=1, log_every=10)
    with pytest.raises(TrainingError, match="loss is inf at step 2"):
        train_phase(
            model,
            _data(),
            collator=PadCollator(tok.pad_token_id),
            settings=settings,
            hooks=NanAtSecond(),
            checkpoint_dir=tmp_path,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]


# --- (d) a token budget per micro-batch ---------------------------------------------------------


def test_token_budget_split():
    from cft.training.loop import token_budget_split

    lengths = [10, 40, 20, 20, 5, 100]
    chunks = token_budget_split(range(6), lengths, 60)
    assert chunks == [[5], [1], [2, 3, 0], [4]]  # longest first; 3 x 20 = 60 fits, a 100-token example alone
    assert all(len(c) * max(lengths[j] for j in c) <= 60 for c in chunks if len(c) > 1)
    assert sorted(j for c in chunks for j in c) == list(range(6))


def test_token_budget_trains_like_the_same_example_split(tiny_model_dir, monkeypatch):
    from cft.training import loop

    calls = []
    real = loop.token_budget_split
    monkeypatch.setattr(loop, "token_budget_split", lambda *a: calls.append(real(*a)) or calls[-1])
    by_count, s1 = _train(tiny_model_dir, micro_batch_size=2)
    by_tokens, s2 = _train(tiny_model_dir, micro_batch_size=4, tokens_per_micro_batch=24)  # 2 x 12 tokens each
    assert calls and all(len(c) == 2 for chunks in calls for c in chunks)
    assert torch.allclose(_weights(by_count), _weights(by_tokens), atol=1e-5)
    assert (s1.examples, s1.tokens) == (s2.examples, s2.tokens)


def test_token_budget_with_uneven_lengths_trains(tiny_model_dir):
    data = _data(8, lengths=[40, 3, 9, 27, 12, 5, 33, 18])
    model, stats = _train(tiny_model_dir, data=data, micro_batch_size=4, tokens_per_micro_batch=48, max_steps=4)
    assert stats.steps == 4 and stats.examples == 16 and torch.isfinite(_weights(model)).all()


def test_token_budget_under_deepspeed_says_so(tiny_model_dir):
    with pytest.raises(ConfigError, match="tokens_per_micro_batch works without DeepSpeed"):
        _train(tiny_model_dir, tokens_per_micro_batch=64, deepspeed={"zero_optimization": {"stage": 2}})
