"""Which of eval's images trained the model: the run's split.csv against DATA, by resolved path."""

import os
from pathlib import Path

import pytest
import torch

from resnetcls.analysis.overlap import Routed, find_overlap, read_run_split
from resnetcls.data.sources import Samples
from resnetcls.errors import UserError


def make_run(tmp_path: Path, splits: dict[str, str]) -> Path:
    """RUN/best (empty: only its place matters) and RUN/split.csv with absolute paths, as train writes it."""
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    rows = ["path,label,split"] + [f"{os.path.abspath(p)},red,{s}" for p, s in splits.items()]
    (run / "split.csv").write_text("\n".join(rows) + "\n")
    return run / "best"


def images(root: Path, names: list[str]) -> list[str]:
    (root / "red").mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / "red" / name).write_bytes(b"x")
    return [str(root / "red" / name) for name in names]


def test_training_and_val_images_are_found_through_symlinks_and_relative_paths(tmp_path, monkeypatch):
    a, b, c, d = images(tmp_path / "photos", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    model = make_run(tmp_path, {a: "train", b: "train", c: "val"})
    (tmp_path / "linked").symlink_to(tmp_path / "photos")  # the same images under another name
    (tmp_path / "one.jpg").symlink_to(b)  # a link to one image
    monkeypatch.chdir(tmp_path)
    paths = ["linked/red/a.jpg", str(tmp_path / "one.jpg"), c, d]
    overlap = find_overlap(model, Samples(paths, [0] * 4, ["red"]))
    assert overlap.known and overlap.train == [0, 1] and overlap.val == [2] and overlap.held_out == [2, 3]
    assert overlap.record(False) == {
        "split_csv": str(model.parent / "split.csv"),
        "data_images": 4,
        "training_images": 2,
        "val_images": 1,
        "held_out_images": 2,
        "include_train": False,
    }


def test_the_notes_say_how_many_images_are_which(tmp_path):
    a, b, c, d = images(tmp_path / "photos", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    model = make_run(tmp_path, {a: "train", b: "train", c: "val"})
    overlap = find_overlap(model, Samples([a, b, c, d], [0] * 4, ["red"]))
    split = model.parent / "split.csv"
    assert overlap.note("photos/", False) == (
        f"note: 2 of 4 images in photos/ are the model's training images ({split}); scoring the other 2 "
        f"(--include-train to score all); 1 of the held-out images is the run's val image (its val score "
        f"came from them)"
    )
    assert overlap.note("photos/", True).startswith(
        f"note: 2 of 4 images in photos/ are the model's training images ({split}); scoring all 4, the "
        f"training images' numbers apart;"
    )
    val_only = find_overlap(model, Samples([c, d], [0] * 2, ["red"]))
    assert val_only.note("v/", False) == (
        f"note: 1 of 2 images in v/ is the run's val image ({split}): held out from training, its val "
        f"score came from them"
    )
    assert find_overlap(model, Samples([d], [0], ["red"])).note("new/", False) is None  # nothing to say
    all_train = find_overlap(model, Samples([a, b], [0] * 2, ["red"]))
    assert "all 2 images in t/ are the model's training images" in all_train.refusal("t/")
    assert "--include-train" in all_train.refusal("t/")


def test_without_split_csv_nothing_is_known_and_the_note_says_so(tmp_path):
    (tmp_path / "model").mkdir()
    (a,) = images(tmp_path / "photos", ["a.jpg"])
    overlap = find_overlap(tmp_path / "model", Samples([a], [0], ["red"]))
    assert not overlap.known and overlap.held_out == [0] and overlap.record(True)["training_images"] is None
    assert overlap.note("photos/", False) == (
        f"note: cannot tell which of the 1 images in photos/ trained the model (no "
        f"{tmp_path / 'split.csv'}); scoring all 1"
    )


def test_a_split_csv_without_its_columns_is_a_one_line_error(tmp_path):
    (tmp_path / "split.csv").write_text("file,label\na.jpg,red\n")
    with pytest.raises(UserError, match=r"split.csv:1: expected the columns 'path' and 'split'"):
        read_run_split(tmp_path / "split.csv")


def test_a_repeated_path_counts_as_training_when_any_row_trains_on_it(tmp_path):
    (tmp_path / "split.csv").write_text("path,label,split\n/x/a.jpg,red,val\n/x/a.jpg,red,train\n")
    assert read_run_split(tmp_path / "split.csv") == {"/x/a.jpg": "train"}


class Collect:
    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def add(self, logits, labels, index) -> None:
        assert len(logits) == len(labels) == len(index)
        self.seen.append(index.tolist())


def test_routed_sends_each_image_to_its_own_accumulator():
    held, trained = Collect(), Collect()
    routed = Routed(held, trained, [1, 4, 5], images=6)
    routed.add(torch.zeros(4, 3), torch.zeros(4), torch.tensor([0, 1, 2, 3]))
    routed.add(torch.zeros(2, 3), torch.zeros(2), torch.tensor([4, 5]))  # only training images
    assert held.seen == [[0, 2, 3]] and trained.seen == [[1], [4, 5]]
