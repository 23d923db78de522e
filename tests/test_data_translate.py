"""The translation builder (mOpenOrca): selective translation, batching, resumption after a kill,
and its output read back through the mopenorca config. The model is a tiny M2M100 built in code."""

from __future__ import annotations

import json

import pytest
from helpers import compose, write_jsonl

from cft.data.records import Example
from cft.data.sources import load_sft
from cft.data.translate import Seq2SeqTranslator, segments, translate_examples
from cft.errors import ConfigError
from cft.recipes.translate import translate_dataset as main

LANG_TOKENS = ["__en__", "__fr__", "__ja__"]


def build_translation_model(seed: int = 0):
    """A 2-layer M2M100 with a byte-level tokenizer holding M2M100-style language tokens."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": LANG_TOKENS})
    torch.manual_seed(seed)
    config = M2M100Config(
        vocab_size=len(tok),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id,
    )
    return M2M100ForConditionalGeneration(config).eval(), tok


CODE = "```python\nprint('hello world')\n```"
URL = "https://example.com/some/page?x=1"


def source_examples(n: int = 10) -> list[Example]:
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(Example(instruction=f"Write code number {i}.", output=f"Here it is:\n{CODE}\nSee {URL} for more."))
        elif i % 3 == 1:
            out.append(Example(instruction=f"What is {i} plus {i}?", output=str(2 * i), system="You are helpful."))
        else:
            out.append(
                Example(instruction=f"Tell me about item {i}.", input="A short note.", output="It is a thing. It is fine.")
            )
    return out


def test_segments_keep_code_urls_and_numbers():
    text = f"Intro line.\n{CODE}\nVisit {URL} now. Use `ls -l` too.\n  42\n"
    pieces = segments(text, max_chars=400)
    assert "".join(p for p, _ in pieces) == text
    assert (CODE, False) in pieces and (URL, False) in pieces and ("`ls -l`", False) in pieces
    translated = [p for p, t in pieces if t]
    assert translated == ["Intro line.", "Visit", "now. Use", "too."]
    assert segments("3.14 + 2 = 5.14", 400) == [("3.14 + 2 = 5.14", False)]
    long = "One sentence here. " * 30
    assert all(len(p) <= 60 for p, t in segments(long, max_chars=60) if t)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batched_translation_resumes_after_a_kill(tmp_path):
    model, tok = build_translation_model()
    translator = Seq2SeqTranslator(model, tok, src_lang="en", batch_size=4, max_new_tokens=6)
    sizes = []
    generate = model.generate
    model.generate = lambda **kw: (sizes.append(kw["input_ids"].shape[0]), generate(**kw))[1]

    class Killed(Exception):
        pass

    calls = {"n": 0}

    def dying(texts, lang):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return translator(texts, lang)

    examples = source_examples(6)
    out = tmp_path / "mopenorca"
    with pytest.raises(Killed):
        translate_examples(examples, out, ["fr", "ja"], dying, chunk_size=2, settings={"model": "tiny"})
    assert max(sizes) <= 4 and len(sizes) > 2  # batches of at most batch_size segments
    fr_before = _lines(out / "fr.jsonl")
    assert [r["id"] for r in fr_before] == [0, 1, 2, 3]  # two chunks written, the third was killed
    assert not (out / "DONE").exists() and not (out / "ja.jsonl").exists()
    with open(out / "fr.jsonl", "a") as f:  # a torn line, as a kill in the middle of a write leaves it
        f.write('{"id": 4, "instruction": "Tell')

    stats = translate_examples(examples, out, ["fr", "ja"], translator, chunk_size=2, settings={"model": "tiny"})
    assert stats.resumed == {"fr": 4, "ja": 0} and stats.records == {"fr": 6, "ja": 6}
    for lang in ("fr", "ja"):
        rows = _lines(out / f"{lang}.jsonl")
        assert sorted(r["id"] for r in rows) == list(range(6)) and len(rows) == 6  # none missing, none twice
        for r in rows:
            src = examples[r["id"]]
            assert r["lang"] == lang
            if r["id"] % 3 == 0:
                assert CODE in r["output"] and URL in r["output"]  # code and URL copied verbatim
            if r["id"] % 3 == 1:
                assert r["output"] == src.output  # a numbers-only answer is not translated
    assert _lines(out / "fr.jsonl")[:4] == fr_before  # finished records are not redone
    assert (out / "DONE").exists()
    english = _lines(out / "en.jsonl")
    assert [r["instruction"] for r in english] == [e.instruction for e in examples]

    with pytest.raises(ConfigError, match="holds a translation made with other settings"):
        translate_examples(examples, out, ["fr"], translator, settings={"model": "other"})

    # The folder is a Phase-2 dataset, with its English counterpart next to it.
    cfg = compose(["phase2_data=mopenorca", f"phase2_data.path={out}", "phase2_data.languages=[fr,ja]"])
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(cfg.phase2_data, resolve=True)
    counterpart = spec.pop("counterpart")
    data = load_sft(**spec)
    assert data.sizes == {"fr": 6, "ja": 6} and sum(bool(e.system) for e in data.examples) == 4
    assert [e.instruction for e in load_sft(**counterpart).examples] == [e.instruction for e in examples]


def test_unknown_target_language_is_a_clear_error():
    model, tok = build_translation_model()
    with pytest.raises(ConfigError, match=r"no language token for 'ko'.*lang_tokens.ko="):
        Seq2SeqTranslator(model, tok).token_for("ko")


def test_hydra_entry_translates_a_dataset_config(tmp_path):
    model, tok = build_translation_model()
    model.save_pretrained(tmp_path / "mt")
    tok.save_pretrained(tmp_path / "mt")
    src = write_jsonl(
        tmp_path / "orca.jsonl",
        [{"system_prompt": "S", "question": f"Question {i}?", "response": f"Answer {i}."} for i in range(6)],
    )
    out = tmp_path / "out"
    cfg = compose(
        [
            f"source.path={src}",
            "source.max_examples=4",
            f"out_dir={out}",
            f"translation_model={tmp_path / 'mt'}",
            "languages=[fr]",
            "max_new_tokens=4",
            "batch_size=2",
        ],
        config_name="translate",
    )
    main(cfg)
    assert len(_lines(out / "fr.jsonl")) == 4 and len(_lines(out / "en.jsonl")) == 4
    bad = compose(
        [f"source.path={src}", f"out_dir={tmp_path / 'o2'}", f"translation_model={tmp_path / 'mt'}", "languages=[ko]"],
        config_name="translate",
    )
    with pytest.raises(ConfigError, match="no language token for 'ko'"):
        main(bad)
