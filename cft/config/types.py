"""The small schema pieces that several config owners share: the strict base model, the numeric
types with their ranges, and the `paths` group (read by train.py, evaluate.py and analyze.py alike).

This is a leaf: it imports nothing from cft, so `cft.config.schema` and the schemas that live beside
their code (`cft.analysis.config`, `cft.evaluation.config`) all import from here and none of them
imports back up.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

UINT32 = 2**32 - 1


class Schema(BaseModel):
    """A config group: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf, 1e400 and nan are never meant


Seed = Annotated[StrictInt, Field(ge=0, le=UINT32, description="a random seed, 0 to 2^32-1")]
Count = Annotated[StrictInt, Field(ge=1)]
NonNegative = Annotated[StrictInt, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]


class PathsConfig(Schema):
    output_root: str = Field(description="where sweeps and the cache go (CFT_OUTPUT_ROOT)")
    cache_dir: str = Field(description="the shared artifact cache")
    data_dir: str = Field(description="the real data folder the configs' local files are under (CFT_DATA)")
    verify: Literal["checksum", "size"] = Field("checksum", description="how a cached artifact is checked on reuse")
    rescue_dir: str | None = Field(
        None,
        min_length=1,
        description="second place for trained weights when the run folder and the temporary folder refuse them "
        "(free space checked first); null: none",
    )
