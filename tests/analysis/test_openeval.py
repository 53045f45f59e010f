"""eval's open-set numbers: --unknown FOLDER against DATA's images, what a model's threshold costs on them,
the softmax stand-in for a model without an open-set record, and the report's histogram and table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetcls
from resnetcls.analysis.openeval import OpenSetOptions, ScoringPass, find_unknown, known_block, open_set_lines
from resnetcls.analysis.report_sections import eval_section
from resnetcls.data.sources import load_eval_samples
from resnetcls.data.transforms import make_preprocess, stack_images
from resnetcls.errors import UserError
from resnetcls.inference.predictor import Predictor
from resnetcls.models import create_model
from resnetcls.records.modelfile import save_model_dir, write_open_set
from resnetcls.utils.openset import OpenSetScorer, auroc, fit_scorer, score_quantiles, threshold_for
from tests.conftest import run_cli

CLASSES = ["blue", "green", "red"]


def tiny_model(path: Path) -> Path:
    torch.manual_seed(0)
    args = {"stem": "small", "width": 8}
    return save_model_dir(
        path, create_model("resnet18", 3, **args), "resnet18", args, CLASSES, make_preprocess(32)
    )


def scores_of(model: Path, paths: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled features, raw logits and (with a record) open-set scores of images, all in one batch."""
    predictor = Predictor(model, precision="fp32")
    batch = stack_images([predictor.load(p) for p in paths])
    features, logits = predictor.features_and_logits(batch)
    scores = predictor.scored_probabilities(batch)[1]
    return features, logits, scores


def add_open_set(model: Path, data: Path, threshold: float | None = None) -> torch.Tensor:
    """A kNN open-set record fitted on DATA's images (threshold: accepting 95% of them unless given); their
    scores."""
    samples, _ = load_eval_samples(str(data), CLASSES)
    features, logits, _ = scores_of(model, samples.paths)
    fitted = fit_scorer("knn", features, torch.tensor(samples.labels), len(CLASSES))
    # k=5: the images scored are the bank's own, and each one's nearest neighbour (k=1) is itself (score 1)
    scorer = OpenSetScorer("knn", fitted.tensors(), k=5)
    known = scorer(features, logits)
    quantiles = score_quantiles(known)
    chosen = threshold_for(quantiles, 0.95) if threshold is None else threshold
    write_open_set(model, scorer, {"threshold": chosen, "accept": 0.95, "quantiles": quantiles})
    return known


@pytest.fixture(scope="module")
def unknown_folder(tmp_path_factory) -> Path:
    """Objects that are none of the classes: coloured noise and stripes (the classes are flat colours), in
    nested folders, with one file that is not an image."""
    root = tmp_path_factory.mktemp("unknown") / "unknown"
    rng = np.random.default_rng(0)
    for i in range(8):
        folder = root / ("noise" if i % 2 else "stripes/deep")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        if i % 2 == 0:
            pixels[::4] = 255
        Image.fromarray(pixels).save(folder / f"{i}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def eval_json(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_unknown_images_at_a_threshold_accepting_every_known_image(tiny_data, unknown_folder, tmp_path):
    model = tiny_model(tmp_path / "m")
    known = add_open_set(model, tiny_data, threshold=None)
    threshold = float(known.min()) - 1e-3  # every known image accepted: a known answer for the unknown ones
    known = add_open_set(model, tiny_data, threshold=threshold)
    unknown_paths = sorted(str(p) for p in unknown_folder.rglob("*.png"))
    unknown = scores_of(model, unknown_paths)[2]
    out = tmp_path / "ev"
    result = run_cli(
        "eval", model, tiny_data, "--unknown", unknown_folder, "--out", out, "--precision", "fp32"
    )
    assert result.returncode == 0, result.stderr
    block = eval_json(out)["open_set"]
    assert block["score"] == "knn" and not block["fallback"] and block["accept"] == 0.95
    assert block["threshold"] == pytest.approx(threshold)
    assert block["known_images"] == 36 and block["known_accepted"] == 1.0 and block["known_rejected"] == 0.0
    m = eval_json(out)
    assert block["accuracy_with_rejection"] == pytest.approx(m["top1"])  # nothing rejected: plain top-1
    assert block["accepted_top1"] == pytest.approx(m["top1"])
    assert block["unknown_images"] == 8 and block["unknown_skipped"] == 1
    assert block["unknown_bad_images"][0]["path"].endswith("broken.jpg")
    assert block["unknown_rejected"] == pytest.approx(float((unknown < threshold).double().mean()))
    assert 0 <= block["auroc"] <= 1 and block["auroc"] == pytest.approx(auroc(known, unknown), abs=0.01)
    assert 0 <= block["fpr_at_95_tpr"] <= 1
    assert m["figures"]["open_set"] == "open_set_scores.png" and (out / "open_set_scores.png").is_file()
    lines = result.stdout.splitlines()
    assert lines[2].startswith(f"open set: score knn, threshold {threshold:.4g}, set to accept 95% of known")
    assert "known images: 100.00% accepted, 0.00% rejected; accuracy with rejection" in lines[3]
    rejected = f"{block['unknown_rejected']:.2%}"
    assert lines[4].startswith(f"  unknown images (8, 1 skipped): {rejected} rejected; AUROC ")
    assert "skipped unknown image" in result.stderr and "broken.jpg" in result.stderr


def test_the_report_shows_the_histogram_and_the_table(tiny_data, unknown_folder, tmp_path):
    model = tiny_model(tmp_path / "m")
    add_open_set(model, tiny_data)
    out = tmp_path / "ev"
    assert run_cli("eval", model, tiny_data, "--unknown", unknown_folder, "--out", out).returncode == 0
    page = eval_section(out)
    assert "<h3 id='open-set'>Unknown objects</h3>" in page and 'id="fig-open-set"' in page
    assert "data:image/png;base64," in page.split('id="fig-open-set"')[1][:200]
    table = page.split("<table id='open-set-table'>")[1].split("</table>")[0]
    block = eval_json(out)["open_set"]
    for label, key in (("AUROC", "auroc"), ("unknown rejected", "unknown_rejected"), ("known rejected", "")):
        assert f"<td>{label}</td>" in table
        if key:
            assert f"<td>{block[key]:.4f}</td>" in table
    with Image.open(out / "open_set_scores.png") as img:
        assert img.width > 300 and img.height > 200


def test_a_model_without_a_record_is_scored_by_the_softmax(tiny_data, unknown_folder, tmp_path, capsys):
    model = tiny_model(tmp_path / "m")
    out = tmp_path / "ev"
    result = run_cli("eval", model, tiny_data, "--unknown", unknown_folder / "noise", "--out", out)
    assert result.returncode == 0, result.stderr
    note = [line for line in result.stderr.splitlines() if "largest calibrated softmax probability" in line]
    assert len(note) == 1 and "has no open-set record" in note[0] and "accepting 95%" in note[0]
    block = eval_json(out)["open_set"]
    assert block["score"] == "msp" and block["fallback"] and block["accept"] == 0.95
    assert block["unknown_images"] == 4 and block["unknown_skipped"] == 0
    assert 0.9 <= block["known_accepted"] <= 1.0  # the 5% quantile of 36 scores: 34 or 35 of them accepted
    assert "open set: score msp (the largest calibrated softmax probability)" in result.stdout
    # without --unknown such a model reports nothing about open sets
    plain = run_cli("eval", model, tiny_data, "--out", tmp_path / "plain")
    assert "open set" not in plain.stdout and "open_set" not in eval_json(tmp_path / "plain")
    # the API takes the folder too
    metrics = resnetcls.evaluate(model, tiny_data, out=tmp_path / "api", unknown=unknown_folder / "noise")
    assert metrics["open_set"]["unknown_images"] == 4


def test_a_threshold_alone_reports_what_it_costs_on_known_images(tiny_data, tmp_path):
    model = tiny_model(tmp_path / "m")
    add_open_set(model, tiny_data)  # the threshold accepts 95% of these very images
    out = tmp_path / "ev"
    result = run_cli("eval", model, tiny_data, "--out", out, "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    block = eval_json(out)["open_set"]
    assert "unknown_images" not in block and "auroc" not in block
    assert 0.0 < block["known_rejected"] <= 0.1 and block["known_accepted"] + block["known_rejected"] == 1
    assert block["accuracy_with_rejection"] <= eval_json(out)["top1"]
    assert f"known images: {block['known_accepted']:.2%} accepted" in result.stdout
    moved = run_cli("eval", model, tiny_data, "--out", out, "--unknown-accept", "0.5")
    assert 0.4 <= eval_json(out)["open_set"]["known_rejected"] <= 0.6, moved.stderr
    off = run_cli("eval", model, tiny_data, "--out", out, "--open-set", "off")
    assert off.returncode == 0 and "open set" not in off.stdout and "open_set" not in eval_json(out)


def test_a_missing_or_empty_unknown_folder_is_a_one_line_error(tiny_data, tmp_path):
    model = tiny_model(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    cases = [
        (["--unknown", tmp_path / "nowhere"], "nowhere: file not found"),
        (["--unknown", tmp_path / "empty"], "empty: folder has no image files"),
        (["--unknown", tmp_path / "empty", "--open-set", "off"], "drop --open-set off"),
        (["--open-set", "on"], "has no open-set threshold"),
    ]
    for flags, message in cases:
        result = run_cli("eval", model, tiny_data, "--out", tmp_path / "ev", *flags)
        assert result.returncode == 2, (flags, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "ev").exists()  # refused before any image was read


def test_an_unknown_folder_of_unreadable_files_only_is_an_error(tiny_data, tmp_path):
    model = tiny_model(tmp_path / "m")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"nope")
    result = run_cli("eval", model, tiny_data, "--out", tmp_path / "ev", "--unknown", tmp_path / "bad")
    assert result.returncode == 2 and "none of the 1 images could be read" in result.stderr


def test_known_scores_follow_their_images_whatever_the_batch_order():
    class Sink:
        def add(self, logits, labels, index):
            self.seen = index

    scoring = ScoringPass.__new__(ScoringPass)
    scoring.sink, scoring.scores, scoring.index = Sink(), [], []
    for index, scores in (([4, 1], [0.4, 0.1]), ([0, 3], [0.0, 0.3])):
        scoring.pending = torch.tensor(scores)
        scoring.add(torch.zeros(2, 3), torch.zeros(2), torch.tensor(index))
    assert scoring.scores_of(torch.tensor([3, 0, 4])).tolist() == pytest.approx([0.3, 0.0, 0.4])


def test_known_block_counts_an_image_right_only_when_accepted_and_right():
    scores = torch.tensor([0.9, 0.8, 0.2, 0.1])
    correct = torch.tensor([True, False, True, True])
    block = known_block(scores, correct, threshold=0.5)
    assert block == {
        "known_images": 4,
        "known_accepted": 0.5,
        "known_rejected": 0.5,
        "accuracy_with_rejection": 0.25,
        "accepted_top1": 0.5,
    }
    assert known_block(scores, correct, threshold=1.0)["accepted_top1"] is None
    lines = open_set_lines({**block, "score": "knn", "fallback": False, "threshold": 0.5, "accept": None})
    assert lines == [
        "open set: score knn, threshold 0.5",
        "  known images: 50.00% accepted, 50.00% rejected; accuracy with rejection 0.2500, accepted top1 "
        "0.5000",
    ]


def test_find_unknown_takes_a_single_image_or_a_csv(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert find_unknown(OpenSetOptions(str(tmp_path / "a.png"))).paths == [str(tmp_path / "a.png")]
    (tmp_path / "list.csv").write_text("path\na.png\n")
    assert find_unknown(OpenSetOptions(str(tmp_path / "list.csv"))).paths == [str(tmp_path / "a.png")]
    with pytest.raises(UserError, match="CSV lists no paths"):
        (tmp_path / "none.csv").write_text("path\n")
        find_unknown(OpenSetOptions(str(tmp_path / "none.csv")))


def test_with_an_onnx_backend_the_logits_are_the_backends_and_the_scores_the_eager_models():
    class Stub:
        transform, temperature, loaded = None, 1.0, None
        session = "an onnxruntime session"

        def logits(self, batch):
            return torch.full((len(batch), 3), 7.0)

        def features_and_logits(self, batch):
            return torch.ones(len(batch), 4), torch.zeros(len(batch), 3)

    class Scorer(torch.nn.Module):
        score = "energy"

        def forward(self, features, logits):
            return features.sum(dim=1) + logits.sum(dim=1)  # 4 with the eager logits, 25 with the backend's

    logits, scores = ScoringPass(Stub(), None, OpenSetOptions(), Scorer()).batch_scores(
        torch.zeros(2, 3, 8, 8)
    )
    assert logits.eq(7).all() and scores.tolist() == [4.0, 4.0]
    Stub.session = None
    logits, scores = ScoringPass(Stub(), None, OpenSetOptions(), Scorer()).batch_scores(
        torch.zeros(2, 3, 8, 8)
    )
    assert logits.eq(0).all() and scores.tolist() == [4.0, 4.0]  # torch: one eager call gives both


def test_with_training_images_scored_apart_the_open_set_numbers_are_the_held_out_images(
    tiny_run, tiny_data, unknown_folder, tmp_path
):
    out = tmp_path / "ev"
    result = run_cli(
        "eval", tiny_run, tiny_data, "--include-train", "--unknown", unknown_folder / "noise", "--out", out
    )
    assert result.returncode == 0, result.stderr
    m = eval_json(out)
    assert m["open_set"]["known_images"] == m["images"] == m["overlap"]["held_out_images"] < 36
    assert m["open_set"]["unknown_images"] == 4 and m["open_set"]["fallback"]
