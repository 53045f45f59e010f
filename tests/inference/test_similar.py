"""`resnetcls similar` and resnetcls.similar: the nearest indexed images by cosine similarity (the known
answer: an image's nearest other image is its mirror image), the same answer from .npy and .parquet, the CLI
and the API, a running top-k over chunks, and one-line refusals of an index that is missing, corrupt or
another model's."""

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

import resnetcls
from resnetcls.errors import UserError
from resnetcls.inference import similar
from tests.conftest import run_cli
from tests.inference.test_embed import FP32, flipped_copies

QUERIES = [f"{i}.png" for i in range(6)]


class Indexed(NamedTuple):
    flips: Path  # N.png and N-flipped.png
    npy: Path
    parquet: Path


@pytest.fixture(scope="module")
def indexed(tiny_run, tmp_path_factory) -> Indexed:
    """The mirror-image pairs, embedded into emb.npy and emb.parquet (fp32: the two compare exactly)."""
    pytest.importorskip("pyarrow")
    flips = flipped_copies(tmp_path_factory.mktemp("similar") / "flips")
    found = Indexed(flips, flips.parent / "emb.npy", flips.parent / "emb.parquet")
    for out in (found.npy, found.parquet):
        result = run_cli("embed", tiny_run, flips, "--out", out, *FP32)
        assert result.returncode == 0, result.stderr
    return found


def cli_matches(tiny_run, flips, index, *extra) -> list[dict]:
    queries = [flips / q for q in QUERIES]
    result = run_cli("similar", tiny_run, *queries, "--index", index, "--topk", "3", "--json", *FP32, *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_nearest_other_image_is_its_mirror_image(tiny_run, indexed):
    flips = indexed.flips
    results = cli_matches(tiny_run, flips, indexed.npy)
    assert [r["query"] for r in results] == [str(flips / q) for q in QUERIES]
    for result in results:
        query = result["query"]
        matches = result["matches"]
        assert [m["rank"] for m in matches] == [1, 2, 3]
        assert query in [m["path"] for m in matches[:2]]  # itself, similarity 1
        others = [m for m in matches if m["path"] != query]
        assert others[0]["path"] == query.replace(".png", "-flipped.png"), result
        assert others[0]["similarity"] > others[1]["similarity"] + 0.05
        assert all(m["label"] in ("blue", "green", "red", "unknown") for m in matches)


def test_npy_parquet_cli_and_api_give_the_same_answer(tiny_run, indexed):
    flips, npy_index, parquet_index = indexed
    from_npy = cli_matches(tiny_run, flips, npy_index)
    from_parquet = cli_matches(tiny_run, flips, parquet_index)
    api = resnetcls.similar(
        tiny_run, [str(flips / q) for q in QUERIES], index=parquet_index, topk=3, precision="fp32"
    )
    one = resnetcls.similar(tiny_run, str(flips / "2.png"), index=npy_index, topk=3, precision="fp32")
    for a, b, c in zip(from_npy, from_parquet, api):
        assert [m["row"] for m in a["matches"]] == [m["row"] for m in b["matches"]] == [m.row for m in c]
        assert [m["path"] for m in a["matches"]] == [m.path for m in c]
        assert np.allclose([m["similarity"] for m in a["matches"]], [m.similarity for m in c], atol=1e-5)
    assert [m.path for m in one] == [m["path"] for m in from_npy[2]["matches"]]


def test_a_table_per_query_for_people(tiny_run, indexed):
    query = indexed.flips / "0.png"
    result = run_cli("similar", tiny_run, query, "--index", indexed.npy, "--topk", "2")
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines[0] == f"query: {query}"
    assert lines[1].split() == ["rank", "similarity", "path", "label"] and len(lines) == 4
    assert lines[2].split()[0] == "1" and float(lines[2].split()[1]) > 0.99


def test_the_running_top_k_over_small_chunks_is_the_full_sort(indexed, monkeypatch):
    vectors = np.load(indexed.npy)
    queries = vectors[[0, 5, 7]]
    full = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :4]
    monkeypatch.setattr(similar, "CHUNK_BYTES", 4 * 64 * 5)  # 5 rows a chunk: 3 chunks
    for index in (indexed.npy, indexed.parquet):
        rows, best = similar.nearest(similar.open_index(index), queries, 4)
        assert np.array_equal(rows, full) and np.all(np.diff(best, axis=1) <= 0)


def test_equal_similarities_list_the_lower_row_first_across_chunks():
    class Vectors:  # an index's chunks of 5 rows
        dim = 2

        def __init__(self, vectors):
            self.vectors = vectors

        def chunks(self, step):
            yield from (self.vectors[s : s + 5] for s in range(0, len(self.vectors), 5))

    vectors = np.tile(np.float32([[0, 1]]), (12, 1))
    vectors[[11, 7, 3]] = [1, 0]  # three copies of the query, in the three chunks
    rows, best = similar.nearest(Vectors(vectors), np.float32([[1, 0]]), 4)
    assert rows.tolist() == [[3, 7, 11, 0]] and best.tolist() == [[1, 1, 1, 0]]


def test_an_index_of_another_model_is_refused(tiny_run, indexed, tmp_path):
    flips, npy_index, parquet_index = indexed
    other = resnetcls.remove_class(tiny_run, "red", tmp_path / "other")
    result = run_cli("similar", other, flips / "0.png", "--index", npy_index)
    assert result.returncode == 2 and result.stdout == ""
    assert f"{npy_index}: built by another model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(UserError, match="built by another model"):
        resnetcls.similar(other, str(flips / "0.png"), index=parquet_index)


def test_a_missing_or_corrupt_index_is_one_line_exit_2(tiny_run, indexed, tmp_path):
    flips, npy_index = indexed.flips, indexed.npy
    good = np.load(npy_index)
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    (tmp_path / "garbage.json").write_text(npy_index.with_suffix(".json").read_text())
    (tmp_path / "garbage.csv").write_text("row,path,label,confidence\n")
    (tmp_path / "alone.npy").write_bytes(npy_index.read_bytes())
    np.save(tmp_path / "short.npy", good)
    (tmp_path / "short.json").write_text(npy_index.with_suffix(".json").read_text())
    (tmp_path / "short.csv").write_text("\n".join(npy_index.with_suffix(".csv").read_text().splitlines()[:5]))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 nothing here")
    (tmp_path / "emb.txt").write_text("x")
    cases = {
        "gone.npy": "index not found",
        "garbage.npy": "cannot read the index",
        "alone.npy": "alone.json: missing",
        "short.npy": "short.csv: 4 rows, but",
        "emb.txt": "expected a .npy or .parquet file",
        "bad.parquet": "cannot read the index",
    }
    for name, message in cases.items():
        result = run_cli("similar", tiny_run, flips / "0.png", "--index", tmp_path / name)
        assert result.returncode == 2 and message in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
