"""Reading instruction data: every field layout, every kind of bad record, local folders, Parquet,
language selection, seeded caps and equal proportions, and the dataset configs of conf/."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from helpers import compose, write_jsonl

from cft.data.records import Example, read_examples
from cft.data.sources import load_sft
from cft.errors import ConfigError, DataError

ALPACA_FIELDS = {"instruction": "instruction", "input": "input", "output": "output"}
ORCA_FIELDS = {"instruction": "question", "input": None, "output": "response", "system": "system_prompt"}
CHAT_FIELDS = {"messages": "messages"}
PREF_FIELDS = {"messages": "input.messages", "output": "preferred_output"}


def test_alpaca_layout_with_missing_empty_and_null_input(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": "Add", "input": "2 and 3", "output": "5"},
                {"instruction": "Greet", "input": "", "output": "Hi"},
                {"instruction": "Greet", "input": None, "output": "Hello"},
                {"instruction": "Greet", "output": "Hey"},
            ],
            indent=1,
        )
    )
    examples, skipped = read_examples(path, fields=ALPACA_FIELDS)
    assert skipped == 0
    assert examples[0] == Example(instruction="Add", input="2 and 3", output="5")
    assert [e.input for e in examples] == ["2 and 3", "", "", ""]


def test_system_prompt_layout(tmp_path):
    path = write_jsonl(
        tmp_path / "o.jsonl",
        [
            {"id": "x", "system_prompt": "Be brief.", "question": "Q?", "response": "A."},
            {"id": "y", "system_prompt": "", "question": "Q2?", "response": "A2."},
        ],
    )
    (a, b), _ = read_examples(path, fields=ORCA_FIELDS)
    assert (a.system, a.instruction, a.output, a.input) == ("Be brief.", "Q?", "A.", "")
    assert b.system == ""


def test_chat_messages_layout(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "U"},
                    {"role": "assistant", "content": "A"},
                ]
            }
        ],
    )
    (ex,), _ = read_examples(path, fields=CHAT_FIELDS)
    assert (ex.system, ex.instruction, ex.output) == ("S", "U", "A")


def test_preference_layout_nested_messages_and_output_list(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "input": {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]},
                "preferred_output": [{"role": "assistant", "content": "good"}],
                "non_preferred_output": [{"role": "assistant", "content": "bad"}],
            }
        ],
    )
    (ex,), _ = read_examples(path, fields=PREF_FIELDS)
    assert (ex.system, ex.instruction, ex.output) == ("S", "U", "good")


def test_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{"instruction": "i1", "input": None, "output": "o1"}, {"instruction": "", "input": None, "output": "o2"}]
        ),
        path,
    )
    with pytest.raises(DataError, match=r"d.parquet:row 2: field 'instruction' \(instruction\) is empty"):
        read_examples(path)
    examples, skipped = read_examples(path, on_bad_record="skip")
    assert [e.output for e in examples] == ["o1"] and skipped == 1


BAD = [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', 2, "invalid JSON"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', 2, "missing field 'output' (output)"),
    ('{"instruction": "a", "output": "b"}\n{"output": "c"}\n', 2, "missing field 'instruction' (instruction)"),
    (
        '{"instruction": "a", "output": "b"}\n{"instruction": "  ", "output": "c"}\n',
        2,
        "field 'instruction' (instruction) is empty",
    ),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "x", "output": ""}\n', 2, "field 'output' (output) is empty"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "x", "output": 3}\n', 2, "field 'output' must be a string, got int"),
    (
        '{"instruction": "a", "output": "b"}\n{"instruction": "x", "input": 4, "output": "y"}\n',
        2,
        "field 'input' must be a string or null, got int",
    ),
    ('{"instruction": "a", "output": "b"}\n["x", "y"]\n', 2, "record must be a JSON object, got list"),
]


@pytest.mark.parametrize(
    "text, line, message",
    BAD,
    ids=["json", "no-output", "no-instruction", "blank", "empty-output", "type", "input-type", "not-object"],
)
def test_bad_record_is_reported_with_file_and_line_or_skipped(tmp_path, text, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text + '{"instruction": "last", "output": "z"}\n')
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert f"{path}:{line}: {message}" in str(err.value)
    examples, skipped = read_examples(path, on_bad_record="skip")
    assert skipped == 1 and [e.instruction for e in examples] == ["a", "last"]


def test_undecodable_text_is_reported_with_its_line_and_can_be_skipped(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(
        b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "c"}\n{"instruction": "d", "output": "e"}\n'
    )
    with pytest.raises(DataError, match=r"bytes.jsonl:2: field 'instruction' \(instruction\) is not valid UTF-8"):
        read_examples(path)
    examples, skipped = read_examples(path, on_bad_record="skip")
    assert skipped == 1 and [e.instruction for e in examples] == ["a", "d"]


def test_bad_record_in_json_array_names_its_line(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c", "output": null}\n]\n')
    with pytest.raises(DataError, match=r"arr.json:3 \(record 2\): field 'output' must be a string, got NoneType"):
        read_examples(path)
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c", "output": "d"\n]\n')
    with pytest.raises(DataError, match=r"arr.json:4: invalid JSON"):
        read_examples(path, on_bad_record="skip")  # a broken array cannot be resynchronised


def test_chat_records_with_wrong_shape(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "U1"},
                    {"role": "assistant", "content": "A"},
                    {"role": "user", "content": "U2"},
                ]
            },
            {"messages": "hello"},
            {"messages": [{"role": "user", "content": 5}]},
        ],
    )
    with pytest.raises(DataError, match=r"c.jsonl:1: field 'messages' has 2 user turns"):
        read_examples(path, fields=CHAT_FIELDS)
    _, skipped = read_examples(path, fields=CHAT_FIELDS, on_bad_record="skip")
    assert skipped == 3


# ---------------------------------------------------------------- load_sft: folders, languages, sampling


@pytest.fixture
def multi_folder(tmp_path):
    folder = tmp_path / "multi"
    for lang, n in {"es": 30, "ja": 12, "fr": 20}.items():
        write_jsonl(
            folder / f"{lang}.jsonl", [{"instruction": f"{lang} {i}", "input": None, "output": f"o{i}"} for i in range(n)]
        )
    return folder


def test_folder_of_languages_with_balance_caps_and_seed(multi_folder):
    data = load_sft(name="m", path=str(multi_folder), languages=["es", "ja"], balance=True)
    assert data.sizes == {"es": 12, "ja": 12}
    assert {e.lang for e in data.examples} == {"es", "ja"} and all(e.instruction.startswith(e.lang) for e in data.examples)
    capped = load_sft(name="m", path=str(multi_folder), max_per_language=15)
    assert capped.sizes == {"es": 15, "fr": 15, "ja": 12}
    total = load_sft(name="m", path=str(multi_folder), balance=True, max_examples=21, seed=3)
    assert total.sizes == {"es": 7, "fr": 7, "ja": 7}
    again = load_sft(name="m", path=str(multi_folder), balance=True, max_examples=21, seed=3)
    other = load_sft(name="m", path=str(multi_folder), balance=True, max_examples=21, seed=4)
    assert again.examples == total.examples and other.examples != total.examples


def test_single_file_with_language_field(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl", [{"instruction": "i", "output": "o", "lang": lang} for lang in ["fr", "fr", "ja", "de"]]
    )
    assert load_sft(name="x", path=str(path), languages=["fr", "ja"]).sizes == {"fr": 2, "ja": 1}
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"instruction": "i", "output": "o"}])
    with pytest.raises(DataError, match="cannot be split into languages"):
        load_sft(name="x", path=str(plain), languages=["fr", "ja"])


def test_unknown_language_empty_dataset_and_missing_path(tmp_path, multi_folder):
    with pytest.raises(ConfigError, match=r"dataset 'multialpaca': unknown language code\(s\) \['jp'\]; it has: ar, de"):
        load_sft(
            name="multialpaca",
            source="DAMO-NLP-MT/multialpaca",
            languages=["fr", "jp"],
            available_languages=["ar", "de", "es", "fr", "id", "ja", "ko", "pt", "ru", "th", "vi"],
            hub_files="{lang}.jsonl",
        )
    with pytest.raises(DataError, match=r"no file for language\(s\) \['jp'\] \(found: es, fr, ja\)"):
        load_sft(name="m", path=str(multi_folder), languages=["jp"])
    with pytest.raises(DataError, match="nope.json: data file not found"):
        load_sft(name="m", path=str(tmp_path / "nope.json"))
    bad_only = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "", "output": "o"}])
    with pytest.raises(DataError, match="dataset 'b' is empty"):
        load_sft(name="b", path=str(bad_only), on_bad_record="skip")
    with pytest.raises(ConfigError, match="mOpenOrca is not on the hub"):
        load_sft(name="mopenorca", hint="mOpenOrca is not on the hub: build it")
    with pytest.raises(ConfigError, match=r"<group>.on_bad_record='ignore' must be 'error' or 'skip'"):
        load_sft(name="m", path=str(multi_folder), on_bad_record="ignore")


def test_hub_offline_says_to_pass_a_local_path():
    with pytest.raises(DataError, match=r"Offline\? Download it and pass a local copy with <group>.path="):
        load_sft(name="alpaca", source="tatsu-lab/alpaca-does-not-exist-here")


# ---------------------------------------------------------------- the dataset configs


def _spec(node) -> dict:
    from omegaconf import OmegaConf

    return {
        k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in ("counterpart", "use_instruct_checkpoint")
    }


def test_paper_configs_compose_and_load_local_copies(tmp_path, multi_folder):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": f"i{i}", "input": "", "output": f"o{i}"} for i in range(10)]))
    cfg = compose(
        [
            "phase1_data=alpaca",
            "phase2_data=multialpaca",
            f"phase1_data.path={alpaca}",
            f"phase2_data.path={multi_folder}",
            "phase2_data.languages=[fr,ja]",
            f"phase2_data.counterpart.path={alpaca}",
        ]
    )
    assert load_sft(**_spec(cfg.phase1_data)).sizes == {"en": 10}
    assert load_sft(**_spec(cfg.phase2_data)).sizes == {"fr": 12, "ja": 12}  # equal proportions
    counterpart = load_sft(**_spec(cfg.phase2_data.counterpart))
    assert [e.instruction for e in counterpart.examples][:2] == ["i0", "i1"]


def test_openorca_config_subsamples_with_its_seed(tmp_path):
    path = write_jsonl(
        tmp_path / "orca.jsonl",
        [{"id": str(i), "system_prompt": "S", "question": f"q{i}", "response": f"r{i}"} for i in range(40)],
    )
    cfg = compose(["phase1_data=openorca", f"phase1_data.path={path}", "phase1_data.max_examples=25"])
    a = load_sft(**_spec(cfg.phase1_data))
    assert len(a) == 25 and a.examples[0].system == "S" and len(set(e.instruction for e in a.examples)) == 25
    b = load_sft(**{**_spec(cfg.phase1_data), "seed": 1})
    assert a.examples != b.examples


def test_mopenorca_without_path_explains_how_to_build_it():
    cfg = compose(["phase2_data=mopenorca"])
    with pytest.raises(ConfigError, match="python translate.py phase1_data@source=openorca"):
        load_sft(**_spec(cfg.phase2_data))
    assert compose(["phase2_data=mopenorca", "phase2_data.path=/d"]).phase2_data.counterpart.path == "/d"


def test_instruct_config_has_no_data():
    cfg = compose(["phase1_data=instruct", "phase2_data=multialpaca"])
    assert cfg.phase1_data.use_instruct_checkpoint and Counter(cfg.phase2_data.languages)["fr"] == 1


def test_hub_paths_without_network(tmp_path, monkeypatch, multi_folder):
    """Per-language hub files (MultiAlpaca) go through the file reader; a whole hub set (OpenOrca)
    is subsampled by the seed before validation. The hub clients are replaced by local stand-ins."""
    import datasets
    import huggingface_hub

    asked = []
    monkeypatch.setattr(
        huggingface_hub,
        "hf_hub_download",
        lambda repo_id, filename, repo_type: asked.append((repo_id, filename, repo_type)) or str(multi_folder / filename),
    )
    data = load_sft(
        name="multialpaca",
        source="DAMO-NLP-MT/multialpaca",
        hub_files="{lang}.jsonl",
        languages=["fr", "ja"],
        available_languages=["es", "fr", "ja"],
        balance=True,
    )
    assert asked == [("DAMO-NLP-MT/multialpaca", "fr.jsonl", "dataset"), ("DAMO-NLP-MT/multialpaca", "ja.jsonl", "dataset")]
    assert data.sizes == {"fr": 12, "ja": 12}

    rows = [{"system_prompt": "S", "question": f"q{i}", "response": f"r{i}" if i != 7 else ""} for i in range(100)]
    monkeypatch.setattr(datasets, "load_dataset", lambda source, split: datasets.Dataset.from_list(rows))
    spec = dict(name="openorca", source="Open-Orca/OpenOrca", fields=ORCA_FIELDS, max_examples=30, seed=5)
    a = load_sft(**spec, on_bad_record="skip")
    assert len(a) + a.skipped == 30 and a.examples == load_sft(**spec, on_bad_record="skip").examples
    with pytest.raises(DataError, match=r"Open-Orca/OpenOrca\[train\] row 7: field 'response' \(output\) is empty"):
        load_sft(**{**spec, "max_examples": None})


def test_records_shipped_with_an_empty_output_are_skipped_and_counted_where_the_config_says(tmp_path):
    """Named datasets (skip_empty_output: true) skip and count them; other bad records still stop with file:line."""
    from collections import Counter

    from cft.data.records import read_examples

    path = tmp_path / "d.jsonl"
    rows = [{"instruction": "a", "output": "x"}, {"instruction": "b", "output": ""}, {"instruction": "c", "output": "  "}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tally = Counter()
    examples, skipped = read_examples(path, skip_empty_output=True, tally=tally)
    assert [e.instruction for e in examples] == ["a"] and skipped == 0 and tally == {"empty_output": 2}
    with pytest.raises(
        DataError, match=r"d.jsonl:2: field 'output' \(output\) is empty .*set phase1_data.skip_empty_output=true"
    ):
        read_examples(path, config_key="phase1_data")
    # An empty instruction is malformed, not "shipped empty": it stops even with skip_empty_output.
    path.write_text(json.dumps({"instruction": "", "output": "x"}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'instruction' \(instruction\) is empty \(to skip such records"):
        read_examples(path, skip_empty_output=True)


def test_a_bad_counterpart_record_names_the_exact_key(tmp_path):
    from cft.data.sources import load_config

    bad = tmp_path / "en.jsonl"
    bad.write_text(json.dumps({"instruction": "x"}) + "\n")  # no output field
    node = {"name": "alpaca", "path": str(bad), "languages": ["en"], "on_bad_record": "error"}
    with pytest.raises(DataError, match=r"en.jsonl:1: missing field 'output' .*set phase2_data.counterpart.on_bad_record=skip"):
        load_config(node, "phase2_data.counterpart")
