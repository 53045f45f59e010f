"""`resnetcls train` end to end on tiny data: what a user finds in the run directory."""

import json
import re
import shutil

import pytest
import yaml

from tests.conftest import TINY, run_cli, shared_data
from tests.data.corpus import write_photo_set


def test_run_directory_has_config_metrics_tensorboard_and_model_dirs(tiny_run):
    assert (tiny_run / "config.yaml").is_file()
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for key in ("train/loss", "val/loss", "val/top1", "val/top5", "train/images_per_s"):
        assert all(isinstance(r[key], float) for r in epochs), key
    stores = [r for r in records if r["kind"] == "cache"]  # which store each split read, and why
    assert (
        len(stores) == 1
        and {split: stores[0][split]["format"] for split in ("train", "val")}
        == {"train": "decoded", "val": "decoded"}
        and "why" not in stores[0]["train"]
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(tiny_run / "tb")).Reload().Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr",
        "train/images_per_s",
        "train/data_wait_share",
        "val/loss",
        "val/top1",
        "val/top5",
    } <= tags
    for sub in ("best", "final"):
        meta = json.loads((tiny_run / sub / "model.json").read_text())
        assert meta["format"] == "resnetcls.model/1"
        assert meta["classes"] == ["blue", "green", "red"]
        assert meta["arch"] == "resnet18" and meta["arch_args"]["width"] == 8
        assert meta["preprocess"]["image_size"] == 32
        assert len(meta["sha256"]["model.safetensors"]) == 64


def test_epoch_lines_on_stderr_show_losses_accuracy_and_throughput(tiny_data, tmp_path):
    result = run_cli("train", tiny_data, *TINY, "--epochs", "1", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    line = next(text for text in result.stderr.splitlines() if text.startswith("epoch 1/1"))
    for word in ("train loss", "val loss", "val top1", "top5", "lr ", "img/s", "data wait"):
        assert word in line
    assert "best val top1" in result.stderr


def test_train_val_folders_are_used_as_given(tiny_data, tmp_path):
    root = tmp_path / "split"
    for split, names in (("train", range(0, 9)), ("val", range(9, 12))):
        for cls in ("blue", "green", "red"):
            (root / split / cls).mkdir(parents=True)
            for i in names:
                (root / split / cls / f"{i}.jpg").symlink_to(tiny_data / cls / f"{i}.jpg")
    result = run_cli("train", root, *TINY, "--epochs", "1", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    assert "27 train / 9 val images" in result.stderr


def test_missing_data_folder_is_exit_2_with_one_line(tmp_path):
    result = run_cli("train", tmp_path / "nope", "--out", tmp_path / "r")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nope: no such file or folder" in result.stderr


def test_empty_class_folder_is_exit_2_naming_it(tiny_data, tmp_path):
    root = tmp_path / "data"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "dogs" / "a.jpg").symlink_to(tiny_data / "red" / "0.jpg")
    result = run_cli("train", root, "--out", tmp_path / "r")
    assert result.returncode == 2
    assert "cats: class folder has no images" in result.stderr and "Traceback" not in result.stderr


def test_coil100_pose_split_learns_far_above_chance_with_the_default_recipe(tmp_path):
    """The default recipe (--config default), shortened (a narrow ResNet-18 at 32 px, 2 epochs) on the
    unseen-viewpoint split of 50 real objects; chance is 2%. The full-size run is in the README."""
    coil = shared_data("coil100-a")
    result = run_cli(
        "train",
        coil / "pose-split.csv",
        "--config",
        "default",
        "--model",
        "resnet18",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--set",
        "model.width=16",
        "--out",
        tmp_path / "coil",
    )
    assert result.returncode == 0, result.stderr
    summary = [json.loads(line) for line in (tmp_path / "coil" / "metrics.jsonl").read_text().splitlines()][
        -1
    ]
    assert "2700 train / 900 val images" in result.stderr
    assert summary["best_val_top1"] >= 0.30


def test_resume_with_changed_result_affecting_setting_is_refused_unless_forced(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = run_cli("train", "--resume", run, "--batch-size", "8")
    assert result.returncode == 2
    assert "refusing to resume" in result.stderr and "train.batch_size: 16 -> 8" in result.stderr
    result = run_cli("train", "--resume", run, "--batch-size", "8", "--force")
    assert result.returncode == 0, result.stderr
    assert "warning: resuming with a changed setting (--force): train.batch_size: 16 -> 8" in result.stderr


def test_resume_from_another_working_directory_finds_the_data(tiny_data, tmp_path):
    """DATA typed as a relative path is recorded as an absolute one: the run directory alone is enough to
    continue from anywhere."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    shutil.copytree(tiny_data, here / "photos")
    elsewhere.mkdir()
    first = run_cli("train", "photos", *TINY, "--epochs", "1", "--out", "run", cwd=here)
    assert first.returncode == 0, first.stderr
    assert str(here / "photos") in (here / "run" / "config.yaml").read_text()
    again = run_cli("train", "--resume", here / "run", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr and "error" not in again.stderr


def test_new_run_into_a_run_directory_with_checkpoints_is_refused(tiny_run, tiny_data):
    result = run_cli("train", tiny_data, "--out", tiny_run)
    assert result.returncode == 2 and "--resume auto" in result.stderr


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def chosen_epochs(stderr: str) -> int:
    line = next(text for text in stderr.splitlines() if text.startswith("time budget "))
    assert "s/step" in line and "of validation" in line
    return int(re.search(r"chose (\d+) epochs x 2 steps", line).group(1))


def test_time_budget_chooses_the_epochs_trains_that_many_and_an_interrupted_run_resumes_with_the_same_total(
    tiny_data, tmp_path
):
    """One budgeted run (a checkpoint every step, which the budget counts) checked as it ends, then cut back
    to what a kill after its first step leaves and resumed: the same total, nothing measured again, the budget
    fixed."""
    run = tmp_path / "r"
    # 1 s: the checks hold for any number of epochs the budget buys (at least 1), so the shortest budget will
    # do.
    args = [
        tiny_data,
        *TINY,
        "--time",
        "1s",
        "--set",
        "ckpt.every_steps=1",
        "--set",
        "ckpt.keep_last=100000",
        "--set",
        "train.race_share=0",  # the plain budget (the raced one: tests/engine/test_race.py)
        "--out",
        run,
    ]
    first = run_cli("train", *args)
    assert first.returncode == 0, first.stderr
    n = chosen_epochs(first.stderr)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == n
    recs = records(run)
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == list(range(1, n + 1))
    budget = next(r for r in recs if r["kind"] == "time_budget")
    assert budget["epochs"] == n and budget["budget_s"] == 1 and budget["steps_per_epoch"] == 2
    assert recs[-1]["kind"] == "summary" and recs[-1]["epochs"] == n and recs[-1]["time_budget_s"] == 1
    assert f"epoch {n}/{n} " in first.stderr and (run / "final" / "model.json").is_file()
    # What a kill after the first step leaves: only its checkpoint, no final model.
    for path in (run / "checkpoints").glob("step-*"):
        if not path.name.startswith("step-00000001."):
            path.unlink()
    shutil.rmtree(run / "final")
    again = run_cli("train", *args[:-2], "--resume", "auto", "--out", run)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr and "time budget" not in again.stderr
    assert f"epoch {n}/{n} " in again.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == n
    assert records(run)[-1]["epochs"] == n and (run / "final" / "model.json").is_file()
    changed = run_cli("train", "--resume", run, "--time", "1h")
    assert changed.returncode == 2 and "train.time_budget: '1s' -> '1h'" in changed.stderr


def test_patience_stops_a_run_that_no_longer_improves_and_still_writes_everything(tiny_data, tmp_path):
    run = tmp_path / "r"
    result = run_cli(
        "train",
        tiny_data,
        *TINY,
        "--epochs",
        "40",
        "--set",
        "train.patience=2",
        "--set",
        "optim.lr=0.01",
        "--out",
        run,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(
        r"^stopping early: val_top1 has not improved for 2 epochs \(best ([\d.]+) at epoch (\d+)\)$",
        result.stderr,
        re.MULTILINE,
    )
    assert match, result.stderr
    best_epoch = int(match.group(2))
    recs = records(run)
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == list(range(1, best_epoch + 3))
    summary = recs[-1]
    assert summary["kind"] == "summary" and summary["stopped_early"] and summary["best_epoch"] == best_epoch
    assert (
        summary["best_val_top1"] == pytest.approx(float(match.group(1)), abs=1e-4)
        and summary["epochs_run"] == best_epoch + 2
    )
    assert (run / "final" / "model.json").is_file() and (run / "best" / "model.json").is_file()
    again = run_cli("train", "--resume", run)  # a stopped run has nothing left to train
    assert again.returncode == 0 and "stopping early" in again.stderr
    assert len([r for r in records(run) if r["kind"] == "epoch"]) == best_epoch + 2


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--time", "abc"],
            "argument --time: expected a duration such as 90s, 20m or 1.5h (0 = off), got 'abc'",
        ),
        (["--set", "train.patience=-1"], "config key train.patience=-1: must be in [0, 1000000]"),
        (
            ["--set", "train.time_budget=20 minutes"],
            "config key train.time_budget='20 minutes': expected a duration",
        ),
    ],
)
def test_bad_time_budget_or_patience_is_exit_2_naming_the_flag_or_key(tiny_data, tmp_path, args, message):
    result = run_cli("train", tiny_data, *args, "--out", tmp_path / "r")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_progressive_resizing_grows_the_training_size_and_validates_and_ships_the_final_size(
    tiny_data, tmp_path, monkeypatch
):
    from resnetcls.data.transforms import BatchTransform

    crops, seen = BatchTransform.crops, []

    def recording(self, images, into=None, seeds=None, size=None):
        batch = crops(self, images, into, seeds, size)
        seen.append(("train" if self.random else "val", batch.shape[-1]))
        return batch

    monkeypatch.setattr(BatchTransform, "crops", recording)  # data.num_workers=0: crops run in this process
    out = tmp_path / "r"
    result = run_cli(
        "train",
        tiny_data,
        *TINY,
        "--image-size",
        "64",
        "--epochs",
        "4",
        "--out",
        out,
        "--set",
        "data.progressive=0.5",
        "--set",
        "log.tensorboard=false",
    )
    assert result.returncode == 0, result.stderr
    assert "progressive resizing: 32 -> 64 px, full size from epoch 4 of 4" in result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    sizes = [r["train_size"] for r in records if r["kind"] == "epoch"]
    assert sizes == [32, 32, 48, 64]  # growing, the last epoch (a quarter of 4) at the final size
    for epoch, size in enumerate(sizes, 1):
        line = next(text for text in result.stderr.splitlines() if text.startswith(f"epoch {epoch}/4"))
        assert line.endswith(f"train size {size}px")
    assert {s for kind, s in seen if kind == "val"} == {64}  # validation always at the final size
    assert sorted({s for kind, s in seen if kind == "train"}) == [32, 48, 64]
    for sub in ("best", "final"):
        assert json.loads((out / sub / "model.json").read_text())["preprocess"]["image_size"] == 64
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["progressive"] == 0.5


def test_train_warns_once_when_val_images_have_near_duplicates_in_train(tmp_path):
    leaky, clean = (
        write_photo_set(tmp_path / "leaky", leaky_val=4),
        write_photo_set(tmp_path / "clean", leaky_val=0),
    )
    runs = {
        name: run_cli("train", data, *TINY, "--epochs", "1", "--out", tmp_path / name, *extra)
        for name, data, extra in (
            ("leaky", leaky, []),
            ("clean", clean, []),
            ("off", leaky, ["--set", "data.leak_check=false"]),
        )
    }
    assert all(r.returncode == 0 for r in runs.values()), [r.stderr for r in runs.values()]
    lines = [line for line in runs["leaky"].stderr.splitlines() if "near-duplicate in train" in line]
    assert len(lines) == 1 and lines[0].startswith(
        "warning: 8 of 8 val images (100.0%) have a near-duplicate"
    )
    assert "--set data.split_by=COLUMN" in lines[0] and "data check DATA --suggest-split" in lines[0]
    assert "near-duplicate" not in runs["clean"].stderr and "near-duplicate" not in runs["off"].stderr


def test_training_with_augment_on_device_runs_on_the_cpu_and_a_bad_choice_is_one_line(tiny_data, tmp_path):
    """data.augment_on=device on the CPU: the GPU path's code (uint8 canvases, crops on the device)."""
    out = tmp_path / "run"
    result = run_cli(
        "train", tiny_data, *TINY, "--epochs", "1", "--out", out, "--set", "data.augment_on=device"
    )
    assert result.returncode == 0, result.stderr
    assert (out / "metrics.jsonl").is_file()
    bad = run_cli(
        "train", tiny_data, *TINY, "--epochs", "1", "--out", tmp_path / "bad", "--set", "data.augment_on=gpu"
    )
    assert bad.returncode == 2 and "data.augment_on" in bad.stderr and "Traceback" not in bad.stderr


SLOW_CHECK_ENTRY = """
import sys, time
import resnetcls.engine.prepare as prepare
from resnetcls.cli import main
hash_images = prepare.store_signatures
def slow(store, indices, **kwargs):  # a check that outlasts the timeout: 120 ms per image hashed, on top
    indices = list(indices)
    time.sleep(0.12 * len(indices))
    return hash_images(store, indices, **kwargs)
prepare.store_signatures = slow
sys.exit(main())
"""


def test_the_leak_check_under_torchrun_outlasting_the_timeout_kills_no_rank(tmp_path):
    """2 ranks, train.dist_timeout_s=5 and a leak check made slow (the entry script): 100 images at 120 ms are
    12 s, more than twice the timeout, had one rank hashed them all while the other waited in its next
    collective (the DDP handshake). Sharded, each rank hashes its 50 at the same time, both train, and rank 0
    warns once with the count summed over both shards. (5 s, not less: the same timeout bounds the ranks'
    first connection, and on a loaded 2-core machine starting torch in two processes can differ by
    seconds.)"""
    from tests.engine.test_distributed import run, torchrun

    data = write_photo_set(tmp_path / "d", leaky_val=0, train_per_class=40, val_per_class=10, size=32)
    for c in "ab":  # 5 val images per class are copies of train images: 10 of 20, half of them on each rank
        for i in range(5):
            shutil.copy(data / "train" / c / f"{i}.png", data / "val" / c / f"{i}.png")
    entry = tmp_path / "entry.py"
    entry.write_text(SLOW_CHECK_ENTRY)
    result = run(
        torchrun(
            "train",
            data,
            *TINY,
            "--epochs",
            "1",
            "--out",
            tmp_path / "run",
            "--set",
            "log.tensorboard=false",
            "--set",
            "train.dist_timeout_s=5",
            entry=(str(entry),),
        ),
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "near-duplicate in train" in line]
    assert len(lines) == 1 and lines[0].startswith(
        "warning: 10 of 20 val images (50.0%) have a near-duplicate"
    )
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
