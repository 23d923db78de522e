"""Analysis: the paper's tables and figures of a sweep, the DES of datasets, models' representations,
layer changes, and the sweep's W&B dashboard. One module per subcommand (`mode=<name>` picks
conf/mode/<name>.yaml, whose settings are under the key `<name>`):

- `sweep` (default)    tables, figures, failed and unfinished cells, report.md, one W&B run
- `similarity`         the DES matrix of datasets
- `representations`    t-SNE, covariance differences per layer, the cross-lingual view
- `layers`             layer-change ranks of three checkpoints
- `dashboard`          the sweep's W&B workspace view and report, defined in code

Each ends with the shared publish step (`cft.analysis.publish`). `run(cfg)` (analyze.py's one call)
checks the config against `cft.analysis.config.AnalyzeConfig` and calls `cft.analysis.<mode>.run`:
a new analysis is one module with a `run(cfg)`, one option file in conf/mode/ and one model in config.py.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any


def run(cfg: Any, *, conf_dir: Path | None = None):
    """analyze.py's one call: the validated config's mode runs (cft.analysis.<mode>.run)."""
    from omegaconf import DictConfig, OmegaConf
    from pydantic import ValidationError

    from cft.analysis.config import AnalyzeConfig
    from cft.errors import ConfigError

    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    values.pop("hydra", None)
    try:
        config = AnalyzeConfig.model_validate(values)
    except ValidationError as exc:  # analyze.py's callback reports these first; a library caller gets them here
        first = exc.errors()[0]
        raise ConfigError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    module = importlib.import_module(f"cft.analysis.{config.mode}")
    kwargs = {"conf_dir": conf_dir} if "conf_dir" in inspect.signature(module.run).parameters else {}
    return module.run(config, **kwargs)
