"""Multi-label CSV manifests: the label-set form (`cup;spoon`), the 0/1 class-column form, their one-line
errors, the hold-out and balanced-sampler strata, and `data check`'s co-occurrence section."""

import re

import pytest
from PIL import Image

from resnetcls.data.check import NearOptions, check_data
from resnetcls.data.csvlabels import CsvLabels, rarest_labels, sampler_labels
from resnetcls.data.sources import load_splits, read_csv, read_data, write_split_csv
from resnetcls.errors import UserError


@pytest.fixture
def images(tmp_path):
    for i in range(8):
        Image.new("RGB", (8, 8), (i * 30, 10, 10)).save(tmp_path / f"{i}.png")
    return tmp_path


def _csv(folder, text, name="m.csv"):
    (folder / name).write_text(text)
    return folder / name


def test_label_column_with_separator_reads_label_sets(images):
    path = _csv(images, "path,label\n0.png,cup;spoon\n1.png,spoon\n2.png, fork ; cup\n3.png,fork\n")
    samples, split = read_csv(path)
    assert samples.classes == ["cup", "fork", "spoon"]
    assert samples.label_sets == [(0, 2), (2,), (1, 0), (1,)]
    assert samples.labels == [0, 2, 1, 1]  # each image's first label
    assert split == []


def test_single_label_csv_stays_single_label(images):
    samples, _ = read_csv(_csv(images, "path,label\n0.png,cup\n1.png,spoon\n"))
    assert samples.label_sets is None and samples.labels == [0, 1]


def test_multi_label_off_keeps_the_separator_in_the_name(images):
    samples, _ = read_csv(
        _csv(images, "path,label\n0.png,cup;spoon\n1.png,cup\n"), CsvLabels(multi_label="off")
    )
    assert samples.label_sets is None and samples.classes == ["cup", "cup;spoon"]


def test_multi_label_on_and_another_separator(images):
    path = _csv(images, "path,label\n0.png,cup|spoon\n1.png,cup\n2.png,\n")
    samples, _ = read_csv(path, CsvLabels(separator="|", multi_label="on"))
    assert samples.label_sets == [(0, 1), (0,), ()]  # an empty label: an image without any class


def test_zero_one_columns_with_extra_and_split_columns(images):
    text = "path,spoon,cup,group,split\n0.png,1,0,a,train\n1.png,0,0,b,train\n2.png,1,1,a,val\n"
    samples, split = read_csv(_csv(images, text))
    assert samples.classes == ["cup", "spoon"]
    assert samples.label_sets == [(1,), (), (0, 1)]
    assert samples.extra == {"group": ["a", "b", "a"]}
    assert split == ["train", "train", "val"]


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("path,cup,spoon\n0.png,1,0\n1.png,2,0\n", CsvLabels(), "m.csv:3: column 'cup' holds '2'"),
        ("path,label\n0.png,cup;;spoon\n", CsvLabels(), "m.csv:2: label 'cup;;spoon' has an empty label"),
        ("path,group\n0.png,a\n", CsvLabels(), "m.csv:1: CSV header has no 'label' column and no 0/1 class"),
        ("path,cup\n0.png,1\n", CsvLabels(multi_label="off"), "m.csv:1: CSV header must have columns"),
        ("path,label\n0.png,a\n", CsvLabels(multi_label="maybe"), "data.multi_label='maybe'"),
        ("path,label\n0.png,a\n", CsvLabels(separator=","), "data.label_separator=','"),
    ],
)
def test_bad_manifests_are_one_line_errors(images, text, options, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        read_csv(_csv(images, text), options)
    assert "\n" not in str(e.value)


def test_numeric_split_by_column_is_not_a_class(images):
    text = "path,cup,spoon,site\n0.png,1,0,7\n1.png,0,1,8\n"
    samples, _ = read_csv(_csv(images, text), CsvLabels(split_by="site"))
    assert samples.classes == ["cup", "spoon"] and samples.extra == {"site": ["7", "8"]}


def test_holdout_and_sampler_use_the_rarest_label(images):
    assert rarest_labels([(0, 1), (0,), (), (1, 2)], 3) == [0, 0, -1, 2]  # ties: the first class
    rows = "".join(f"{i}.png,{'cup;spoon' if i < 2 else 'cup'}\n" for i in range(8))
    splits = load_splits(str(_csv(images, "path,label\n" + rows)), val_fraction=0.5, seed=0)
    # the two spoon images are the spoon stratum: one on each side
    assert [s.count((0, 1)) for s in (splits.train.label_sets, splits.val.label_sets)] == [1, 1]
    assert sampler_labels(splits.train) == [1 if s == (0, 1) else 0 for s in splits.train.label_sets]


def test_split_csv_round_trips_label_sets(images, tmp_path):
    rows = "".join(f"{i}.png,{'cup;spoon' if i % 2 else 'cup'}\n" for i in range(7)) + "7.png,\n"
    splits = load_splits(str(_csv(images, "path,label\n" + rows)), val_fraction=0.25, seed=0)
    back = read_data(str(write_split_csv(splits, tmp_path / "split.csv")))
    assert back.splits["train"].label_sets == splits.train.label_sets
    assert back.splits["val"].label_sets == splits.val.label_sets


def test_data_check_reports_cooccurrence(images, capsys):
    text = "path,label\n0.png,cup;spoon\n1.png,cup;spoon\n2.png,cup;fork\n3.png,cup\n4.png,fork\n"
    report = check_data(str(_csv(images, text)), workers=1)
    section = report["multi_label"]
    assert section["per_class"] == {"cup": 4, "fork": 2, "spoon": 2}
    assert section["labels_per_image"] == {"0": 0, "1": 2, "2": 3}
    assert section["top_pairs"][0] == {"classes": ["cup", "spoon"], "images": 2}
    assert report["splits"]["all"]["per_class"]["cup"]["images"] == 4  # every label counts
    err = capsys.readouterr().err
    assert "multi-label: 5 images; images per number of labels (0: 0, 1: 2, 2: 3)" in err
    assert "cup + spoon: 2" in err


def test_suggested_split_keeps_label_sets(images, tmp_path):
    rows = "".join(f"{i}.png,{'cup;spoon' if i % 2 else 'cup'}\n" for i in range(8))
    report = check_data(
        str(_csv(images, "path,label\n" + rows)), workers=1, near=NearOptions(suggest=str(tmp_path / "s.csv"))
    )
    assert report["suggested_split"]["path"] == str(tmp_path / "s.csv")
    back = read_data(str(tmp_path / "s.csv"))
    assert (
        sorted(back.splits["train"].label_sets + back.splits["val"].label_sets) == [(0,)] * 4 + [(0, 1)] * 4
    )
