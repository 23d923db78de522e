"""Evaluate a finished run's checkpoint, or any checkpoint, on an eval suite.

python evaluate.py run_dir=<run folder> [eval=la eval.limit=200]
python evaluate.py checkpoint=<path or hub id> model=mistral eval=ta
"""

import hydra
from hydra.core.hydra_config import HydraConfig

from cft.config.cli import guarded
from cft.config.hydra import register_resolvers

register_resolvers()


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg) -> None:
    from cft.recipes.evaluate import evaluate_checkpoint

    runtime = HydraConfig.get().runtime
    guarded(evaluate_checkpoint, cfg, out_dir=runtime.output_dir, suite=runtime.choices.get("eval", "eval"))


if __name__ == "__main__":
    main()
