"""The one masking function and the path reduction of what is sent to a tracker."""

from __future__ import annotations

import json

import pytest

from resnetcls.utils.redact import (
    copy_shared,
    is_masked,
    local_roots,
    mask_secrets,
    mask_tree,
    share_path,
    share_text,
    share_tree,
    without_user_info,
)


@pytest.mark.parametrize(
    "given, shown",
    [
        (
            "postgresql+psycopg://tuner:S3cretPW@127.0.0.1:55432/tune",
            "postgresql+psycopg://tuner:***@127.0.0.1:55432/tune",
        ),
        ("https://me:p%40ss@mlflow.example.org/", "https://me:***@mlflow.example.org/"),
        ("mysql://u:pa/ss@w@db/x", "mysql://u:***@db/x"),  # an unescaped "/" or "@" in the password
        ("--storage=postgresql://u:pw@h/db --trials 3", "--storage=postgresql://u:***@h/db --trials 3"),
        ("host=db user=tuner password=S3cret dbname=tune", "host=db user=tuner password=*** dbname=tune"),
        ("host=db password='two words'", "host=db password=***"),
        ("http://h:5000/api?token=abc&x=1", "http://h:5000/api?token=***&x=1"),
        ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),  # nothing to mask
        (
            "postgresql+psycopg://tuner@db/tune",
            "postgresql+psycopg://tuner@db/tune",
        ),  # password from PGPASSWORD
        ("sqlite:////runs/a/mlflow.db", "sqlite:////runs/a/mlflow.db"),
    ],
)
def test_passwords_in_urls_and_dsns_are_masked_and_nothing_else_changes(given, shown):
    assert mask_secrets(given) == shown
    assert mask_secrets(shown) == shown  # masking twice changes nothing


def test_a_record_is_masked_throughout_and_a_masked_url_is_known_as_such():
    record = {"log": {"mlflow_uri": "http://u:pw@h"}, "argv": ["x", "postgresql://a:b@c/d"], "n": 3}
    assert mask_tree(record) == {
        "log": {"mlflow_uri": "http://u:***@h"},
        "argv": ["x", "postgresql://a:***@c/d"],
        "n": 3,
    }
    assert is_masked("http://u:***@h") and not is_masked("http://u:pw@h") and not is_masked("")
    assert without_user_info("http://u:***@h:5000/x") == "http://h:5000/x"


def test_absolute_paths_become_names_relative_ones_stay():
    tree = {
        "data": {"train": "/home/ana/photos", "val": "/home/ana/val.csv", "split_by": "group"},
        "log": {"mlflow_uri": "sqlite:////home/ana/runs/mlflow.db"},
        "rel": "photos/x.jpg",
    }
    assert share_tree(tree) == {
        "data": {"train": "photos", "val": "val.csv", "split_by": "group"},
        "log": {"mlflow_uri": "sqlite:///mlflow.db"},
        "rel": "photos/x.jpg",
    }
    assert share_path("") == "" and share_path("http://h/a/b") == "http://h/a/b"


def test_text_names_files_relative_to_their_data_folder_the_run_or_home(tmp_path):
    roots = local_roots(["/data/photos", "/data/val.csv", "/runs/r1"], home="/home/ana")
    text = (
        "/data/photos/red/1.jpg /data/val.csv /runs/r1/best /runs/r1 /home/ana/notes /data/photosx "
        + json.dumps("/data/photos/é.jpg")
    )
    assert share_text(text, roots) == 'red/1.jpg val.csv best r1 ~/notes photosx "\\u00e9.jpg"'
    src = tmp_path / "metrics.json"
    src.write_text(json.dumps({"top_losses": ["/data/photos/red/1.jpg"], "uri": "http://u:pw@h"}))
    copied = json.loads(copy_shared(src, tmp_path / "out" / "metrics.json", roots).read_text())
    assert copied == {"top_losses": ["red/1.jpg"], "uri": "http://u:***@h"}
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG/data/photos/")
    assert copy_shared(png, tmp_path / "out" / "a.png", roots).read_bytes() == png.read_bytes()
