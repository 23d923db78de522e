"""The translation recipe (translate.py): build a multilingual dataset (the paper's mOpenOrca) by
translating a dataset config with a seq2seq model, batched and resumable (cft.data.translate)."""

from __future__ import annotations

from cft.data.translate import Seq2SeqTranslator, translate_examples
from cft.errors import ConfigError
from cft.recipes.common import plain
from cft.training import threads


def translate_dataset(cfg) -> None:
    """translate.py (conf/translate.yaml): load the source dataset config, load the model, translate."""
    from cft.data.sources import NOT_LOADER_KEYS, load_config
    from cft.models import resolve_dtype

    threads.configure(cfg.get("threads"))
    if not cfg.get("out_dir"):
        raise ConfigError("give out_dir=<folder> for the translated dataset")
    source = {k: v for k, v in plain(cfg.source).items() if k not in NOT_LOADER_KEYS}
    data = load_config(source, "source")
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.translation_model)
        model = AutoModelForSeq2SeqLM.from_pretrained(cfg.translation_model, dtype=resolve_dtype(str(cfg.dtype)))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"could not load the translation model '{cfg.translation_model}': {exc}\n"
            "Offline? Download it and pass its local folder (translation_model=/path/to/model)."
        ) from exc
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    translator = Seq2SeqTranslator(
        model,
        tokenizer,
        src_lang=cfg.src_lang,
        lang_tokens=dict(cfg.lang_tokens or {}),
        batch_size=int(cfg.batch_size),
        max_new_tokens=int(cfg.max_new_tokens),
        num_beams=int(cfg.num_beams),
    )
    for lang in cfg.languages:
        translator.token_for(lang)  # an unknown language fails before any work
    settings = {
        "model": str(cfg.translation_model),
        "source": source,
        "lang_tokens": dict(cfg.lang_tokens or {}),
        "max_new_tokens": int(cfg.max_new_tokens),
        "num_beams": int(cfg.num_beams),
        "max_chars": int(cfg.max_chars),
    }
    stats = translate_examples(
        data.examples,
        cfg.out_dir,
        list(cfg.languages),
        translator,
        settings=settings,
        fields=list(cfg.fields),
        chunk_size=int(cfg.chunk_size),
        max_chars=int(cfg.max_chars),
        src_lang=str(cfg.src_lang),
    )
    print(f"Wrote {cfg.out_dir}: {stats.records} (use phase2_data=mopenorca phase2_data.path={cfg.out_dir})")
