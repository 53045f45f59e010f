"""`resnetcls data synth`: deterministic procedural demo data with the four OpenLORIS factors."""
import csv
import hashlib

from tests.conftest import run_cli


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_writes_class_folders_and_manifest_deterministically(tmp_path):
    for name in ("a", "b"):
        result = run_cli("data", "synth", tmp_path / name, "--classes", "4", "--per-class", "6",
                         "--image-size", "32", "--seed", "3")
        assert result.returncode == 0, result.stderr
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    rows = list(csv.DictReader(open(tmp_path / "a" / "manifest.csv")))
    assert list(rows[0]) == ["path", "label", "split", "illumination", "occlusion", "pixel_size", "clutter"]
    assert len(rows) == 24 and len({r["label"] for r in rows}) == 4
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["illumination"] in {"1", "2", "3"} for r in rows)
    assert all((tmp_path / "a" / r["path"]).is_file() and r["path"].startswith(r["label"] + "/") for r in rows)


def test_other_seed_gives_other_images(tmp_path):
    for seed in ("1", "2"):
        run_cli("data", "synth", tmp_path / seed, "--classes", "2", "--per-class", "3", "--image-size", "32",
                "--seed", seed)
    assert _digest(tmp_path / "1") != _digest(tmp_path / "2")
