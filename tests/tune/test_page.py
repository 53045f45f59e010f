"""The end of a study: report.html (trials table, history, importances or why not) and best.yaml."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from resnetcls.config import build_config
from resnetcls.tune.page import importances, write_outputs


def _study(values: list[float | None], run_dir=None) -> optuna.Study:
    study = optuna.create_study(study_name="s", direction="minimize")
    for i, value in enumerate(values):
        state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params={"optim.lr": 10 ** -(i + 1)},
                distributions={"optim.lr": FloatDistribution(1e-6, 1.0, log=True)},
                user_attrs={"run_dir": str(run_dir or f"/nowhere/{i:04d}")},
                intermediate_values={1: value if value is not None else 9.0},
            )
        )
    return study


def test_fewer_than_two_completed_trials_say_why_there_are_no_importances(tmp_path):
    study = _study([0.5, None])
    assert importances(study) == ({}, "parameter importances need at least 2 completed trials (1 so far)")
    result = write_outputs(study, tmp_path, "val_loss", "minimize", "sqlite:///x.db")
    page = (tmp_path / "report.html").read_text()
    assert "need at least 2 completed trials" in page and "<h2>Optimisation history</h2>" in page
    assert page.count("<tr>") == 3 and "pruned" in page  # header + 2 trials
    assert result["best_yaml"] is None  # the best trial's run directory is not on this machine


def test_best_yaml_is_the_best_trials_config_and_importances_are_drawn(tmp_path, tiny_run):
    study = _study([0.9, 0.3, 0.6], run_dir=tiny_run)
    result = write_outputs(study, tmp_path, "val_loss", "minimize", "sqlite:///x.db")
    assert result["best_trial"] == 1 and result["complete"] == 3
    assert (tmp_path / "best.yaml").read_text().startswith("# resnetcls tune: best trial 1 (val_loss 0.3000)")
    assert build_config(str(tmp_path / "best.yaml")).model.width == 8  # a recipe train --config reads
    page = (tmp_path / "report.html").read_text()
    assert 'id="importances"' in page and 'id="history"' in page
