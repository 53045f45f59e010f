"""`resnetcls tune` end to end on SQLite: tiny trials, one pruned, killed mid-study and continued by the same
command; and the pieces (storage URL, a killed worker's trial, the trial's config)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from resnetcls.config import Config, build_config
from resnetcls.errors import UserError
from resnetcls.tune.study import TuneSettings, fail_dead_trials, open_study, storage_url, trial_config

from ..conftest import ROOT, TINY, run_cli

# lr 1e-6 barely moves the loss, lr 0.02 lowers it: with the median pruner active after one trial, a 1e-6
# trial that follows a 0.02 one is pruned. The seeded sampler's draws depend only on its seed (train.seed +
# the trials so far), not on any loss: with --seed 4, trials 0 and 1 (killed) draw 0.02; the continued study
# (seed 6) draws 0.02 for trial 2 and 1e-6 for trial 3, which is pruned.
SPACE = (
    "optim.lr: {type: categorical, choices: [0.02, 1.0e-6]}\n"
    "loss.label_smoothing: {type: float, low: 0.0, high: 0.1}\n"
)


def tune_args(data: Path, out: Path, space: Path, trials: int) -> list[str]:
    return [
        "tune",
        str(data),
        "--out",
        str(out),
        "--trials",
        str(trials),
        "--space",
        str(space),
        "--prune-after",
        "1",
        "--epochs",
        "2",
        "--seed",
        "4",
        *TINY,
        "--set",
        "ckpt.metric=val_loss",
        "--set",
        "log.tensorboard=false",
    ]


def test_storage_defaults_to_sqlite_in_the_output_folder(tmp_path):
    assert storage_url(TuneSettings(str(tmp_path), 3)) == f"sqlite:///{tmp_path.resolve()}/study.db"
    assert storage_url(TuneSettings(str(tmp_path), 3, storage="postgresql+psycopg://u@h/db")).startswith(
        "postgresql"
    )


def test_a_bad_storage_url_is_one_line_naming_it(tmp_path):
    with pytest.raises(UserError, match="--storage nosuchdb://x: cannot open the study storage"):
        open_study(TuneSettings(str(tmp_path), 1, storage="nosuchdb://x"), "minimize")


def test_a_server_that_cannot_be_reached_is_one_line_without_the_password(tmp_path):
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'resnetcls[tune]'")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://tuner:S3cretPW@127.0.0.1:{port}/tune"
    with pytest.raises(UserError) as refused:
        open_study(TuneSettings(str(tmp_path), 1, storage=url), "minimize")
    message = str(refused.value)
    assert (
        message.startswith(
            f"--storage postgresql+psycopg://tuner:***@127.0.0.1:{port}/tune: cannot open the study storage"
        )
        and "S3cretPW" not in message
        and "\n" not in message
    )


def test_trial_config_applies_the_sampled_values_and_checks_them():
    cfg = trial_config(Config(), {"optim.lr": 0.05, "data.image_size": 64})
    assert cfg.optim.lr == 0.05 and cfg.data.image_size == 64 and Config().optim.lr != 0.05


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask() without optimize(), on purpose
def test_a_trial_of_a_killed_worker_on_this_machine_is_marked_failed(tmp_path):
    study, storage = open_study(TuneSettings(str(tmp_path), 2), "minimize")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    for pid in (gone.pid, os.getpid()):
        trial = study.ask()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", pid)
    assert fail_dead_trials(study, storage) == [0]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING]


def test_study_with_a_pruned_trial_killed_and_continued_by_the_same_command(tmp_path, tiny_data):
    space, out = tmp_path / "space.yaml", tmp_path / "study"
    space.write_text(SPACE)
    args = tune_args(tiny_data, out, space, 3)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    worker = subprocess.Popen(
        [sys.executable, "-m", "resnetcls", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    # Kill it while its second trial trains: at that trial's first epoch line, with no sleep (a tiny trial
    # takes well under a second on an idle machine; its second epoch and its model files are still to come).
    in_trial_1 = False
    for line in worker.stderr:
        in_trial_1 = in_trial_1 or line.startswith("tune: trial 1 in")
        if in_trial_1 and line.startswith("epoch 1/"):
            break
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    assert worker.returncode == -signal.SIGKILL
    result = run_cli(*args)  # the same command continues the study
    assert result.returncode == 0, result.stderr
    assert "trial(s) 1 of a killed worker marked failed" in result.stderr
    study = optuna.load_study(study_name="resnetcls", storage=f"sqlite:///{out}/study.db")
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 3
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.PRUNED], [
        (t.params, t.intermediate_values) for t in study.get_trials()
    ]
    pruned = next(t for t in study.get_trials() if t.state == TrialState.PRUNED)
    run_dir = out / "trials" / f"{pruned.number:04d}"
    assert '"state": "pruned"' in (run_dir / "trial.json").read_text()
    assert (run_dir / "best" / "model.json").is_file() and (
        run_dir / "config.yaml"
    ).is_file()  # an ordinary run
    best = build_config(str(out / "best.yaml"))  # the best trial's recipe, as train --config reads it
    assert best.optim.lr == study.best_params["optim.lr"] and best.model.width == 8
    page = (out / "report.html").read_text()
    assert (
        "Optimisation history" in page
        and "Parameter importances" in page
        and page.count("<tr>") == 1 + len(states)
    )
