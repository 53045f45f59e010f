"""The layouts users bring: every split-folder spelling is read and said, what is not read is named, and the
layouts that are not one folder per class are refused with the path to give instead."""

import json

import pytest
from PIL import Image

from resnetcls.data.layouts import SPLIT_HELP, csv_missing_file, say, split_folders, wrapper_hint
from resnetcls.data.sources import load_eval_samples, load_splits, read_data
from resnetcls.errors import UserError
from tests.conftest import run_cli


def _images(folder, n, colour=(10, 20, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), colour).save(folder / f"{i}.png")
    return folder


def _split_layout(root, counts):
    """root/<split folder>/<class>/ with counts[split folder] images per class (classes a and b)."""
    for folder, n in counts.items():
        for cls, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
            _images(root / folder / cls, n, colour)
    return root


def _lines(err):
    return err.strip().splitlines()


def test_a_roboflow_export_reads_valid_as_val_and_names_what_it_does_not_read(tmp_path, capsys):
    data = _split_layout(tmp_path / "DATA", {"train": 4, "valid": 2, "test": 1})
    (data / "README.roboflow.txt").write_text("exported")
    _images(data / "extra" / "a", 1)
    splits = load_splits(str(data))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 2)
    assert all("/valid/" in p for p in splits.val.paths)
    assert _lines(capsys.readouterr().err) == [
        f"note: {data}: train/ -> train, valid/ -> val, test/ -> test",
        f"warning: {data}/README.roboflow.txt: a file beside the split folders is not read; move it out",
        f"warning: {data}/extra: not a split folder ({SPLIT_HELP}); rename it or move it out",
    ]
    assert SPLIT_HELP == "train/, val/ (or valid/, validation/), test/"
    assert read_data(str(data)).ignored["not_a_split"] == [f"{data}/README.roboflow.txt", f"{data}/extra"]


@pytest.mark.parametrize("val_name", ["val", "valid", "validation", "Valid"])
def test_every_spelling_of_the_val_folder_is_the_val_split(tmp_path, capsys, val_name):
    data = _split_layout(tmp_path / "DATA", {"train": 3, val_name: 2})
    splits = load_splits(str(data))
    assert (len(splits.train), len(splits.val), splits.test) == (6, 4, None)
    assert _lines(capsys.readouterr().err) == [f"note: {data}: train/ -> train, {val_name}/ -> val"]


def test_yolo_classify_and_imagenet_style_train_val_class_folders_simply_work(tmp_path, capsys):
    data = _split_layout(tmp_path / "DATA", {"train": 5, "val": 2, "test": 3})
    splits = load_splits(str(data))
    assert splits.classes == ["a", "b"] and (len(splits.train), len(splits.val), len(splits.test)) == (
        10,
        4,
        6,
    )
    assert _lines(capsys.readouterr().err) == [f"note: {data}: train/ -> train, val/ -> val, test/ -> test"]


def test_two_folders_for_the_val_split_is_one_line_naming_both(tmp_path):
    data = _split_layout(tmp_path / "DATA", {"train": 2, "val": 1, "valid": 1})
    with pytest.raises(UserError) as e:
        load_splits(str(data))
    assert (
        str(e.value)
        == f"{data}: val/ and valid/ are both the val split; keep one (rename the other or move it out)"
    )


def test_data_check_and_training_both_read_valid_as_val(tmp_path):
    data = _split_layout(tmp_path / "DATA", {"train": 4, "valid": 3})
    result = run_cli("data", "check", data, "--out", tmp_path / "report.json")
    assert result.returncode == 0, result.stderr
    assert f"note: {data}: train/ -> train, valid/ -> val" in _lines(result.stderr)
    report = json.loads((tmp_path / "report.json").read_text())
    assert {s: t["images"] for s, t in report["splits"].items()} == {"train": 8, "val": 6}
    assert report["ignored"].get("not_a_split", {"count": 0})["count"] == 0
    splits = load_splits(str(data), val_fraction=0.5)  # a val folder is used whole, never a hold-out
    assert (len(splits.train), len(splits.val)) == (8, 6) and all("/valid/" in p for p in splits.val.paths)


def test_split_folders_without_train_are_evaluated_but_not_trained_on(tmp_path):
    data = _split_layout(tmp_path / "DATA", {"valid": 2, "test": 3})
    samples, which = load_eval_samples(str(data), ["a", "b"])
    assert which == "test" and len(samples) == 6
    with pytest.raises(UserError) as e:
        load_splits(str(data))
    assert (
        str(e.value)
        == f"{data}: no train split (DATA holds only val, test); training reads DATA/train/<class>/<image>"
    )


def test_class_folders_are_not_split_folders(tmp_path):
    data = _split_layout(tmp_path / "DATA", {"cat": 1, "val": 1})  # a class named val beside another class
    assert split_folders(data) is None and read_data(str(data)).classes == ["cat", "val"]


def test_a_wrapper_folder_gets_did_you_mean(tmp_path, capsys):
    nested = tmp_path / "nested"
    for cls in ("daisy", "rose", "tulip", "iris"):
        _images(nested / "flowers" / cls, 2)
    hint = (
        f"{nested}: its only folder flowers/ holds folders (daisy, iris, rose, ...), so it would be one "
        f"class, 'flowers'; did you mean {nested}/flowers?"
    )
    with pytest.raises(UserError) as e:
        load_splits(str(nested))
    assert str(e.value) == hint
    result = run_cli("data", "check", nested)  # reports what it sees, with the hint
    assert result.returncode == 0 and f"warning: {hint}" in _lines(result.stderr)
    assert len(load_splits(str(nested / "flowers")).classes) == 4
    capsys.readouterr()


def test_the_hint_goes_through_wrappers_to_split_folders(tmp_path):
    deep = tmp_path / "download"
    _split_layout(deep / "archive" / "flowers", {"train": 1, "val": 1})
    assert wrapper_hint(deep).endswith(f"did you mean {deep}/archive/flowers?")
    _images(tmp_path / "one" / "cat" / "2020", 1)  # one class with dated sub-folders: no wrapper
    assert wrapper_hint(tmp_path / "one") is None


def test_images_beside_labels_with_class_folders_inside_asks_for_images(tmp_path):
    data = tmp_path / "DATA"
    _images(data / "images" / "cat", 2)
    _images(data / "images" / "dog", 2)
    (data / "labels").mkdir()
    (data / "labels" / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(UserError) as e:
        load_splits(str(data))
    assert str(e.value) == (
        f"{data}: images/ beside labels/ is an object-detection layout (YOLO), but classification needs one "
        f"folder per class; {data}/images holds class folders: did you mean {data}/images?"
    )


def test_yolo_detection_layouts_are_refused_saying_what_classification_needs(tmp_path):
    flat, split = tmp_path / "flat", tmp_path / "split"
    for root in (flat, split / "train"):
        for part in ("train", "val"):
            _images(root / "images" / part, 2)
            (root / "labels" / part).mkdir(parents=True)
            (root / "labels" / part / "0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    needs = "folder per class ({}/<class>/<image>) or a CSV manifest with columns path,label"
    for root, named in ((flat, flat), (split, split / "train")):
        with pytest.raises(UserError) as e:
            read_data(str(root))
        assert str(e.value) == (
            f"{named}: images/ beside labels/ is an object-detection layout (YOLO), but classification "
            "needs one " + needs.format(named)
        )


def test_imagenet_val_of_loose_images_with_a_label_file_says_what_is_needed(tmp_path):
    data = _split_layout(tmp_path / "DATA", {"train": 2})
    _images(data / "val", 3)
    (data / "val" / "ground_truth.txt").write_text("1\n2\n1\n")
    with pytest.raises(UserError) as e:
        load_splits(str(data))
    assert str(e.value) == (
        f"{data}/val: no class sub-folders with images (expected DATA/<class>/<image>); 3 images lie "
        "directly in it: sort them into one sub-folder per class (a label file such as ground_truth.txt is "
        "not read: move each image into its class folder, or list the images in a CSV manifest with "
        "columns path,label,split)"
    )


def test_files_beside_class_folders_are_named_and_counted(tmp_path, capsys):
    data = _split_layout(tmp_path, {"DATA": 2}) / "DATA"
    _images(data, 1)  # DATA/0.png
    (data / "labels.csv").write_text("path,label\n")
    assert len(read_data(str(data)).splits["all"]) == 4
    assert _lines(capsys.readouterr().err) == [
        f"warning: {data}/0.png: an image outside any class folder is not read; move it into a class folder",
        f"warning: {data}/labels.csv: not read (only images inside {data}/<class>/ are); move it out",
    ]
    for i in range(1, 5):
        _images(data, 1).joinpath("0.png").rename(data / f"x{i}.png")
    read_data(str(data))
    assert (
        _lines(capsys.readouterr().err)[-1]
        == f"warning: {data}: 2 more files outside the class folders are not read"
    )


def test_csv_paths_relative_to_the_working_folder_are_named(tmp_path, monkeypatch):
    _images(tmp_path / "imgs" / "cat", 1)
    manifest = tmp_path / "lists" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label\nimgs/cat/0.png,cat\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        read_data(str(manifest))
    assert str(e.value) == (
        f"{manifest}:2: image file not found: 'imgs/cat/0.png' (not found relative to the CSV's folder "
        f"{tmp_path}/lists; it exists relative to the working folder: write paths relative to the CSV, or "
        "absolute)"
    )
    assert csv_missing_file(manifest, 3, "nowhere.png").endswith(
        f"(paths are relative to the CSV's folder {tmp_path}/lists)"
    )
    assert csv_missing_file(manifest, 3, "/abs/x.png") == f"{manifest}:3: image file not found: '/abs/x.png'"


def test_a_note_is_said_once(capsys):
    say("note: said once")
    say("note: said once")
    assert capsys.readouterr().err == "note: said once\n"
