"""`resnetcls train` end to end on tiny data: what a user finds in the run directory."""
import json
import shutil

from tests.conftest import ROOT, TINY, run_cli, shared_data


def test_run_directory_has_config_metrics_tensorboard_and_model_dirs(tiny_run):
    assert (tiny_run / "config.yaml").is_file()
    records = [json.loads(l) for l in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for key in ("train/loss", "val/loss", "val/top1", "val/top5", "train/images_per_s"):
        assert all(isinstance(r[key], float) for r in epochs), key
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = set(EventAccumulator(str(tiny_run / "tb")).Reload().Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "train/data_wait_share", "val/loss", "val/top1",
            "val/top5"} <= tags
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
    line = next(l for l in result.stderr.splitlines() if l.startswith("epoch 1/1"))
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
    """configs/default.yaml, shortened (a narrow ResNet-18 at 32 px, 2 epochs) on the unseen-viewpoint split of
    50 real objects; chance is 2%. The full-size run is in the README."""
    coil = shared_data("coil100-a")
    result = run_cli("train", coil / "pose-split.csv", "--config", ROOT / "configs" / "default.yaml",
                     "--model", "resnet18", "--image-size", "32", "--epochs", "2", "--set", "model.width=16",
                     "--out", tmp_path / "coil")
    assert result.returncode == 0, result.stderr
    summary = [json.loads(l) for l in (tmp_path / "coil" / "metrics.jsonl").read_text().splitlines()][-1]
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
