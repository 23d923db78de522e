"""Phase-2 strategies (mitigations against forgetting). Each is one YAML in conf/strategy with a
`_target_` naming one small class here; the recipe and the loop only call its hooks.

    full      Full                  end-to-end fine-tuning (baseline)
    lf_h1     RandomLayerFreeze     freeze k random layers                       (arXiv 2410.16006)
    lf_h2     ChangeRankedFreeze    freeze the k most-changed q/k/v layers/heads (arXiv 2410.16006)
    er10      EnglishReplay         replay original English counterpart data      (arXiv 2410.16006)
    gr5/gr10  GenerativeReplay      replay the Phase-1 model's own English answers (arXiv 2410.16006)
    lora      LoRA                  low-rank adapters, merged after Phase 2       (arXiv 2106.09685)
    cofitune  CoFiTune              region training + soft gradient masks         (arXiv 2404.10306)
    spectrum  Spectrum              train the top-SNR modules                     (arXiv 2406.06623)
    combine   Compose               several of the above in one run
"""

from cft.strategies.base import Strategy, StrategyContext

__all__ = ["Strategy", "StrategyContext"]
