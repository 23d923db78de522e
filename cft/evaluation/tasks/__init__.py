"""The project's lm-eval task templates (YAML) and their hooks (`utils.py`).

Each YAML here holds what one benchmark's tasks share; `cft.evaluation.lmeval.write_task_configs`
writes the per-language (or per-subject) task files of a run, which `include:` these templates and
add the dataset (a hub id, or local files under `eval.data_dir`).
"""
