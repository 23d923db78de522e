"""`full`: end-to-end fine-tuning of every parameter in Phase 2, the baseline of arXiv 2410.16006."""

from cft.strategies.base import PhaseLR, Strategy


class Full(Strategy):
    """All parameters train; no data mixing. The base class's no-op hooks are exactly this."""

    def __init__(self, lr: PhaseLR = None):
        self.lr = lr
