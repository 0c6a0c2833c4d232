"""A Hydra sweeper on current Optuna (`hydra/sweeper=cxrssl_optuna`); see optuna_sweeper.py.

Lives in the `hydra_plugins` namespace package (no __init__.py above this folder) because that is
where Hydra looks for plugins; pyproject.toml ships it in the wheel.
"""
