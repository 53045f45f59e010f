"""`resnetcls data synth`: deterministic procedural demo data with the four OpenLORIS factors."""

import csv
import hashlib

from tests.conftest import run_cli


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_synth_writes_class_folders_and_manifest_deterministically(tmp_path):
    for name in ("a", "b"):
        result = run_cli(
            "data",
            "synth",
            tmp_path / name,
            "--classes",
            "4",
            "--per-class",
            "6",
            "--image-size",
            "32",
            "--seed",
            "3",
        )
        assert result.returncode == 0, result.stderr
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    rows = list(csv.DictReader(open(tmp_path / "a" / "manifest.csv")))
    assert list(rows[0]) == ["path", "label", "split", "illumination", "occlusion", "pixel_size", "clutter"]
    assert len(rows) == 24 and len({r["label"] for r in rows}) == 4
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["illumination"] in {"1", "2", "3"} for r in rows)
    assert all(
        (tmp_path / "a" / r["path"]).is_file() and r["path"].startswith(r["label"] + "/") for r in rows
    )


def test_other_seed_gives_other_images(tmp_path):
    for seed in ("1", "2"):
        run_cli(
            "data",
            "synth",
            tmp_path / seed,
            "--classes",
            "2",
            "--per-class",
            "3",
            "--image-size",
            "32",
            "--seed",
            seed,
        )
    assert _digest(tmp_path / "1") != _digest(tmp_path / "2")


def test_openloris_layout_is_the_challenge_protocol_and_reads_as_data(tmp_path):
    from resnetcls.data.sources import read_data

    out = tmp_path / "ol"
    r = run_cli(
        "data",
        "synth",
        out,
        "--layout",
        "openloris",
        "--classes",
        "3",
        "--per-class",
        "3",
        "--image-size",
        "32",
    )
    assert r.returncode == 0, r.stderr
    assert "--tasks batches" in r.stderr
    protocol = list(csv.DictReader(open(out / "batches.csv")))
    assert len(protocol) == 12 and [p["batch"] for p in protocol] == [str(k) for k in range(1, 13)]
    assert [(p["factor"], p["level"]) for p in protocol[:3]] == [
        ("illumination", "1"),
        ("illumination", "2"),
        ("illumination", "3"),
    ]
    assert [p["factor"] for p in protocol[3::3]] == ["occlusion", "pixel_size", "clutter"]
    for split in ("train", "validation", "test"):
        for k in range(1, 13):
            rows = list(csv.DictReader(open(out / split / f"batch{k}" / "label.csv")))
            assert list(rows[0]) == ["file name", "label"]
            # 3 images per object: one each for train, validation and test (a naive 70/15/15 gives 0 to
            # val/test)
            assert sorted(r["label"] for r in rows) == ["0", "1", "2"], (split, k)
            assert all((out / split / f"batch{k}" / r["file name"]).is_file() for r in rows)
    data = read_data(str(out), "5")
    assert data.layout == "openloris" and data.classes == ["0", "1", "2"]
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 3, "val": 3, "test": 3}
    assert len(list(csv.DictReader(open(out / "classes.csv")))) == 3


def test_openloris_layout_keeps_every_object_in_val_and_test_with_more_images(tmp_path):
    out = tmp_path / "ol"
    assert (
        run_cli(
            "data",
            "synth",
            out,
            "--layout",
            "openloris",
            "--classes",
            "2",
            "--per-class",
            "10",
            "--image-size",
            "16",
        ).returncode
        == 0
    )
    counts = {
        s: len(list(csv.DictReader(open(out / s / "batch1" / "label.csv"))))
        for s in ("train", "validation", "test")
    }
    assert counts == {"train": 2 * 6, "validation": 2 * 2, "test": 2 * 2}  # 15% of 10 rounds to 2


def test_multilabel_synth_plants_one_patch_per_label(tmp_path):
    import numpy as np
    from PIL import Image

    from resnetcls.data.sources import read_data
    from resnetcls.data.synth import PATCH_COLOURS, synthesize_multilabel

    manifest = synthesize_multilabel(tmp_path / "ml", images=12, image_size=24, seed=3)
    dataset = read_data(str(manifest))
    assert dataset.classes == sorted(PATCH_COLOURS)
    train = dataset.splits["train"]
    assert len(train) == 9 and len(dataset.splits["val"]) == 3
    for path, labels in zip(train.paths, train.label_sets):
        assert 1 <= len(labels) <= 3
        pixels = np.asarray(Image.open(path)).reshape(-1, 3)
        present = {name for name, rgb in PATCH_COLOURS.items() if (pixels == rgb).all(1).any()}
        assert present == {dataset.classes[label] for label in labels}
    columns = synthesize_multilabel(tmp_path / "cols", images=12, image_size=24, seed=3, columns=True)
    assert read_data(str(columns)).splits["train"].label_sets == train.label_sets
