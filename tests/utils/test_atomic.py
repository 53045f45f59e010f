"""Every write is atomic: a failure (ENOSPC) at any point leaves the previous file or model directory intact,
no temporary behind, and one line naming the path and the bytes needed (exit 2)."""

import errno
import hashlib
import json
import os
import shutil

import pytest
import torch

from resnetcls.data.transforms import make_preprocess
from resnetcls.errors import UserError
from resnetcls.models import create_model
from resnetcls.records.modelfile import load_model_dir, resolve_model_dir, save_model_dir
from resnetcls.utils import atomic
from resnetcls.utils.atomic import building_dir, sha256_file, write_atomic
from tests.conftest import TINY, run_cli

ARGS = {"stem": "small", "stride_on_1x1": False, "zero_init_residual": True, "width": 8}


def disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_write_replaces_whole_files_and_a_failure_keeps_the_old_one(tmp_path):
    target = tmp_path / "metrics.json"
    write_atomic(target, b"old")
    with pytest.raises(UserError) as e:
        write_atomic(target, lambda f: (f.write(b"half of the new"), disk_full()), size_hint=123_456)
    assert str(e.value).startswith(f"{target}: no space left on the device (needs 123,456 bytes, ")
    assert "free" in str(e.value)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    with pytest.raises(UserError, match=r"\(needs more than 1,000 bytes, "):  # no hint: what got written
        write_atomic(target, lambda f: (f.write(b"x" * 1000), f.flush(), disk_full()))
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_bytes_needed_are_the_data_length(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(UserError, match=r"new\.bin: no space left on the device \(needs 5 bytes"):
        write_atomic(tmp_path / "new.bin", b"12345")
    assert not list(tmp_path.iterdir())


def model(seed: int):
    torch.manual_seed(seed)
    return create_model("resnet18", 2, **ARGS)


def test_a_failed_model_dir_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    best = save_model_dir(
        tmp_path / "best", model(0), "resnet18", ARGS, ["a", "b"], make_preprocess(32), {"epoch": 1}
    )
    before = (best / "model.safetensors").read_bytes()
    from resnetcls.records import modelfile

    # model.json fails after the new weights were written (into the new folder)
    monkeypatch.setattr(modelfile, "write_text_atomic", lambda path, text: write_atomic(path, disk_full))
    with pytest.raises(UserError, match=rf"^{best / 'model.json'}: no space left on the device \(needs more"):
        save_model_dir(
            tmp_path / "best", model(1), "resnet18", ARGS, ["a", "b"], make_preprocess(32), {"epoch": 2}
        )
    assert (best / "model.safetensors").read_bytes() == before
    assert load_model_dir(best).meta["metrics"] == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no half-built folder left


def test_a_kill_between_the_two_renames_still_loads_the_previous_model(tmp_path):
    run = tmp_path / "run"
    save_model_dir(run / "best", model(0), "resnet18", ARGS, ["a", "b"], make_preprocess(32), {"epoch": 1})
    os.rename(run / "best", run / ".best.old")  # what replace_dir leaves if killed after its first rename
    assert resolve_model_dir(run) == run / "best" and load_model_dir(run).meta["metrics"] == {"epoch": 1}
    os.rename(run / "best", run / ".best.old")
    assert load_model_dir(run / "best").meta["metrics"] == {"epoch": 1}  # named directly, too
    save_model_dir(run / "best", model(1), "resnet18", ARGS, ["a", "b"], make_preprocess(32), {"epoch": 2})
    assert load_model_dir(run).meta["metrics"] == {"epoch": 2}
    assert sorted(p.name for p in run.iterdir()) == ["best"]


def test_building_dir_removes_the_new_folder_on_failure(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with building_dir(tmp_path / "out") as tmp:
            (tmp / "keep.txt").write_text("new")
            raise RuntimeError("killed")
    assert (tmp_path / "out" / "keep.txt").read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_enospc_while_saving_a_checkpoint_is_one_line_exit_2_without_temporaries(
    tiny_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch, "save", lambda obj, f: (f.write(b"x" * 1000), disk_full()))
    out = tmp_path / "run"
    result = run_cli("train", tiny_data, *TINY, "--epochs", "1", "--out", out)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert err[-1].startswith(f"resnetcls: error: {out / 'checkpoints' / 'step-'}")
    assert "no space left on the device (needs " in err[-1] and "Traceback" not in result.stderr
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((out / "environment.json").read_text())["torch"]  # written whole before
    shutil.rmtree(out)


def test_enospc_from_any_other_write_is_still_one_line(tiny_run, monkeypatch):
    from resnetcls.analysis import report

    def full(*_args, **_kwargs):  # e.g. TensorBoard or metrics.jsonl appends, which are not ours to wrap
        raise OSError(errno.ENOSPC, "No space left on device", str(tiny_run / "report.html"))

    monkeypatch.setattr(report, "write_report", full)
    result = run_cli("report", tiny_run)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"resnetcls: error: {tiny_run / 'report.html'}: no space left on the device; free some space"
    )


def test_written_files_and_model_dirs_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_atomic(tmp_path / "a.json", b"{}")
    best = save_model_dir(tmp_path / "best", model(0), "resnet18", ARGS, ["a", "b"], make_preprocess(32))
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert best.stat().st_mode & 0o777 == 0o777 & ~umask


def test_sha256_file_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000  # more than one read chunk
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
