"""Replay generation's throughput levers (cft.models.generate): larger batches, prompts sorted by length or
not, a static KV cache (plain or with transformers' compiled step), prompt widths rounded up. Each must give
the same greedy outputs as one prompt at a time on a tiny model; the static cache must reach generate."""

from __future__ import annotations

import pytest

from cft.errors import ConfigError

PROMPTS = ["a", "hello there, how are you", "xyz", "the quick brown fox jumps", "1 2 3 4", "ok", "a longer prompt of text", "q"]


@pytest.fixture
def spied(tiny_model):
    """The tiny model with every generate call's keyword arguments recorded."""
    model, tok = tiny_model
    calls = []
    inner = model.generate
    model.generate = lambda *a, **k: calls.append(k) or inner(*a, **k)
    return model, tok, calls


@pytest.fixture(scope="module")
def one_at_a_time(tiny_model_dir):
    """One prompt at a time, the reference (computed once for the module, from the same saved weights)."""
    from cft.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    return _gen(model, tok, batch_size=1)


def _gen(model, tok, **kw):
    from cft.models.generate import generate

    return generate(model, tok, PROMPTS, max_new_tokens=8, progress=False, return_finished=True, **kw)


@pytest.mark.parametrize(
    "lever",
    [
        {"batch_size": 3},
        {"batch_size": 8},
        {"batch_size": 3, "sort_by_length": False},
        {"batch_size": 3, "cache": "static"},
        {"batch_size": 8, "cache": "static", "width_multiple": 16},
        {"batch_size": 4, "cache": "static_compiled", "width_multiple": 8},
    ],
)
def test_each_lever_gives_the_greedy_outputs_of_one_prompt_at_a_time(spied, one_at_a_time, lever):
    model, tok, calls = spied
    single, single_done = one_at_a_time
    outputs, done = _gen(model, tok, **lever)
    assert outputs == single and done == single_done
    assert any(o for o in outputs)  # something was generated, so the comparison compares something
    assert len(calls) == -(-len(PROMPTS) // lever["batch_size"])
    cache = lever.get("cache", "dynamic")
    assert all(k.get("cache_implementation") == ("static" if cache != "dynamic" else None) for k in calls)
    if cache != "dynamic":  # transformers compiles the static step only when asked (and on CUDA)
        assert all(k["disable_compile"] is (cache == "static") for k in calls)
    if "width_multiple" in lever:
        assert all(k["input_ids"].shape[1] % lever["width_multiple"] == 0 for k in calls)


def test_sorting_by_length_groups_similar_prompts(spied):
    model, tok, calls = spied
    _gen(model, tok, batch_size=4)
    sorted_widths = [k["input_ids"].shape[1] for k in calls]
    calls.clear()
    _gen(model, tok, batch_size=4, sort_by_length=False)
    unsorted_widths = [k["input_ids"].shape[1] for k in calls]
    assert sorted_widths[0] == max(unsorted_widths) and sum(sorted_widths) < sum(unsorted_widths)  # less padding


def test_an_unknown_cache_or_width_says_so(tiny_model):
    model, tok = tiny_model
    with pytest.raises(ConfigError, match="cache='paged'"):
        _gen(model, tok, cache="paged")
    with pytest.raises(ConfigError, match="width_multiple=0"):
        _gen(model, tok, width_multiple=0)
