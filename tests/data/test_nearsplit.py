"""Near-duplicate groups across splits in `resnetcls data check`: the groups, the share of val images with a
near-duplicate in train (under the default hold-out for DATA without a split), and --suggest-split's split.csv
that keeps each group on one side."""

import csv
import json
import os
from collections import defaultdict

from tests.conftest import TINY, run_cli
from tests.data.corpus import write_photo_set


def test_data_check_lists_a_near_duplicate_group_across_splits_with_the_share(tmp_path):
    root = write_photo_set(tmp_path / "d", leaky_val=1)  # val/a/copy0.jpg ~ train/a/0.png, same in b
    result = run_cli("data", "check", root, "--out", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    near = json.loads((tmp_path / "r.json").read_text())["near_duplicates"]
    assert near["threshold"] == 8 and near["group_count"] == 2 and near["across_splits"] == 2
    assert 0 < near["expected_false_matches_per_image"] < 0.01 and "by chance about" in result.stderr
    assert sorted(sorted(os.path.relpath(f["path"], root) for f in g["files"]) for g in near["groups"]) == [
        ["train/a/0.png", "val/a/copy0.jpg"],
        ["train/b/0.png", "val/b/copy0.jpg"],
    ]
    assert near["groups"][0]["splits"] == {"train": 1, "val": 1}
    assert near["leak"] == {"val": {"images": 8, "with_near_duplicate_in_train": 2, "share": 0.25}}
    assert "2 groups (4 files); 0 within one split, 2 across splits" in result.stderr
    assert "2 of 8 val images (25.0%) have a near-duplicate in train" in result.stderr


def test_data_check_without_a_split_measures_the_default_hold_out(tiny_data, tmp_path):
    result = run_cli("data", "check", tiny_data, "--out", tmp_path / "r.json")
    near = json.loads((tmp_path / "r.json").read_text())["near_duplicates"]
    assert near["split"].startswith("simulated") and near["leak"]["val"]["images"] == 3  # 10% of 12 per class
    assert near["flat_images_not_compared"] == 36 and near["group_count"] == 0  # solid colours: no layout
    assert "0 of 3 val images (0.0%) have a near-duplicate in train (simulated" in result.stderr


def test_suggest_split_keeps_each_group_on_one_side_and_train_accepts_it(tmp_path):
    root = write_photo_set(tmp_path / "d", leaky_val=3)
    split_csv = tmp_path / "split.csv"
    result = run_cli("data", "check", root, "--suggest-split", split_csv, "--val-fraction", "0.3")
    assert result.returncode == 0, result.stderr
    assert (
        f"suggested split written to {split_csv}" in result.stderr
        and f"resnetcls train {split_csv}" in result.stderr
    )
    rows = list(csv.DictReader(split_csv.open()))
    sides = defaultdict(set)
    for row in rows:
        sides[row["neardup_group"]].add(row["split"])
    assert len(rows) == 24 and all(len(s) == 1 for s in sides.values())
    assert sum(1 for g in sides if g.startswith("g")) == 6  # the planted pairs
    assert {r["split"] for r in rows} == {"train", "val"}
    again = run_cli("data", "check", split_csv, "--out", tmp_path / "r.json")
    assert (
        json.loads((tmp_path / "r.json").read_text())["near_duplicates"]["leak"]["val"][
            "with_near_duplicate_in_train"
        ]
        == 0
    ), again.stderr
    trained = run_cli("train", split_csv, *TINY, "--epochs", "1", "--out", tmp_path / "run")
    assert trained.returncode == 0, trained.stderr
    assert "near-duplicate in train" not in trained.stderr
