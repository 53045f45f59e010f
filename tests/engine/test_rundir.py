"""engine/rundir.py: the first free name runs/train, runs/train-2, ...; runs/latest pointed to the newest run
(never replacing a real folder, one line where symlinks are refused); --resume latest and --resume auto
without --out."""

import json
import os

import pytest

from resnetcls.engine.rundir import (
    latest_run,
    next_run_dir,
    open_run_folder,
    point_latest,
    resolve_latest,
    unfinished,
    where_to_train,
)
from resnetcls.errors import UserError


def finished_or_not(run_dir, finished: bool):
    """A run folder with a checkpoint, and a summary record when finished."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-00000004.json").write_text("{}")
    records = [{"kind": "epoch", "epoch": 1}] + ([{"kind": "summary"}] if finished else [])
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def test_each_new_run_takes_the_first_free_name(tmp_path):
    runs = tmp_path / "runs"
    assert next_run_dir(runs) == runs / "train"
    (runs / "train").mkdir(parents=True)
    (runs / "train-3").mkdir()
    assert next_run_dir(runs) == runs / "train-2"
    (runs / "train-2").mkdir()
    assert next_run_dir(runs) == runs / "train-4"


def test_latest_is_repointed_to_the_newest_run_by_its_name(tmp_path):
    said = []
    for name in ("train", "train-2"):
        open_run_folder(tmp_path / "runs" / name, True, said.append)
    latest = tmp_path / "runs" / "latest"
    assert os.readlink(latest) == "train-2" and latest.resolve() == (tmp_path / "runs" / "train-2").resolve()
    assert said[-1] == f"run folder {tmp_path / 'runs' / 'train-2'} ({latest} points to it)"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["latest", "train", "train-2"]
    open_run_folder(tmp_path / "runs" / "mine", False, said.append)  # an explicit --out moves nothing
    assert os.readlink(latest) == "train-2" and len(said) == 2


def test_a_real_latest_folder_is_left_alone_with_one_line(tmp_path):
    old = tmp_path / "runs" / "latest"
    (old / "best").mkdir(parents=True)
    said = []
    open_run_folder(tmp_path / "runs" / "train", True, said.append)
    assert not old.is_symlink() and (old / "best").is_dir()
    assert said[0].startswith(f"note: {old} is a run folder of its own, left as it is; rename it")
    assert said[1] == f"run folder {tmp_path / 'runs' / 'train'}"
    assert latest_run(tmp_path / "runs") == old  # --resume latest: that run itself


def test_a_file_system_without_symlinks_gets_one_line_and_no_latest(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", refuse)
    said = []
    assert not point_latest(tmp_path / "train", said.append)
    assert said == [
        f"note: no {tmp_path / 'latest'} (this file system refused a symlink: Operation not permitted); "
        f"the run is {tmp_path / 'train'}"
    ]
    assert list(tmp_path.iterdir()) == []


def test_resume_latest_and_auto_without_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="--resume latest: runs/latest points to no run folder"):
        resolve_latest()
    said = []
    assert where_to_train(None, "auto", said.append) == (None, None)  # nothing to continue: a new run
    assert said == ["--resume auto: no unfinished run at runs/latest; starting a new run"]
    finished_or_not(tmp_path / "runs" / "train", finished=True)
    point_latest(tmp_path / "runs" / "train", said.append)
    assert where_to_train(None, "latest", said.append) == (None, os.path.join("runs", "train"))
    assert where_to_train(None, "auto", said.append) == (None, None)  # finished: a new run
    finished_or_not(tmp_path / "runs" / "train-2", finished=False)
    point_latest(tmp_path / "runs" / "train-2", said.append)
    assert unfinished(tmp_path / "runs" / "train-2") and not unfinished(tmp_path / "runs" / "train")
    assert where_to_train(None, "auto", said.append) == (os.path.join("runs", "train-2"), "auto")
    assert where_to_train("elsewhere", "auto", said.append) == ("elsewhere", "auto")  # --out: as given


def test_a_race_under_way_is_an_unfinished_run_for_resume_auto(tmp_path, monkeypatch):
    """Killed during its race, a run folder holds race.json and no checkpoint of its own: --resume auto
    continues it; once the run's summary is written it is finished."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "train"
    run.mkdir(parents=True)
    (run / "race.json").write_text("{}")
    point_latest(run, print)
    assert unfinished(run)
    assert where_to_train(None, "auto", print) == (os.path.join("runs", "train"), "auto")
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "summary"}) + "\n")
    assert not unfinished(run)
