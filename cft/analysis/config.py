"""The schema of analyze.py's config (conf/analyze.yaml and the `mode` group, conf/mode/*.yaml).

`AnalyzeConfig` is checked before any work (`cft.config.schema.check_analyze`, a Hydra callback):
unknown keys, wrong types and out-of-range values stop with one line naming the key. `mode=<name>`
picks an option of conf/mode/, which sets `mode: <name>` and that mode's settings under the key
`<name>` (`similarity.n`, `dashboard.publish`, ...); each mode's settings are one model here.
`cft.analysis.run` hands the validated config to `cft.analysis.<mode>.run`, so a new analysis is
one module, one YAML and one model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from cft.config.types import PathsConfig, Seed

Count = Annotated[StrictInt, Field(ge=1)]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf, 1e400 and nan are never meant


class AnalyzeTracking(_Schema):
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="W&B: offline files (publish later), online (needs a login), or off"
    )


class SimilarityOptions(_Schema):
    """mode=similarity: the DES matrix of several datasets."""

    datasets: list[str] | dict[str, str | None] | None = Field(
        None, description="conf/phase1_data or conf/phase2_data option names, or {name: local file or folder}"
    )
    n: Count | None = Field(500, description="samples per dataset, a cap: a dataset with fewer uses all (null: all)")
    seed: Seed = Field(0, description="sampling seed")
    cache_dir: str | None = Field(None, description="where mean embeddings are cached (null: no cache)")


class RepresentationsOptions(_Schema):
    """mode=representations: hidden activations of models compared (t-SNE, covariance differences, cross-lingual view)."""

    models: dict[str, str] | None = Field(
        None, description="{label: checkpoint folder or hub id}; null with sweep_id: each run's checkpoint vs its Phase-1 model"
    )
    reference: str | None = Field(None, description="the label every model is compared with (null: the first)")
    prompts: str = Field("mt_bench", description="mt_bench (from the hub) or a local .jsonl/.txt file of English prompts")
    limit: Count | None = Field(80, description="prompts used (null: all)")
    tsne_layer: StrictInt = Field(-1, description="layer of the t-SNE view (-1: the last)")
    batch_size: Count = Field(8, description="prompts per forward pass")
    max_length: Count = Field(512, description="tokens per prompt")
    parallel_dir: str | None = Field(None, description="a FLORES-200 folder (<lang>.devtest) for the cross-lingual view")
    parallel_languages: list[str] = Field(default_factory=list, description="FLORES-200 codes compared with the pivot")
    pivot: str = Field("eng_Latn", description="the pivot language of the cross-lingual view")
    parallel_model: str | None = Field(None, description="label of the model of the cross-lingual view (null: the first)")
    parallel_limit: Count | None = Field(200, description="sentences per language (null: all)")
    seed: Seed = Field(0, description="seed of t-SNE")


class LayersOptions(_Schema):
    """mode=layers: the per-layer change base -> Phase 1 (-> Phase 2) of three checkpoints, ranked."""

    models: dict[str, str] | None = Field(
        None, description="{base: <checkpoint>, phase1: <checkpoint>, phase2: <checkpoint, optional>}"
    )

    @model_validator(mode="after")
    def _roles(self):
        extra = set(self.models or {}) - {"base", "phase1", "phase2"}
        if extra:
            raise ValueError(f"models may only name base, phase1 and phase2, not {sorted(extra)}")
        return self


class DashboardOptions(_Schema):
    """mode=dashboard: the sweep's W&B workspace view and report, defined in code (wandb-workspaces)."""

    title: str | None = Field(None, description="name of the view and title of the report (null: 'cft sweep <sweep_id>')")
    report: StrictBool = Field(True, description="also build a W&B report with the same sections")
    publish: str | None = Field(
        None, description="a dashboard.json written offline: publish it (with tracking.mode=online) instead of building one"
    )


class CofituneOptions(_Schema):
    """mode=cofitune: CoFiTune's coarse search scored from a sweep of experiment=cofitune_search."""

    speciality: Literal["ta", "la", "en"] = Field("la", description="the average that measures speciality (Phase 2)")
    versatility: Literal["ta", "la", "en"] = Field("ta", description="the average that measures versatility (Phase 2)")


MODES = ("sweep", "similarity", "representations", "layers", "dashboard", "cofitune")


class AnalyzeConfig(_Schema):
    """conf/analyze.yaml: which analysis (mode), of which sweep, from where, written where."""

    mode: Literal[MODES] = Field(description="the analysis to run: mode=<name> picks conf/mode/<name>.yaml")
    sweep_id: str | None = Field(
        None, description="the sweep (its folder under paths.output_root, and W&B group); null: the latest"
    )
    source: Literal["local", "wandb"] = Field("local", description="read the sweep's runs from run folders or from W&B")
    entity: str | None = Field(None, description="W&B entity: where source=wandb reads and the analysis is logged")
    project: str = Field("cft", description="W&B project")
    out_dir: str | None = Field(None, description="where the analysis is written (null: <output_root>/<sweep_id>/analysis, ...)")
    check: StrictBool = Field(False, description="check the config and exit")
    paths: PathsConfig
    tracking: AnalyzeTracking = Field(default_factory=AnalyzeTracking, description="W&B mode of the analysis run")
    embedder: dict[str, Any] = Field(description="an embedder node (_target_ + options) for mode=similarity")
    similarity: SimilarityOptions | None = Field(None, description="mode=similarity's settings")
    representations: RepresentationsOptions | None = Field(None, description="mode=representations's settings")
    layers: LayersOptions | None = Field(None, description="mode=layers's settings")
    dashboard: DashboardOptions | None = Field(None, description="mode=dashboard's settings")
    cofitune: CofituneOptions | None = Field(None, description="mode=cofitune's settings")

    @model_validator(mode="after")
    def _options(self):
        # A library caller may leave out the chosen mode's node: its defaults apply. Another mode's node
        # is a mistake (Hydra composes one mode at a time), so it is refused rather than ignored.
        for name in OPTIONS:
            if name != self.mode and getattr(self, name) is not None:
                raise ValueError(f"{name}: the settings of mode={name}, but mode={self.mode}")
        if self.mode in OPTIONS and getattr(self, self.mode) is None:
            setattr(self, self.mode, OPTIONS[self.mode]())
        return self

    @property
    def options(self) -> BaseModel | None:
        """The chosen mode's settings (None for mode=sweep, which has none)."""
        return getattr(self, self.mode, None) if self.mode in OPTIONS else None


OPTIONS = {
    "similarity": SimilarityOptions,
    "representations": RepresentationsOptions,
    "layers": LayersOptions,
    "dashboard": DashboardOptions,
    "cofitune": CofituneOptions,
}
