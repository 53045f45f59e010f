"""Class names: NFC-normalised wherever they come from (folders, CSV labels), a byte that is not UTF-8 an
error naming where, warnings for spellings that differ only by normalisation or by case."""

import pytest
from PIL import Image

from resnetcls.data.classnames import class_name, undecodable_byte, warn_similar_names
from resnetcls.data.sources import read_data
from resnetcls.errors import UserError


def _img(path, colour=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def _csv_bytes(tmp_path, rows: list[bytes]) -> str:
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _img(tmp_path / name)
    path = tmp_path / "labels.csv"
    path.write_bytes(b"path,label\n" + b"".join(r + b"\n" for r in rows))
    return str(path)


def test_a_class_name_is_nfc_and_a_byte_that_is_not_utf8_is_named():
    assert class_name("cafe\u0301", "d/cafe") == "caf\u00e9"
    raw = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert undecodable_byte(raw) == "0xE9" and undecodable_byte("caf\u00e9") == ""
    with pytest.raises(UserError) as e:
        class_name(raw, "d/caf")
    assert str(e.value) == "d/caf: class name 'caf\\udce9' is not UTF-8 text (byte 0xE9); save it as UTF-8"


def test_similar_names_are_warned_about_once_each(capsys):
    warn_similar_names(["caf\u00e9", "cafe\u0301", "Tea", "tea", "milk"], "labels.csv")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("warning: labels.csv: 2 spellings of class 'café' differ only by Unicode")
    assert err[1] == (
        "warning: labels.csv: classes 'Tea', 'tea' differ only by case; they stay separate classes "
        "(rename one if they are the same)"
    )
    warn_similar_names(["a", "b"], "labels.csv")
    assert capsys.readouterr().err == ""


def test_labels_are_nfc_normalised_and_lookalikes_are_warned_about(tmp_path, capsys):
    nfc, nfd = "caf\u00e9".encode(), "cafe\u0301".encode()
    data = _csv_bytes(tmp_path, [b"a.png," + nfc, b"b.png," + nfd, b"c.png,Tea", b"d.png,tea"])
    assert read_data(data).classes == ["Tea", "caf\u00e9", "tea"]
    err = capsys.readouterr().err
    assert "2 spellings of class 'café' differ only by Unicode normalisation" in err
    assert "classes 'Tea', 'tea' differ only by case; they stay separate classes" in err


def test_class_folder_names_are_nfc_normalised(tmp_path):
    _img(tmp_path / "d" / "cafe\u0301" / "0.png")  # as macOS file systems spell it
    _img(tmp_path / "d" / "tea" / "0.png")
    assert read_data(str(tmp_path / "d")).classes == ["caf\u00e9", "tea"]
