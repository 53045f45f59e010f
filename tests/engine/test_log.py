"""Run logging: metrics.jsonl, TensorBoard, tracking. The live progress bar on a terminal is checked in
tests/utils/test_progress.py, in the pseudo-terminal interpreter the other bars share."""

import json

import pytest

from resnetcls.engine.log import RunLogger, console_log, say


def test_records_go_to_metrics_jsonl_and_slashed_scalars_to_tensorboard(tmp_path):
    logger = RunLogger(tmp_path, tensorboard=True)
    logger.log({"kind": "epoch", "epoch": 1, "train/loss": 0.5, "val/top1": 0.25, "note": "x"}, step=3)
    logger.close()
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 3 and record["train/loss"] == 0.5 and record["note"] == "x"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(tmp_path / "tb")).Reload().Tags()["scalars"]
    assert sorted(scalars) == ["train/loss", "val/top1"]


def test_a_resumed_run_drops_what_it_will_log_again(tmp_path):
    logger = RunLogger(tmp_path, tensorboard=False)
    for step, kind, epoch in [(2, "train", 1), (4, "epoch", 1), (6, "train", 2), (7, "summary", 2)]:
        logger.log({"kind": kind, "epoch": epoch}, step)
    logger.close()
    RunLogger(tmp_path, tensorboard=False, resume_step=4, resume_epoch=2).close()  # checkpoint after epoch 1
    kept = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == [2, 4]


def test_a_non_zero_rank_writes_nothing(tmp_path, capsys):
    logger = RunLogger(tmp_path, tensorboard=True, enabled=False)
    logger.log({"kind": "epoch", "train/loss": 1.0}, 1)
    logger.info("hello")
    logger.close()
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().err == ""


def test_with_log_mlflow_epoch_records_reach_the_mlflow_run_which_an_interrupt_leaves_killed(
    tmp_path, monkeypatch
):
    mlflow = pytest.importorskip("mlflow", reason="MLflow is not installed: pip install 'resnetcls[mlflow]'")
    from resnetcls.config import LogConfig

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "config.yaml").write_text("optim:\n  lr: 0.5\n")
    logger = RunLogger(tmp_path, tensorboard=False, tracking=LogConfig(mlflow=True), precision="fp32")
    logger.log({"kind": "train", "epoch": 1, "train/loss": 9.0}, step=1)  # step logs stay in metrics.jsonl
    logger.log({"kind": "epoch", "epoch": 1, "train/loss": 0.5, "val/top1": 0.25}, step=3)
    logger.close(interrupted=True)
    run_id = json.loads((tmp_path / "tracking.json").read_text())["mlflow"]["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.params == {"optim.lr": "0.5"}
    assert run.data.tags["precision"] == "fp32"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(1, 0.5)]


def test_the_val_confusion_matrix_is_logged_up_to_the_class_cap_only(tmp_path):
    import torch

    from resnetcls.engine.log import confusion_field
    from resnetcls.utils.limits import MATRIX_IN_JSON_MAX_CLASSES

    logger = RunLogger(tmp_path, tensorboard=False)
    for epoch, classes in ((1, 3), (2, MATRIX_IN_JSON_MAX_CLASSES), (3, MATRIX_IN_JSON_MAX_CLASSES + 1)):
        logger.log(
            {"kind": "epoch", "epoch": epoch, **confusion_field(torch.eye(classes, dtype=torch.int64))}, epoch
        )
    logger.log({"kind": "epoch", "epoch": 4, **confusion_field(None)}, 4)
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["val_confusion"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert len(records[1]["val_confusion"]) == MATRIX_IN_JSON_MAX_CLASSES
    assert "val_confusion" not in records[2] and "val_confusion" not in records[3]


def test_console_lines_reach_train_log_as_they_are_said_the_early_ones_first(tmp_path, capsys):
    with console_log() as console:
        say("a plan's line")
        console.attach(tmp_path / "train.log")
        RunLogger(tmp_path, tensorboard=False).info("epoch 1/1  val top1 50.00%")
        assert (
            tmp_path / "train.log"
        ).read_text() == "a plan's line\nepoch 1/1  val top1 50.00%\n"  # flushed
    say("after the run")  # no run under way: stderr only
    assert capsys.readouterr().err == "a plan's line\nepoch 1/1  val top1 50.00%\nafter the run\n"
    with console_log() as console:
        console.attach(tmp_path / "train.log", resumed="checkpoints/step-00000004.pt")
        say("epoch 2/2")
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert lines[2].startswith("---- ") and lines[2].endswith(
        ": resumed from checkpoints/step-00000004.pt ----"
    )
    assert lines[3] == "epoch 2/2" and len(lines) == 4
