"""`resnetcls rank`: uncertainty scores, the diverse pick, the manifest it writes, and training on it."""

import csv
import json
import math
import shutil

import pytest
import torch

import resnetcls.analysis.rank
from resnetcls.analysis.rank import TopPool, k_center_greedy, pick_order, uncertainty
from tests.conftest import TINY, run_cli
from tests.inference.test_command import KNOWN, OTHER, open_set_model


def test_margin_and_entropy_order_hand_made_probabilities():
    probs = torch.tensor(
        [
            [0.98, 0.01, 0.01],  # certain
            [0.50, 0.49, 0.01],  # a coin toss between two: the smallest margin
            [0.34, 0.33, 0.33],  # uniform: the highest entropy
            [0.70, 0.20, 0.10],
        ]
    )
    margin = uncertainty(probs, "margin")
    assert torch.allclose(margin, torch.tensor([0.03, 0.99, 0.99, 0.5]), atol=1e-6)
    entropy = uncertainty(probs, "entropy")
    assert math.isclose(float(entropy[2]), -sum(p * math.log(p) for p in (0.34, 0.33, 0.33)), rel_tol=1e-5)
    assert pick_order(margin, None) == [1, 2, 3, 0]  # ties keep the input order
    assert pick_order(entropy, 2) == [2, 3]  # spread over three classes beats a close two


def candidates(score, features, size, batch=3):
    """The --diverse pool as rank builds it: rows fed in batches, the `size` most uncertain kept."""
    pool = TopPool(size)
    for start in range(0, len(score), batch):
        rows = torch.arange(start, min(start + batch, len(score)))
        pool.add(rows, score[rows], features[rows])
    return pool.result()


def test_diverse_pick_spreads_over_clusters_where_plain_top_k_does_not():
    # Images 0-3: one cluster (near-duplicates), the most uncertain; 4-5 and 6-7: two other clusters.
    centres = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    cluster = [0, 0, 0, 0, 1, 1, 2, 2]
    features = centres[cluster] + 0.01 * torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    score = torch.tensor([0.99, 0.98, 0.97, 0.96, 0.90, 0.89, 0.80, 0.79])
    plain = pick_order(score, 3)
    diverse = pick_order(score, 3, candidates(score, features, 15))
    assert plain == [0, 1, 2]
    assert diverse[0] == 0 and sorted(cluster[i] for i in diverse) == [0, 1, 2]
    assert sorted(k_center_greedy(features, 0, 20)) == list(range(8))


def test_the_diverse_pool_is_the_most_uncertain_five_per_pick_whatever_the_number_of_images(monkeypatch):
    # 40 images, the lower the row the more uncertain; rows 8-11 tie across the pool's bound. Features: even
    # rows one direction, odd rows another, rows 11 and 13 a third; rows 30 and 31 point the opposite way to
    # the even rows (the farthest of all) but are too certain to be candidates.
    score = torch.linspace(1, 0, 40)
    score[8:12] = score[8]
    features = torch.nn.functional.one_hot(torch.arange(40) % 2, 4).float()
    features[[11, 13]] = torch.tensor([0, 0, 1.0, 0])
    features[30:32] = torch.tensor([-1.0, 0, 0, 0])
    assert k_center_greedy(features, 0, 2) == [0, 30]  # what an unbounded pool would pick
    rows, kept = candidates(score, features, 2 * resnetcls.analysis.rank.DIVERSE_POOL)
    assert rows.tolist() == list(range(10)) and torch.equal(kept, features[:10])  # ties: the earlier rows
    assert pick_order(score, 2, (rows, kept)) == [0, 1]

    monkeypatch.setattr(
        resnetcls.analysis.rank, "DIVERSE_PICKS", 3
    )  # without --limit: 3 picks among 15, then the rest
    unbounded = pick_order(score, None, candidates(score, features, 15))
    assert unbounded[:3] == [0, 1, 11]
    assert unbounded[3:] == [i for i in range(40) if i != 11][2:]  # every other image, most uncertain first


def unlabelled_copy(tiny_data, root):
    """tiny_data's images without their class folders (unlabelled), two levels deep, plus one bad file."""
    pool = root / "pool"
    for i, image in enumerate(sorted(tiny_data.rglob("*.jpg"))):
        target = pool / f"day{i % 2}" / f"{image.parent.name}-{image.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    (pool / "day0" / "broken.jpg").write_bytes(b"not a jpeg")
    return pool


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_rank_writes_a_manifest_most_uncertain_first_and_names_bad_files(
    tiny_run, tiny_data, tmp_path, monkeypatch
):
    pool = unlabelled_copy(tiny_data, tmp_path)
    out = tmp_path / "lists" / "rank.csv"
    out.parent.mkdir()
    result = run_cli("rank", tiny_run, pool, "--out", out, "--by", "entropy", "--precision", "fp32")
    assert result.returncode == 2  # one unreadable image, as `predict` reports it
    assert "broken.jpg" in result.stderr and "1 of 37 images could not be read" in result.stderr
    rows = read_rows(out)
    assert list(rows[0]) == ["path", "label", "guess", "guess_prob", "uncertainty"]
    assert len(rows) == 36 and all(r["label"] == "" for r in rows)
    scores = [float(r["uncertainty"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all((out.parent / r["path"]).is_file() for r in rows)  # relative to the CSV's folder
    assert {r["guess"] for r in rows} <= {"blue", "green", "red"}

    limited = run_cli("rank", tiny_run, pool, "--out", tmp_path / "d.csv", "--diverse", "--limit", "5")
    assert limited.returncode == 2 and len(read_rows(tmp_path / "d.csv")) == 5
    assert "5 picks among the 25 most uncertain" in limited.stderr

    monkeypatch.setattr(resnetcls.analysis.rank, "DIVERSE_PICKS", 4)  # the default picks, made small
    diverse = run_cli(
        "rank", tiny_run, pool, "--out", out.parent / "all.csv", "--diverse", "--precision", "fp32"
    )
    assert "4 picks among the 20 most uncertain, then the rest most uncertain first" in diverse.stderr
    picked = read_rows(out.parent / "all.csv")
    assert sorted(r["path"] for r in picked) == sorted(r["path"] for r in rows)  # every image, once
    assert {r["path"] for r in picked[:4]} <= {r["path"] for r in rows[:20]}  # picks among the 20 candidates
    rest = [float(r["uncertainty"]) for r in picked[4:]]
    assert rest == sorted(rest, reverse=True)


def test_the_filled_in_manifest_trains_and_an_unfilled_row_is_a_clear_error(tiny_run, tiny_data, tmp_path):
    pool = unlabelled_copy(tiny_data, tmp_path)
    (pool / "day0" / "broken.jpg").unlink()
    out = tmp_path / "rank.csv"
    assert run_cli("rank", tiny_run, pool, "--out", out, "--limit", "30").returncode == 0
    rows = read_rows(out)
    rows[0]["label"] = ""  # forgotten
    for r in rows[1:]:
        r["label"] = r["path"].split("/")[-1].split("-")[0]  # the "person" labels from the file name
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    refused = run_cli("train", out, *TINY, "--epochs", "1", "--out", tmp_path / "run")
    assert refused.returncode == 2 and f"{out}:2: empty label" in refused.stderr

    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[1:])
    trained = run_cli("train", out, *TINY, "--epochs", "1", "--out", tmp_path / "run")
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "run" / "best" / "model.json").is_file()


def test_bad_arguments_are_one_line_errors(tiny_run, tmp_path):
    missing = run_cli("rank", tiny_run, tmp_path / "nope", "--out", tmp_path / "r.csv")
    assert missing.returncode == 2 and "FOLDER must be a folder" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli("rank", tiny_run, tmp_path / "empty", "--out", tmp_path / "r.csv")
    assert empty.returncode == 2 and "no image files found" in empty.stderr
    nowhere = run_cli("rank", tiny_run, tmp_path / "empty", "--out", tmp_path / "no" / "r.csv")
    assert nowhere.returncode == 2 and "--out" in nowhere.stderr
    assert run_cli("rank", tiny_run, tmp_path, "--out", "r.csv", "--by", "luck").returncode == 2


def test_rank_runs_the_exported_model_with_backend_onnxruntime(tiny_run, tiny_data, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "best", model)
    assert run_cli("export", model, "--to", "onnx").returncode == 0
    pool = unlabelled_copy(tiny_data, tmp_path)
    (pool / "day0" / "broken.jpg").unlink()
    eager = run_cli(
        "rank", model, pool, "--out", tmp_path / "t.csv", "--backend", "torch", "--precision", "fp32"
    )
    onnx = run_cli("rank", model, pool, "--out", tmp_path / "o.csv", "--backend", "onnxruntime", "--diverse")
    assert eager.returncode == 0 and onnx.returncode == 0, onnx.stderr
    by_path = {r["path"]: r for r in read_rows(tmp_path / "t.csv")}
    rows = read_rows(tmp_path / "o.csv")
    assert sorted(r["path"] for r in rows) == sorted(by_path)
    for row in rows:
        assert row["guess"] == by_path[row["path"]]["guess"]
        assert abs(float(row["uncertainty"]) - float(by_path[row["path"]]["uncertainty"])) < 1e-4
    # The scores come from model.onnx itself: a changed file is refused, naming it.
    (model / "model.onnx").write_bytes((model / "model.onnx").read_bytes() + b"\0")
    changed = run_cli("rank", model, pool, "--out", tmp_path / "x.csv", "--backend", "onnxruntime")
    assert changed.returncode == 2 and f"{model / 'model.onnx'}: sha256 does not match" in changed.stderr


@pytest.fixture(scope="module")
def open_set(tiny_run, tiny_data, tmp_path_factory):
    return open_set_model(tiny_run, tiny_data, tmp_path_factory.mktemp("rank-open-set") / "model")


def test_rank_reports_open_set_scores_and_unknowns_without_changing_the_order(
    open_set, tiny_run, tiny_data, tmp_path
):
    folder = tmp_path / "pool"
    folder.mkdir()
    for name in KNOWN[:2] + OTHER[:2]:
        shutil.copy(tiny_data / name, folder / name.replace("/", "-"))
    assert run_cli("rank", open_set, folder, "--out", tmp_path / "on.csv").returncode == 0
    assert run_cli("rank", tiny_run, folder, "--out", tmp_path / "plain.csv").returncode == 0
    rows, plain = read_rows(tmp_path / "on.csv"), read_rows(tmp_path / "plain.csv")
    assert list(rows[0]) == [
        "path",
        "label",
        "guess",
        "guess_prob",
        "uncertainty",
        "open_set_score",
        "unknown",
    ]
    assert [r["path"] for r in rows] == [r["path"] for r in plain]  # the ranking stays the uncertainty's
    assert {r["path"]: r["unknown"] for r in rows} == {
        "pool/red-4.jpg": "false",
        "pool/red-5.jpg": "false",
        "pool/green-0.jpg": "true",
        "pool/green-1.jpg": "true",
    }
    threshold = json.loads((open_set / "model.json").read_text())["open_set"]["threshold"]
    assert all((float(r["open_set_score"]) < threshold) == (r["unknown"] == "true") for r in rows)
    off = run_cli("rank", open_set, folder, "--out", tmp_path / "off.csv", "--open-set", "off")
    assert off.returncode == 0 and list(read_rows(tmp_path / "off.csv")[0]) == list(plain[0])
    moved = run_cli("rank", open_set, folder, "--out", tmp_path / "m.csv", "--unknown-accept", "0.5")
    assert moved.returncode == 0 and moved.stderr.startswith("--unknown-accept 0.5: unknown below knn score")
    refused = run_cli("rank", tiny_run, folder, "--out", tmp_path / "x.csv", "--open-set", "on")
    assert refused.returncode == 2 and "has no open-set threshold" in refused.stderr


def test_a_multi_label_image_is_uncertain_where_a_class_sits_near_its_threshold():
    probs = torch.tensor(
        [
            [0.99, 0.01, 0.02],  # every class far from its threshold: certain
            [0.90, 0.52, 0.02],  # the second class just above its threshold of 0.5
            [0.50, 0.50, 0.50],  # every class at 0.5: the highest entropy
        ]
    )
    thresholds = [0.5, 0.5, 0.3]
    margin = uncertainty(probs, "margin", thresholds)
    assert torch.allclose(margin, torch.tensor([1 - 0.28, 1 - 0.02, 1.0]), atol=1e-6)
    entropy = uncertainty(probs, "entropy", thresholds)
    assert math.isclose(float(entropy[2]), math.log(2), rel_tol=1e-5)
    assert pick_order(margin, None) == [2, 1, 0] and pick_order(entropy, None) == [2, 1, 0]


def test_rank_on_a_multi_label_model_guesses_its_labels(tiny_run, tiny_data, tmp_path):
    from tests.inference.test_multilabel import ALWAYS_NEVER_ALWAYS, multilabel_model

    model = multilabel_model(tiny_run, tmp_path / "model", ALWAYS_NEVER_ALWAYS)
    out = tmp_path / "rank.csv"
    result = run_cli("rank", model, tiny_data / "green", "--out", out, "--backend", "torch")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and all(sorted(r["guess"].split(";")) == ["blue", "red"] for r in rows)
    probs = [[float(p) for p in r["guess_prob"].split(";")] for r in rows]
    assert all(p == sorted(p, reverse=True) for p in probs)
    scores = [float(r["uncertainty"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
