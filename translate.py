"""Build a translated dataset (the paper's mOpenOrca) from any dataset config, batched and resumable.

    python translate.py phase1_data@source=openorca out_dir=data/mopenorca
    python train.py phase1_data=openorca phase2_data=mopenorca phase2_data.path=data/mopenorca

See conf/translate.yaml for every option.
"""

import hydra

from cft.config.cli import guarded
from cft.config.hydra import register_resolvers

register_resolvers()


@hydra.main(config_path="conf", config_name="translate", version_base="1.3")
def main(cfg) -> None:
    from cft.recipes.translate import translate_dataset

    guarded(translate_dataset, cfg)


if __name__ == "__main__":
    main()
