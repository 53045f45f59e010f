"""`resnetcls tune`: hyperparameter search with Optuna over ordinary training runs (study.py, space.py,
page.py)."""
