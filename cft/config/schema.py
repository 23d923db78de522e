"""The schema of every config group: a type, a range and a one-line help for every value.

`check_train(cfg)`, `check_evaluate(cfg)` and `check_analyze(cfg)` validate a composed config (what
Hydra hands an entry script) and return one message per problem, naming the key, the value and
what is allowed. `cft.config.checks.Checks`, a Hydra callback, calls them when the config is
composed, before Hydra creates any folder, so a bad value stops with exit status 2 before any
model, data or cache is touched.

Groups with a fixed set of keys are pydantic models here (or, for the evaluation suites and the
analysis, in `cft.evaluation.config` and `cft.analysis.config`, beside the code that reads them);
the pieces they share (the strict base, Seed, Count, `paths`) are in the leaf `cft.config.types`.
A node with `_target_` (a strategy, an evaluation task, an embedder) is checked against the
constructor of the class it names: its parameters are the node's keys, their annotations the
types, and `Annotated[..., Field(ge=..., description=...)]` the ranges and help. A new strategy is
one YAML plus one class, and its options are checked with nothing added here.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, create_model, model_validator

from cft.config.types import Count, NonNegative, PathsConfig, Positive, Schema, Seed
from cft.errors import ConfigError

# ---------------------------------------------------------------------------------------- model


class Build(Schema):
    """A model built in code (no download): a Llama architecture of this shape."""

    model_config = ConfigDict(extra="allow")  # any further LlamaConfig field (rope_theta, ...) passes through
    hidden_size: Count = Field(description="width of the model")
    intermediate_size: Count = Field(description="width of the MLP")
    num_hidden_layers: Count = Field(description="decoder layers")
    num_attention_heads: Count = Field(description="query heads per layer")
    num_key_value_heads: Count = Field(description="key/value heads per layer (grouped-query attention when fewer)")
    max_position_embeddings: Count = Field(description="context length in tokens")
    seed: Seed = Field(0, description="seed of the random initialisation")

    @model_validator(mode="after")
    def _heads(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a multiple of num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of num_key_value_heads={self.num_key_value_heads}"
            )
        return self


class Pretrain(Schema):
    """Phase 0 of the demo base: a short causal-LM training on raw demo text (cft.models.pretrain)."""

    source: Literal["demo"] = Field(description="where the raw text comes from (the built-in demo generator)")
    tasks: list[str] = Field(description="demo task families in the text")
    languages: list[str] = Field(description="languages of the text")
    per_task_language: Count = Field(description="documents per task and language")
    parallel: StrictBool = Field(description="one input in every language (parallel documents)")
    data_seed: Seed = Field(description="seed of the text")
    seq_len: Count = Field(description="tokens per training row")
    batch_size: Count = Field(description="rows per step")
    steps: Count = Field(description="optimizer steps")
    lr: Positive = Field(description="peak learning rate")
    warmup_steps: NonNegative = Field(description="linear warmup steps")


class ModelConfig(Schema):
    """conf/model: the base and Instruct checkpoints (hub id, local folder, GGUF file) or a model built in code."""

    name: str = Field(description="short name (run folders, tables)")
    base: str | None = Field(None, description="hub id or local folder of the base model; null = build it from `build`")
    instruct: str | None = Field(None, description="hub id or folder of the Instruct checkpoint (phase1_data=instruct)")
    gguf_file: str | None = Field(None, description="a GGUF file inside base/instruct, loaded as a plain trainable model")
    build: Build | None = Field(None, description="the shape of a model built in code")
    lf_k: Count | None = Field(None, description="layers that lf_h1/lf_h2 freeze on this model by default")
    pretrain: Pretrain | None = Field(None, description="phase-0 pre-training of a built base (the demo's)")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="dtype of evaluation (training: train.precision)")
    shape: dict[str, int] | None = Field(
        None, description="the checkpoint's config numbers (hidden_size, ...): the launch memory check before download"
    )

    @model_validator(mode="after")
    def _source(self):
        if not self.base and not self.build:
            raise ValueError("needs model.base (hub id or folder) or model.build (a shape to build)")
        return self


# ---------------------------------------------------------------------------------------- data


class Fields(Schema):
    """Which record fields hold what (a dotted path for nested fields)."""

    instruction: str | None = Field("instruction", description="the instruction (user turn)")
    input: str | None = Field("input", description="extra input appended to the instruction")
    output: str | None = Field("output", description="the response (assistant turn)")
    system: str | None = Field(None, description="a system prompt")
    messages: str | None = Field(None, description="a chat `messages` list instead of the fields above")
    lang: str | None = Field(None, description="the record's language code (one file of several languages)")


class DemoSpec(Schema):
    tasks: list[str] = Field(description="demo task names (cft.data.demo)")
    per_task_language: Count = Field(description="examples per task and language")


class DataConfig(Schema):
    """conf/phase1_data and conf/phase2_data (and a Phase-2 dataset's English counterpart)."""

    name: str = Field(description="dataset name (logs, cache keys)")
    source: str | None = Field(None, description="hub id, or 'demo' for the built-in generator")
    path: str | None = Field(
        None, description="a local .json/.jsonl/.parquet file or a folder of <lang>.jsonl files (wins over source)"
    )
    hint: str | None = Field(None, description="what to tell a user who has neither source nor path")
    languages: list[str] | None = Field(
        None, min_length=1, description="languages to use, at least one; null = all the dataset has"
    )
    available_languages: list[str] | None = Field(None, description="languages the dataset has (checks `languages`)")
    max_examples: Count | None = Field(None, description="cap on the total examples (seeded sample)")
    max_per_language: Count | None = Field(None, description="cap per language (seeded sample)")
    balance: StrictBool = Field(False, description="equal examples per language (the smallest language's count)")
    seed: Seed = Field(0, description="sampling seed of the data (fixed across run seeds)")
    split: str = Field("train", description="dataset split")
    hub_files: str | None = Field(None, description="per-language files of a hub dataset, e.g. '{lang}.jsonl'")
    fields: Fields = Field(default_factory=Fields, description="record field names")
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="error: stop at a bad record (file:line); skip: count it"
    )
    skip_empty_output: StrictBool = Field(
        False, description="skip (and count) records the authors shipped with an empty output, as users of this dataset expect"
    )
    demo: DemoSpec | None = Field(None, description="the built-in generator's settings (source: demo)")
    counterpart: DataConfig | None = Field(None, description="the English counterpart (GR prompts, ER data)")


class InstructData(Schema):
    """phase1_data=instruct: no Phase-1 training, the model's Instruct checkpoint is the Phase-1 model."""

    name: str = Field(description="'instruct'")
    use_instruct_checkpoint: Literal[True] = Field(description="take model.instruct as the Phase-1 model")


# ---------------------------------------------------------------------------------------- train


class TrainSettings(Schema):
    """The settings of the one training loop that a phase may override (train.phase1.<key>, train.phase2.<key>)."""

    lr: Positive = Field(description="peak learning rate (AdamW)")
    epochs: Annotated[float, Field(ge=1)] = Field(1, description="passes over the data (when max_steps is null)")
    max_steps: Count | None = Field(None, description="optimizer steps; wins over epochs")
    global_batch_size: Count = Field(16, description="examples per optimizer step, over all ranks")
    micro_batch_size: Count = Field(8, description="examples per forward pass on one rank (the rest is gradient accumulation)")
    warmup_steps: NonNegative = Field(0, description="linear warmup steps")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="learning-rate schedule after warmup")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.0, description="AdamW weight decay")
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="AdamW betas"
    )
    adam_eps: Positive = Field(1e-8, description="AdamW epsilon")
    max_grad_norm: Positive | None = Field(1.0, description="gradient clipping norm; null = none")
    precision: Literal["auto", "bf16", "fp16", "no"] = Field(
        "auto", description="auto = bf16 on GPUs that have it, fp32 elsewhere"
    )
    deepspeed: dict[str, Any] | None = Field(None, description="a DeepSpeed config (train=deepspeed_zero2/3); null = none")
    max_length: Count = Field(1024, description="tokens per example; longer ones are truncated (and counted)")
    loss_on_prompt: StrictBool = Field(False, description="also train on the prompt tokens")
    packing: StrictBool = Field(False, description="share rows within each micro-batch (no attention across examples)")
    attn_implementation: str | None = Field(None, description="attention kernel (sdpa, eager, flash_attention_2); null = default")
    checkpoint_every: NonNegative = Field(0, description="optimizer steps between resumable checkpoints (0 = none)")
    keep_checkpoints: Count = Field(1, description="resumable checkpoints kept")
    checkpoint_every_minutes: Annotated[float, Field(ge=0)] = Field(
        0, description="minutes of training between resumable checkpoints (0 = none; with checkpoint_every, whichever first)"
    )
    gradient_checkpointing: StrictBool = Field(
        False, description="recompute each layer's activations in the backward pass: far less memory, about 30% slower"
    )
    log_every: Count = Field(10, description="optimizer steps between logged losses")
    # Throughput levers (README "GPU"; bench/gpu_bench.py measures each on its own).
    sdpa_backend: Literal["auto", "efficient", "flash", "math", "cudnn"] = Field(
        "auto", description="torch SDPA backend for training (math as its fallback); auto = torch's choice (cuDNN on H100/H200)"
    )
    pack_width_multiple: Annotated[StrictInt, Field(ge=1, le=4096)] = Field(
        1, description="packed rows padded to a multiple of this many tokens, so shapes repeat (1 = none)"
    )
    adamw: Literal["auto", "fused", "foreach", "for_loop"] = Field(
        "auto", description="AdamW kernel: auto = fused on CUDA, foreach under DeepSpeed, the plain loop on CPUs"
    )
    sync_every_step: StrictBool = Field(
        False, description="read the loss and check it is finite every step (a host sync) instead of at log/checkpoint steps"
    )
    tokens_per_micro_batch: Annotated[StrictInt, Field(ge=16, le=1_048_576)] | None = Field(
        None, description="token slots per micro-batch instead of micro_batch_size examples (no DeepSpeed); null = off"
    )
    compile: StrictBool = Field(
        False, description="torch.compile the model for training (inductor; not with DeepSpeed): each new shape compiles first"
    )
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = Field(
        "default", description="inductor's mode when train.compile: default, or max-autotune-no-cudagraphs (longer tuning)"
    )
    liger: StrictBool = Field(
        False, description="Liger's fused kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy): CUDA + liger-kernel only"
    )


def _phase_overrides() -> type[BaseModel]:
    """train.phase1 / train.phase2: any setting of TrainSettings, for one phase (null = the shared value)."""
    fields = {}
    for name, info in TrainSettings.model_fields.items():
        constrained = Annotated.__class_getitem__((info.annotation, *info.metadata)) if info.metadata else info.annotation
        fields[name] = (constrained | None, Field(None, description=f"{info.description} (this phase)"))
    return create_model("PhaseTrain", __base__=Schema, **fields)


PhaseTrain = _phase_overrides()


class TrainConfig(TrainSettings):
    """conf/train: the one training loop's settings (both phases; train.phase1/phase2 override per phase)."""

    multi_gpu_deepspeed: dict[str, Any] | None = Field(
        None, description="the DeepSpeed config train=paper uses when launched on several GPUs (train.deepspeed interpolates it)"
    )
    phase1: PhaseTrain = Field(default_factory=PhaseTrain, description="Phase-1 overrides of the settings above")
    phase2: PhaseTrain = Field(default_factory=PhaseTrain, description="Phase-2 overrides of the settings above")

    @model_validator(mode="after")
    def _batches(self):
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        for phase in ("phase1", "phase2"):
            override = getattr(self, phase)
            size = override.global_batch_size or self.global_batch_size
            micro_size = override.micro_batch_size or self.micro_batch_size
            where = f"train.{phase}.global_batch_size" if override.global_batch_size else "train.global_batch_size"
            per_rank, rest = divmod(size, world)
            micro = min(micro_size, per_rank) if per_rank else micro_size
            if rest or per_rank == 0 or per_rank % micro:
                raise ValueError(
                    f"{where}={size} must be a multiple of the world size ({world}) x train.micro_batch_size ({micro_size})"
                )
        return self

    @model_validator(mode="after")
    def _compile_without_deepspeed(self):
        for phase in ("phase1", "phase2"):
            override = getattr(self, phase)
            compiled = self.compile if override.compile is None else override.compile
            if compiled and (override.deepspeed or self.deepspeed):
                # DeepSpeed's engine wraps the module with its own hooks (ZeRO-3 gathers parameters in them);
                # compiling under it is DeepSpeed's own engine.compile, not measured here: refused, not guessed.
                raise ValueError(f"train.compile=true does not work with train.deepspeed ({phase}); set one of them")
        return self


class TrackingConfig(Schema):
    mode: Literal["offline", "online", "disabled"] = Field("offline", description="W&B: offline files, online, or off")
    project: str = Field("cft", description="W&B project")
    entity: str | None = Field(None, description="W&B entity (team or user)")


class SimilarityConfig(Schema):
    des: StrictBool = Field(True, description="record DES of the Phase-1 and Phase-2 data")
    n: Count = Field(500, description="samples per dataset for DES (all, when a dataset has fewer)")
    seed: Seed = Field(0, description="sampling seed of DES")
    mpd: StrictBool = Field(False, description="also fine-tune the base on the Phase-2 data alone and record MPD")
    layer_changes: StrictBool = Field(True, description="write layer_changes.csv and log it")


Threads = Annotated[StrictInt, Field(ge=1, description="torch threads; null = chosen from measurement (OMP_NUM_THREADS wins)")]


class TrainRoot(Schema):
    """conf/config.yaml: one cell of the study."""

    seed: Seed = Field(description="the run's seed (model init, data order, strategy choices)")
    sweep_id: str = Field(description="the sweep's id: its folder and W&B group")
    check: StrictBool = Field(False, description="check the config (every cell of a sweep) and exit, running nothing")
    preflight: Literal["lenient", "strict"] = Field(
        "lenient",
        description="cells that fail the preflight (checkpoints, data, strategy needs, output root): "
        "lenient = list them and run the others, strict = stop before any cell runs",
    )
    download: StrictBool = Field(False, description="download every checkpoint the cells read, then exit (cft.models.download)")
    threads: Threads | None = Field(None, description="torch threads; null = chosen from measurement (OMP_NUM_THREADS wins)")
    similarity: SimilarityConfig = Field(description="DES and MPD recorded by the run (the paper's Definitions 1, 2)")
    model: ModelConfig = Field(description="conf/model: the checkpoints, or a model built in code")
    phase1_data: DataConfig | InstructData = Field(description="conf/phase1_data: English Phase-1 data, or instruct")
    phase2_data: DataConfig = Field(description="conf/phase2_data: multilingual Phase-2 data and its English counterpart")
    strategy: dict[str, Any] = Field(description="a strategy node (_target_ + options)")
    eval: dict[str, Any] = Field(description="an evaluation suite")
    train: TrainConfig = Field(description="conf/train: the training loop of both phases")
    tracking: TrackingConfig = Field(description="conf/tracking: W&B")
    paths: PathsConfig = Field(description="conf/paths: the output root and the artifact cache")
    embedder: dict[str, Any] = Field(description="an embedder node (_target_ + options) for DES")
    setup: dict[str, Any] | None = Field(None, description="what the model choice composes (conf/setup)")
    search: dict[str, Any] | None = Field(
        None, description="a search's settings (experiment=cofitune_search): they choose the sweep's cells, not a result"
    )


class EvaluateRoot(Schema):
    """conf/evaluate.yaml: evaluate a finished run's checkpoint, or any checkpoint."""

    run_dir: str | None = Field(None, description="a run folder: its final checkpoint is evaluated")
    checkpoint: str | None = Field(None, description="a hub id or folder to evaluate (model=<name> supplies gguf_file)")
    seed: Seed = Field(0, description="seed of the evaluation")
    check: StrictBool = Field(False, description="check the config and exit")
    threads: Threads | None = Field(None, description="torch threads; null = chosen from measurement (OMP_NUM_THREADS wins)")
    model: ModelConfig = Field(description="conf/model: dtype and gguf_file of checkpoint=")
    eval: dict[str, Any] = Field(description="an evaluation suite")
    tracking: TrackingConfig = Field(description="conf/tracking: W&B")
    paths: PathsConfig = Field(description="conf/paths: the output root")


class TranslateRoot(Schema):
    """conf/translate.yaml: translate a dataset config into other languages (translate.py)."""

    source: DataConfig | InstructData = Field(description="the dataset to translate (phase1_data@source=<option>)")
    paths: PathsConfig = Field(description="conf/paths: paths.data_dir, the folder a local source's path names")
    out_dir: str | None = Field(None, description="the folder of <lang>.jsonl files to write (and resume); required")
    languages: list[str] = Field(min_length=1, description="target language codes")
    src_lang: str = Field("en", description="the source language code")
    translation_model: str = Field(description="a transformers seq2seq checkpoint (NLLB, M2M100): hub id or folder")
    lang_tokens: dict[str, str] = Field(default_factory=dict, description="language code -> the tokenizer's language token")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="model dtype")
    batch_size: Count = Field(16, description="segments per generate call")
    chunk_size: Count = Field(64, description="records per flushed write (the unit of resumption)")
    max_new_tokens: Count = Field(512, description="longest translation of one segment, in tokens")
    num_beams: Count = Field(1, description="beam search width")
    max_chars: Count = Field(400, description="longer lines are split at sentence ends before translation")
    fields: list[Literal["system", "instruction", "input", "output"]] = Field(description="record fields translated")
    threads: Threads | None = Field(None, description="torch threads; null = chosen from measurement (OMP_NUM_THREADS wins)")
    check: StrictBool = Field(False, description="check the config and exit")


# ---------------------------------------------------------------------------------------- _target_ nodes


def _target_object(target: Any, where: str):
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{where}._target_={target!r}: must name a class as module.Class")
    module_name, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}._target_={target!r} cannot be imported ({exc})") from None


@functools.cache  # one per class: a sweep's preflight checks the same few classes in every cell
def options_model(obj) -> type[BaseModel]:
    """A pydantic model of the keyword options a class (its __init__) or function takes."""
    func = obj.__init__ if inspect.isclass(obj) else obj
    if func is object.__init__:  # a class without options (strategy=full)
        return create_model(f"{obj.__name__}Options", __config__=ConfigDict(extra="forbid", allow_inf_nan=False))
    signature = inspect.signature(func)
    hints = typing.get_type_hints(func, include_extras=True)
    fields: dict[str, Any] = {}
    extra = "forbid"
    for name, param in signature.parameters.items():
        if name == "self" or param.kind == param.VAR_POSITIONAL:
            continue
        if param.kind == param.VAR_KEYWORD:
            extra = "allow"
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hints.get(name, Any), default)
    config = ConfigDict(extra=extra, arbitrary_types_allowed=True, protected_namespaces=(), allow_inf_nan=False)
    return create_model(f"{getattr(obj, '__name__', 'Target')}Options", __config__=config, **fields)


def check_target_node(node: Any, where: str) -> list[str]:
    """Problems of a `_target_` node (and of the `_target_` nodes inside it, e.g. combine's parts)."""
    if node is None:
        return []
    if not isinstance(node, dict):
        return [f"{where}={node!r}: expected a config node with _target_"]
    try:
        obj = _target_object(node.get("_target_"), where)
    except ConfigError as exc:
        return [str(exc)]
    options = {k: v for k, v in node.items() if not k.startswith("_")}
    problems = _validate(options_model(obj), options, where)
    for key, value in options.items():  # nested targets
        if isinstance(value, dict) and "_target_" in value:
            problems += check_target_node(value, f"{where}.{key}")
        elif isinstance(value, dict):
            for sub, part in value.items():
                if isinstance(part, dict) and "_target_" in part:
                    problems += check_target_node(part, f"{where}.{key}.{sub}")
    return problems


# ---------------------------------------------------------------------------------------- messages


def _field_help(model: type[BaseModel], loc: tuple) -> str | None:
    """The description of the field at `loc` (walking nested models), for the message."""
    current: Any = model
    info = None
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return info.description if info is not None else None
        info = current.model_fields[part]
        current = _model_in(info.annotation)
    return info.description if info is not None else None


def _model_in(annotation: Any):
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = _model_in(current.model_fields[part].annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _dotted(where: str, loc: tuple) -> str:
    parts = [where] if where else []
    for part in loc:
        if isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part}]" if parts else f"[{part}]"
        elif part in ("function-after[_heads()]", "function-after[_source()]", "function-after[_batches()]"):
            continue
        else:
            parts.append(str(part))
    return ".".join(parts)


def _value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _validate(model: type[BaseModel], values: Any, where: str) -> list[str]:
    try:
        model.model_validate(values)
    except ValidationError as exc:
        return [_message(model, err, where) for err in exc.errors()]
    return []


# Union members pydantic names in a location (e.g. 'DataConfig' in phase1_data.DataConfig.path): dropped.
_UNION_TAGS = {"DataConfig", "InstructData", "int", "float", "str", "bool", "constrained-float", "constrained-int", "none"}


def _message(model: type[BaseModel], err: dict, where: str) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p in _UNION_TAGS or p.startswith("function-"))))
    key = _dotted(where, loc)
    if err["type"] == "extra_forbidden":
        known = _known_keys(model, loc)
        close = difflib.get_close_matches(str(loc[-1]) if loc else "", known, n=1)
        hint = f" Did you mean {'.'.join([*key.split('.')[:-1], close[0]])}?" if close else ""
        allowed = f" Known keys here: {', '.join(known)}." if known else ""
        return f"{key}={_value(err['input'])}: unknown key.{hint}{allowed}"
    if err["type"] == "missing":
        return f"{key}: missing (required)" + (f" -- {key}: {h}" if (h := _field_help(model, loc)) else "")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error" and not loc:  # a check across keys: its message names them
        return msg
    help_ = _field_help(model, loc)
    value = f"={_value(err['input'])}" if err["type"] != "value_error" else ""
    return f"{key}{value}: {msg[0].lower() + msg[1:] if msg else msg}" + (f" -- {key}: {help_}" if help_ else "")


# ---------------------------------------------------------------------------------------- the checks


def check_translate(cfg: dict[str, Any]) -> list[str]:
    """Problems of a resolved translate.py config."""
    return _validate(TranslateRoot, cfg, "")


def _suite_model() -> type[BaseModel]:
    from cft.evaluation.config import SuiteConfig

    return SuiteConfig


def check_train(cfg: dict[str, Any]) -> list[str]:
    """Problems of a resolved train.py config (without its hydra node)."""
    from cft.run.layout import check_component

    problems = _validate(TrainRoot, cfg, "")
    problems += check_target_node(cfg.get("strategy"), "strategy")
    problems += check_target_node(cfg.get("embedder"), "embedder")
    problems += _check_suite(cfg.get("eval"), _suite_model())
    try:
        check_component(cfg.get("sweep_id"), "sweep_id")
    except ConfigError as exc:
        problems.append(str(exc))
    return problems


def check_evaluate(cfg: dict[str, Any]) -> list[str]:
    """Problems of a resolved evaluate.py config."""
    return _validate(EvaluateRoot, cfg, "") + _check_suite(cfg.get("eval"), _suite_model())


def check_analyze(cfg: dict[str, Any]) -> list[str]:
    """Problems of a resolved analyze.py config."""
    from cft.analysis.config import AnalyzeConfig

    problems = _validate(AnalyzeConfig, cfg, "")
    problems += check_target_node(cfg.get("embedder"), "embedder")
    return problems


def _check_suite(suite: Any, suite_model: type[BaseModel]) -> list[str]:
    if not isinstance(suite, dict):
        return []
    problems = _validate(suite_model, suite, "eval")
    for name, node in (suite.get("tasks") or {}).items():
        if isinstance(node, dict) and "_target_" in node:
            problems += check_target_node(node, f"eval.tasks.{name}")
    return problems
