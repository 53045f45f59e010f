"""DATA layouts: class folders, split folders, CSV manifests (line-numbered errors), OpenLORIS; splits."""

import csv

import pytest
from PIL import Image

from resnetcls.data.sources import load_splits, read_data, write_split_csv
from resnetcls.errors import UserError


def _img(path, colour=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


@pytest.fixture
def folders(tmp_path):
    for cls in ("ants", "bees"):
        for i in range(10):
            _img(tmp_path / "d" / cls / f"{i}.png")
    _img(tmp_path / "d" / "ants" / "UPPER.PNG")
    (tmp_path / "d" / "ants" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "d" / "bees" / "._0.png").write_bytes(b"x")
    (tmp_path / "d" / "bees" / "Thumbs.db").write_bytes(b"x")
    (tmp_path / "d" / "bees" / "notes.txt").write_text("x")
    _img(tmp_path / "d" / "bees" / ".ipynb_checkpoints" / "x.png")
    return tmp_path / "d"


def test_hidden_and_non_image_files_are_ignored_and_counted(folders):
    data = read_data(str(folders))
    assert data.layout == "folders" and data.classes == ["ants", "bees"]
    assert len(data.splits["all"]) == 21  # UPPER.PNG counts: extensions match case-insensitively
    assert sorted(p.split("/")[-1] for p in data.ignored["hidden"]) == [
        ".DS_Store",
        "._0.png",
        "Thumbs.db",
        "x.png",
    ]
    assert [p.split("/")[-1] for p in data.ignored["not_image"]] == ["notes.txt"]


def test_stratified_holdout_is_seeded_and_stratified(folders):
    a, b = (
        load_splits(str(folders), val_fraction=0.2, seed=3),
        load_splits(str(folders), val_fraction=0.2, seed=3),
    )
    assert a.val.paths == b.val.paths and a.train.paths == b.train.paths
    assert sorted(a.val.labels) == [0, 0, 1, 1]  # 20% of 11 ants rounds to 2, of 10 bees to 2
    assert not set(a.val.paths) & set(a.train.paths)
    assert load_splits(str(folders), val_fraction=0.2, seed=4).val.paths != a.val.paths


def _write_csv(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def test_csv_with_bom_extra_columns_and_split_by_groups(tmp_path):
    rows = []
    for cls in ("cat", "dog"):
        for i in range(12):
            _img(tmp_path / cls / f"{i}.png")
            rows.append(f"{cls}/{i}.png,{cls},session{i // 3},x{i}")
    manifest = _write_csv(tmp_path / "m.csv", "path,label,group,note\n" + "\n".join(rows) + "\n", "utf-8-sig")
    splits = load_splits(str(manifest), val_fraction=0.25, seed=0, split_by="group")
    assert splits.classes == ["cat", "dog"] and set(splits.train.extra) == {"group", "note"}
    for cls in (0, 1):  # no group is on both sides
        tr = {g for g, lab in zip(splits.train.extra["group"], splits.train.labels) if lab == cls}
        va = {g for g, lab in zip(splits.val.extra["group"], splits.val.labels) if lab == cls}
        assert va and not tr & va
    written = write_split_csv(splits, tmp_path / "split.csv")
    reread = load_splits(str(written))
    assert reread.val.paths == splits.val.paths and reread.train.extra["group"] == splits.train.extra["group"]
    with pytest.raises(UserError, match=r"data.split_by='video': no such column \(have: group, note\)"):
        load_splits(str(manifest), split_by="video")


@pytest.mark.parametrize(
    "body, message",
    [
        ("a.png,cat\nmissing.png,cat\n", r"m.csv:3: image file not found: 'missing.png'"),
        ("a.png,cat\na.png,\n", r"m.csv:3: empty label"),
        ("a.png,cat\na.png,cat,extra\n", r"m.csv:3: malformed row: expected 2 columns, got 3"),
    ],
)
def test_csv_row_problems_name_the_line(tmp_path, body, message):
    _img(tmp_path / "a.png")
    manifest = _write_csv(tmp_path / "m.csv", "path,label\n" + body)
    with pytest.raises(UserError, match=message):
        read_data(str(manifest))


def test_csv_unknown_split_and_every_problem_counted(tmp_path):
    _img(tmp_path / "a.png")
    manifest = _write_csv(
        tmp_path / "m.csv", "path,label,split\na.png,cat,train\na.png,cat,valid\nb.png,cat,train\n"
    )
    with pytest.raises(UserError) as err:
        read_data(str(manifest))
    assert str(err.value).startswith(f"{manifest}:3: unknown split 'valid'; expected train, val or test")
    assert str(err.value).endswith(
        f"(and 1 more: {manifest}:4: image file not found: 'b.png' (paths are relative to the CSV's folder "
        f"{tmp_path}))"
    )


def test_csv_header_without_label_column(tmp_path):
    manifest = _write_csv(tmp_path / "m.csv", "file,class\na.png,cat\n")
    with pytest.raises(UserError, match=r"m.csv:1: CSV header must have columns 'path', 'label'; missing"):
        read_data(str(manifest))


def _openloris(root):
    for folder, batches in (("train", (1, 2)), ("validation", (1, 2)), ("test", (1,))):
        for b in batches:
            d = root / folder / f"batch{b}"
            rows = [["file name", "label"]]
            for label in (0, 1, 10):
                for k in range(2):
                    _img(d / f"{label}_{k}.jpg")
                    rows.append([f"{label}_{k}.jpg", str(label)])
            with open(d / "label.csv", "w", newline="") as f:
                csv.writer(f).writerows(rows)
    return root


def test_openloris_layout_all_batches_and_selected_batches(tmp_path):
    root = _openloris(tmp_path / "ol")
    splits = load_splits(str(root))
    assert splits.classes == ["0", "1", "10"]  # integer labels, numeric order
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 12, 6)
    one = load_splits(str(root), batches="2")
    assert (len(one.train), len(one.val), len(one.test or [])) == (6, 6, 0)
    assert all("/batch2/" in p for p in one.train.paths)
    with pytest.raises(UserError, match=r"data.batches: no batch 7 in .* \(have 1, 2\)"):
        load_splits(str(root), batches="1,7")


def test_openloris_bad_label_names_the_line(tmp_path):
    root = _openloris(tmp_path / "ol")
    path = root / "train" / "batch2" / "label.csv"
    path.write_text(path.read_text() + "0_0.jpg,mug\n")
    with pytest.raises(UserError, match=r"batch2/label.csv:8: label 'mug' is not an integer"):
        read_data(str(root))


def _csv_bytes(tmp_path, rows: list[bytes]) -> str:
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _img(tmp_path / name)
    path = tmp_path / "labels.csv"
    path.write_bytes(b"path,label\n" + b"".join(r + b"\n" for r in rows))
    return str(path)


def test_a_label_that_is_not_utf8_is_an_error_naming_the_csv_line(tmp_path):
    data = _csv_bytes(tmp_path, [b"a.png,tea", b"b.png,caf\xe9", b"c.png,tea"])  # Latin-1 'cafe'
    with pytest.raises(UserError) as e:
        read_data(data)
    assert str(e.value) == (
        f"{data}:3: label 'caf\\udce9' is not UTF-8 text (byte 0xE9); save the CSV as UTF-8"
    )
