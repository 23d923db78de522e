"""The one training loop of every phase and strategy, and what several ranks need to share it
(distributed helpers, gradient access under DeepSpeed ZeRO)."""
