"""The run's split.csv is read as train writes it: every row's path (relative ones joined to the file's
folder) with its split, and a file that is not one is a one-line error naming it and the line."""

import pytest

from resnetcls.data.sources import Samples, Splits, write_split_csv
from resnetcls.errors import UserError
from resnetcls.records.runsplit import split_rows


def test_the_rows_train_writes_come_back_with_their_splits(tmp_path):
    paths = [str(tmp_path / f"red/{i}.jpg") for i in range(3)]
    samples = [Samples(paths[:2], [0, 0], ["red"]), Samples(paths[2:], [0], ["red"])]
    splits = Splits(["red"], *samples, None, {})
    rows = list(split_rows(write_split_csv(splits, tmp_path / "split.csv")))
    assert rows == [(paths[0], "train"), (paths[1], "train"), (paths[2], "val")]


def test_relative_paths_are_joined_to_the_files_folder_and_rows_without_a_path_are_skipped(tmp_path):
    (tmp_path / "split.csv").write_text("path,label,split\nred/0.jpg,red,val\n,red,train\n")
    assert list(split_rows(tmp_path / "split.csv")) == [(str(tmp_path / "red/0.jpg"), "val")]


def test_a_file_without_the_columns_is_a_one_line_error_naming_its_line(tmp_path):
    (tmp_path / "split.csv").write_text("file,label\na.jpg,red\n")
    with pytest.raises(UserError, match=r"split.csv:1: expected the columns 'path' and 'split'"):
        list(split_rows(tmp_path / "split.csv"))


def test_a_missing_file_says_it_cannot_be_read(tmp_path):
    with pytest.raises(UserError, match=r"split.csv: cannot read the run's split"):
        list(split_rows(tmp_path / "split.csv"))
