"""cft: continual fine-tuning of LLMs for language ability (reproducing arXiv 2410.16006).

The library never reads sys.argv or a global config: the entry scripts (train.py,
evaluate.py, analyze.py) hand it the composed Hydra config, and only `cft.recipes.train`
looks at the whole of it.
"""

__version__ = "0.1.0"
