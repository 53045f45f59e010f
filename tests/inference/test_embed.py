"""`resnetcls embed` and resnetcls.embed: L2-normalised pooled features written as .npy (+ .csv, .json) or
.parquet, streamed a batch at a time, unreadable images skipped and counted, one-line refusals."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

import resnetcls
from resnetcls.errors import UserError
from resnetcls.inference.embed import EXTRA, embed_images, model_sha256
from resnetcls.inference.predictor import Predictor
from tests.conftest import run_cli

# Distinct backgrounds, each with a darker mark off the centre: an image and its mirror image hold the same
# things in other places.
BACKGROUNDS = [(220, 30, 30), (20, 40, 220), (30, 200, 40), (230, 220, 40), (240, 240, 240), (110, 30, 160)]
FP32 = ("--precision", "fp32")  # bit-stable features, so the formats and the API compare exactly


def flipped_copies(root: Path) -> Path:
    """root/N.png (N = 0..5) and root/N-flipped.png, its horizontal mirror image."""
    root.mkdir(parents=True)
    for i, colour in enumerate(BACKGROUNDS):
        image = Image.new("RGB", (40, 40), colour)
        mark = tuple(v // 2 for v in colour)
        ImageDraw.Draw(image).rectangle([8, 8 + 3 * i, 14, 14 + 3 * i], fill=mark)
        image.save(root / f"{i}.png")
        ImageOps.mirror(image).save(root / f"{i}-flipped.png")
    return root


@pytest.fixture(scope="module")
def flips(tmp_path_factory) -> Path:
    return flipped_copies(tmp_path_factory.mktemp("embed") / "flips")


@pytest.fixture(scope="module")
def npy_index(tiny_run, flips) -> Path:
    out = flips.parent / "emb.npy"
    result = run_cli("embed", tiny_run, flips, "--out", out, *FP32)
    assert result.returncode == 0, result.stderr
    return out


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(path.read_text(encoding="utf-8").splitlines()))


def test_npy_holds_unit_features_with_a_csv_of_rows_and_the_models_hash(tiny_run, flips, npy_index):
    vectors = np.load(npy_index)
    paths = sorted(str(p) for p in flips.glob("*.png"))
    assert vectors.dtype == np.float32 and vectors.shape == (12, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    rows = read_csv(npy_index.with_suffix(".csv"))
    assert rows[0] == ["row", "path", "label", "confidence"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(12)] and [r[1] for r in rows[1:]] == paths
    assert {r[2] for r in rows[1:]} <= {"blue", "green", "red", "unknown"}
    assert all(0 < float(r[3]) <= 1 for r in rows[1:])
    record = json.loads(npy_index.with_suffix(".json").read_text())
    predictor = Predictor(tiny_run, precision="fp32", backend="torch")
    assert record["model_sha256"] == model_sha256(predictor) and (record["dim"], record["rows"]) == (64, 12)
    # the same vectors as the Python function on the same images, and as resnetcls.embed
    assert np.allclose(embed_images(predictor, paths, batch_size=5), vectors, atol=1e-6)
    summary = resnetcls.embed(tiny_run, flips, out=flips.parent / "api.npy", precision="fp32")
    assert (summary.rows, summary.dim, summary.skipped) == (12, 64, [])
    assert np.array_equal(np.load(flips.parent / "api.npy"), vectors)


def test_parquet_is_one_table_of_the_same_rows_written_a_row_group_per_batch(tiny_run, flips, npy_index):
    parquet = pytest.importorskip("pyarrow.parquet")
    out = flips.parent / "emb.parquet"
    result = run_cli("embed", tiny_run, flips, "--out", out, "--batch-size", "5", *FP32)
    assert result.returncode == 0, result.stderr
    assert f"embedded 12 images (64 features each) into {out}" in result.stderr
    file = parquet.ParquetFile(out)
    assert file.num_row_groups == 3  # 5 + 5 + 2: written as the batches came
    table = file.read()
    assert table.column_names == ["row", "path", "label", "confidence", "embedding"]
    kind = table.schema.field("embedding").type
    assert kind.num_fields == 1 and str(kind.value_type) == "float"  # list<float32>
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.allclose(vectors, np.load(npy_index), atol=1e-6)
    rows = read_csv(npy_index.with_suffix(".csv"))[1:]
    assert table.column("path").to_pylist() == [r[1] for r in rows]
    assert table.column("label").to_pylist() == [r[2] for r in rows]
    record = json.loads(table.schema.metadata[b"resnetcls"])
    assert record["model_sha256"] == json.loads(npy_index.with_suffix(".json").read_text())["model_sha256"]


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_unreadable_images_are_skipped_named_and_counted(tiny_run, flips, tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / f"emb{suffix}"
    result = run_cli(
        "embed", tiny_run, flips / "0.png", tmp_path / "broken.jpg", tmp_path / "gone.png", "--out", out
    )
    assert result.returncode == 2
    assert f"warning: {tmp_path / 'gone.png'}: file not found (not embedded)" in result.stderr
    assert f"warning: {tmp_path / 'broken.jpg'}:" in result.stderr
    assert "embedded 1 images" in result.stderr and "2 of 3 inputs could not be read" in result.stderr
    if suffix == ".npy":  # the preallocated rows of the skipped images are trimmed away
        assert np.load(out).shape == (1, 64) and len(read_csv(out.with_suffix(".csv"))) == 2
        assert json.loads(out.with_suffix(".json").read_text())["rows"] == 1
    else:
        assert pytest.importorskip("pyarrow.parquet").read_table(out).num_rows == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries left


def test_parquet_without_pyarrow_is_one_line_naming_the_extra(tiny_run, flips, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    result = run_cli("embed", tiny_run, flips, "--out", tmp_path / "emb.parquet")
    assert result.returncode == 2 and EXTRA in result.stderr and "resnetcls[embed]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_bad_arguments_are_one_line_errors(tiny_run, flips, tmp_path):
    for args, message in [
        (["--out", tmp_path / "emb.txt"], "expected a .npy or .parquet file name"),
        (["--out", tmp_path / "no" / "emb.npy"], "does not exist"),
    ]:
        result = run_cli("embed", tiny_run, flips, *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = run_cli("embed", tmp_path / "model.onnx", flips, "--out", tmp_path / "e.npy")
    assert result.returncode == 2 and "a bare ONNX file has no pooled features" in result.stderr
    result = run_cli("embed", tiny_run, tmp_path / "nothing", "--out", tmp_path / "e.npy")
    assert result.returncode == 2 and "no image files to embed" in result.stderr
    with pytest.raises(UserError, match="--batch-size 0"):
        resnetcls.embed(tiny_run, [flips], out=tmp_path / "e.npy", batch_size=0)
