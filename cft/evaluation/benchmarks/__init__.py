"""The benchmarks cft runs through lm-evaluation-harness, as data: one folder per benchmark.

Each folder holds `benchmark.yaml` (languages or subjects, prompts, splits, local file patterns and
hub ids, metrics, headline metric, shots, generation settings; the schema is
`cft.evaluation.benchmark.BenchmarkSpec`) and the lm-eval task template it includes (`task.yaml`).
`hooks.py` holds the functions those templates name with `!function` (document normalisation, scorers).

A new benchmark is a new folder here (or anywhere: give its path as `benchmark:`), no Python change.
"""
