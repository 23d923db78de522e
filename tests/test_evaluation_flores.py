"""FLORES-200 bits per byte through lm-eval's rolling log-likelihood, on a tiny model: sentences the
test writes, and (integration) a handful of the real devtest files; the small suite around it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cft.evaluation import build_suite
from cft.evaluation.lmeval import LMEvalTask
from cft.evaluation.scores import flatten
from cft.run import keys

SENTENCES = {
    "eng_Latn": ["The cat sat on the mat.", "It rained all day in the city."],
    "spa_Latn": ["El gato se sentó en la alfombra.", "Llovió todo el día en la ciudad."],
    "tha_Thai": ["แมวนั่งอยู่บนเสื่อ", "ฝนตกทั้งวันในเมือง"],
}


@pytest.fixture(scope="module")
def flores_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("flores")
    (root / "flores200" / "devtest").mkdir(parents=True)
    for code, lines in SENTENCES.items():
        (root / "flores200" / "devtest" / f"{code}.devtest").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _bits_per_byte(model, tok, text: str) -> float:
    """The sentence's bits per byte by hand: -log2 p(tokens) over its UTF-8 bytes, the first token
    predicted from the tokenizer's BOS/EOS as lm-eval's rolling windows do."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    inputs = torch.tensor([[prefix, *ids]])
    with torch.no_grad():
        logits = model(inputs).logits.float()
    logprobs = torch.log_softmax(logits[0, :-1], dim=-1).gather(1, inputs[0, 1:, None]).sum().item()
    return -logprobs / len(text.encode("utf-8")) / math.log(2)


def test_flores_bits_per_byte_on_a_tiny_model(tiny_model, flores_dir, tmp_path):
    model, tok = tiny_model
    task = LMEvalTask("flores", data_dir=flores_dir, languages=["es", "th", "en"], batch_size=2, apply_chat_template=False)
    la, en = task.run(model, tok, out_dir=tmp_path)
    assert (la.ability, en.ability) == ("la", "en") and not la.higher_is_better
    for lang, code in (("es", "spa_Latn"), ("th", "tha_Thai")):
        by_hand = [_bits_per_byte(model, tok, s) for s in SENTENCES[code]]
        assert la.per_language[lang] == pytest.approx(sum(by_hand) / 2, rel=1e-3)  # mean over sentences
        assert sorted(la.items[lang].values()) == pytest.approx(sorted(by_hand), rel=1e-3)
        assert la.language_stderr[lang] == pytest.approx(abs(by_hand[0] - by_hand[1]) / 2, rel=1e-3)
        # lm-eval's pooled figure: all bits over all bytes.
        pooled = sum(b * len(s.encode()) for b, s in zip(by_hand, SENTENCES[code])) / sum(
            len(s.encode()) for s in SENTENCES[code]
        )
        assert la.language_metrics[lang]["bits_per_byte"] == pytest.approx(pooled, rel=1e-3)
    assert la.score == pytest.approx((la.per_language["es"] + la.per_language["th"]) / 2)
    flat = flatten([la, en], {"la": ["flores"]})
    # Lower is better, and the record says so for the task and for the average built on it.
    assert flat[keys.lower_is_better("la/flores")] == 1 and flat[keys.lower_is_better("la_avg")] == 1
    assert flat["la_avg"] == la.score and flat["la_avg_stderr"] > 0 and "en/flores_stderr" in flat


def test_small_suite_keeps_flores_apart_from_xquad_f1():
    from helpers import compose

    cfg = compose(["eval=small"])
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg.eval, resolve=True)
    assert node["averages"] == {"la": ["flores"]}
    suite = build_suite(node)
    assert list(suite) == ["flores", "xquad"] and not suite["flores"].higher_is_better
    # An average over both would mix bits per byte with F1: refused before any model work.
    from cft.errors import ConfigError

    with pytest.raises(ConfigError, match="mix scores where lower is better"):
        build_suite({**node, "averages": {"la": ["flores", "xquad"]}})


@pytest.mark.integration
def test_flores_on_the_real_files(shared_data, tiny_model, tmp_path):
    model, tok = tiny_model
    task = LMEvalTask("flores", data_dir=shared_data, languages=["ja", "pt", "en"], batch_size=4, limit=3)
    la, en = task.run(model, tok, out_dir=tmp_path)
    assert set(la.per_language) == {"ja", "pt"} and all(len(v) == 3 for v in la.items.values())
    assert all(b > 0 for b in la.per_language.values()) and en.score > 0
    first = json.loads((tmp_path / "samples" / "cft_flores_pt.jsonl").read_text().splitlines()[0])
    assert first["doc"]["text"] == (shared_data / "flores200/devtest/por_Latn.devtest").read_text().splitlines()[0]
