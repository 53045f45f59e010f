"""`resnetcls data check` and the on_bad policy in training: bad files are reported, never a crash."""

import json
import os

import pytest

from tests.conftest import TINY, run_cli, shared_data
from tests.data.corpus import write_corpus


def _dataset(root, tiny_data):
    """train/val class folders with the whole bad-image corpus in train/odd, a leak and a duplicate."""
    outcomes = write_corpus(root / "train" / "odd")
    for cls in ("blue", "red"):
        for split, names in (("train", range(0, 8)), ("val", range(8, 12))):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in names:
                (root / split / cls / f"{i}.jpg").symlink_to(tiny_data / cls / f"{i}.jpg")
    (root / "val" / "red" / "leak.jpg").symlink_to(tiny_data / "red" / "0.jpg")  # also in train/red
    (root / "train" / "blue" / ".DS_Store").write_bytes(b"\0")
    (root / "train" / "blue" / "README.txt").write_text("notes")
    return outcomes


def test_data_check_reports_every_problem_in_json_and_on_stderr(tiny_data, tmp_path):
    outcomes = _dataset(tmp_path / "d", tiny_data)
    result = run_cli("data", "check", tmp_path / "d", "--out", tmp_path / "report.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["layout"] == "split-folders" and report["classes"] == ["blue", "odd", "red"]
    bad = {os.path.basename(b["path"]): b["reason"] for b in report["bad"]}
    expected_bad = {n: o[1] for n, o in outcomes.items() if o[0] == "bad"}
    assert set(bad) == set(expected_bad)
    assert all(bad[n].startswith(reason) for n, reason in expected_bad.items())
    assert report["splits"]["train"]["per_class"]["odd"]["images"] == len(outcomes)
    assert report["splits"]["val"]["per_class"]["red"] == {"images": 5, "share": round(5 / 9, 4)}
    assert report["splits"]["train"]["imbalance_ratio"] == round(len(outcomes) / 8, 3)
    assert report["classes_missing_from_split"] == {"odd": ["val"]}
    leaked = {os.path.basename(p) for g in report["leakage"] for p in g["val"]}
    assert leaked == {"leak.jpg"}
    dup_names = [sorted(os.path.basename(p) for p in d["paths"]) for d in report["duplicates"]]
    assert ["linked.jpg", "my photo.JPG"] in dup_names and ["0.jpg", "leak.jpg"] in dup_names
    assert report["ignored"]["hidden"]["count"] == 1 and report["ignored"]["not_image"]["count"] == 1
    assert report["sizes"]["width"]["min"] == 1 and "one_pixel.png" in str(report["sizes"])
    for text in (
        "bad files: 4",
        "truncated.jpg: truncated file",
        "leakage",
        "class 'odd' has no images in: val",
        "imbalance ratio",
        "ignored: 1 hidden, 1 not image",
    ):
        assert text in result.stderr, text
    fail = run_cli("data", "check", tmp_path / "d", "--on-bad", "fail")
    assert fail.returncode == 2 and "resnetcls: error: 4 bad image(s)" in fail.stderr
    assert "Traceback" not in fail.stderr and "bomb.png" in fail.stderr.splitlines()[-1]


def _train_data_with_bad_files(root, tiny_data):
    for cls in ("blue", "green", "red"):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            (root / cls / f"{i}.jpg").symlink_to(tiny_data / cls / f"{i}.jpg")
    (root / "red" / "truncated.jpg").write_bytes((tiny_data / "red" / "0.jpg").read_bytes()[:300])
    (root / "blue" / "empty.jpg").write_bytes(b"")
    return root


def test_training_skips_bad_files_counts_them_and_writes_the_split(tiny_data, tmp_path):
    data = _train_data_with_bad_files(tmp_path / "d", tiny_data)
    result = run_cli("train", data, *TINY, "--epochs", "2", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipped bad image")]
    assert len(warnings) == 2 and any("truncated.jpg: truncated file" in w for w in warnings)
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["bad_images"] for r in records if r["kind"] == "epoch"] == [2, 2]
    assert sorted(os.path.basename(p) for p in records[-1]["bad_files"]) == ["empty.jpg", "truncated.jpg"]
    split = (tmp_path / "r" / "split.csv").read_text().splitlines()
    assert split[0] == "path,label,split" and len(split) == 1 + 38
    again = run_cli("train", tmp_path / "r" / "split.csv", *TINY, "--epochs", "1", "--out", tmp_path / "r2")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "r2" / "split.csv").read_text() == (tmp_path / "r" / "split.csv").read_text()


def test_on_bad_fail_stops_before_training_naming_every_bad_file(tiny_data, tmp_path):
    data = _train_data_with_bad_files(tmp_path / "d", tiny_data)
    for cache in ("true", "false"):
        result = run_cli(
            "train",
            data,
            *TINY,
            "--set",
            "data.on_bad=fail",
            "--set",
            f"data.cache={cache}",
            "--out",
            tmp_path / cache,
        )
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("resnetcls: error: 2 bad images (data.on_bad=fail")
        assert "truncated.jpg: truncated file" in last and "empty.jpg: empty file (0 bytes)" in last
        assert not (tmp_path / cache / "best").exists() and "epoch 1" not in result.stderr


def test_hymenoptera_gif_placeholder_is_checked_like_any_image(tmp_path):
    hymenoptera = shared_data("hymenoptera")
    root = tmp_path / "h"
    for cls in ("ants", "bees"):
        (root / cls).mkdir(parents=True)
        for path in sorted((hymenoptera / "train" / cls).iterdir())[:6]:
            (root / cls / path.name).symlink_to(path)
    gif = hymenoptera / "train" / "ants" / "imageNotFound.gif"
    if not (root / "ants" / gif.name).exists():
        (root / "ants" / gif.name).symlink_to(gif)
    result = run_cli("data", "check", root, "--out", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["bad"] == [] and report["sizes"]["distinct_sizes"] >= 2  # the GIF decodes like any image
    assert report["splits"]["all"]["per_class"]["ants"]["images"] == 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["--suggest-split", "split.txt"], "--suggest-split split.txt: expected a .csv file name"),
        (["--near-threshold", "40"], "argument --near-threshold: must be between 0 and 16"),
        (["--val-fraction", "1.5"], "argument --val-fraction: must be between 0 and 1"),
    ],
)
def test_bad_near_duplicate_flags_are_exit_2_naming_the_flag(tiny_data, tmp_path, args, message):
    result = run_cli("data", "check", tiny_data, *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
