"""The schema of an evaluation suite (conf/eval/*.yaml): its suite-level keys.

The suite-level keys are defaults every task of the suite shares: `build_suite` passes each one to
every task whose constructor takes it and whose node does not set it. Each task node (`_target_`
plus options) is checked against its class's constructor (cft.config.schema.check_target_node).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

# Shared by every task of the suite that takes them (cft.evaluation.suite.build_suite).
SHARED = ("limit", "data_dir", "batch_size", "backend", "apply_chat_template")


class SuiteConfig(BaseModel):
    """conf/eval/<suite>.yaml."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf, 1e400 and nan are never meant

    limit: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="examples per language / MMLU subject / benchmark for every task (a task's own limit wins); null = all"
    )
    data_dir: str | None = Field(
        None, description="local benchmark copies in the layout of the shared data folder; null = the hub"
    )
    batch_size: Annotated[StrictInt, Field(ge=1)] | Annotated[str, Field(pattern=r"^auto(:[1-9][0-9]*)?$")] = Field(
        16, description="examples per batch, or auto / auto:N (lm-eval's search on GPU; 16 on CPU)"
    )
    backend: Literal["hf", "vllm"] = Field("hf", description="hf (the model in memory) or vllm (when installed)")
    apply_chat_template: StrictBool | Literal["auto", "alpaca"] = Field(
        "auto",
        description="auto: the tokenizer's chat template, else the Alpaca prompt (as in training); alpaca; true; false (plain)",
    )
    dtype: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "auto",
        description="precision every evaluation of the suite runs at (both phases of a cell alike); "
        "auto = model.dtype, whose auto is bf16 on CUDA GPUs that support it and fp32 on the CPU",
    )
    averages: dict[Literal["ta", "la"], list[str]] | None = Field(
        None,
        description="the tasks each headline average is defined over (the paper's: conf/eval/ta.yaml, la.yaml); "
        "null = every task of that ability",
    )
    tasks: dict[str, dict[str, Any] | None] = Field(
        description="task name -> a node with _target_ and its options (null switches a task off)"
    )
