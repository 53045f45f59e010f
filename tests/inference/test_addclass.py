"""add-class and remove-class (inference/addclass.py): a class taught from a few photos is predicted for a new
photo of it while the old classes' answers stay; the new directory loads, predicts and exports; removing a
class drops it; bad requests exit 2 with one line; the Python API writes what the CLI writes."""

import json
import shutil

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

import resnetcls
from resnetcls.cli import main
from resnetcls.errors import UserError
from resnetcls.inference.addclass import (
    TuneSettings,
    add_class,
    bank_classes,
    grown_scorer,
    refitted_quantiles,
    remove_class,
    shrunk_scorer,
)
from resnetcls.inference.inputs import expand_inputs
from resnetcls.inference.predictor import Predictor
from resnetcls.records.modelfile import load_model_dir, write_open_set
from resnetcls.serve.app import create_app
from resnetcls.serve.schema import ServeSettings
from resnetcls.utils.openset import OpenSetScorer, fit_scorer, score_quantiles, threshold_for
from tests.conftest import make_class_folders

YELLOW = (235, 215, 20)  # far from the blue, green and red of tiny_data


def fit_open_set(model_dir, data, score: str = "knn") -> None:
    """What training's end writes: the scorer fitted on training images' features, its threshold set on other
    (validation) images: every other image of data is one, the rest the other."""
    predictor = Predictor(model_dir, precision="fp32", backend="torch")
    paths = [p for p, _ in expand_inputs([str(data)])]
    labels = torch.tensor([predictor.classes.index(p.split("/")[-2]) for p in paths])
    features, logits = predictor.features_and_logits(torch.stack([predictor.load(p) for p in paths]))
    scorer = fit_scorer(score, features[::2], labels[::2], len(predictor.classes), predictor.temperature)
    quantiles = score_quantiles(scorer(features[1::2], logits[1::2]))
    record = {"threshold": threshold_for(quantiles, 0.95), "accept": 0.95, "quantiles": quantiles}
    write_open_set(model_dir, scorer, {**record, "fitted_on": "train", "images": len(paths)})


@pytest.fixture(scope="module")
def model(tiny_run, tiny_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("open") / "model"
    shutil.copytree(tiny_run / "best", path)
    fit_open_set(path, tiny_data)
    return path


@pytest.fixture(scope="module")
def yellow(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("new"), {"yellow": YELLOW}, per_class=4) / "yellow"


def cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def top1(model_dir, paths) -> list[str]:
    return [p.top[0][0] for p in Predictor(model_dir, precision="fp32", backend="torch").predict(paths)]


def test_a_class_taught_from_three_photos_is_recognised_and_the_old_answers_stay(
    model, yellow, tiny_data, tmp_path, capsys
):
    photos = sorted(map(str, yellow.glob("*.jpg")))
    code, out, err = cli(capsys, "add-class", model, "yellow", *photos[:3], "--out", tmp_path / "new")
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'new'} (4 classes) in ") and out.endswith(" s\n")
    assert len(out.splitlines()) == 1
    loaded = load_model_dir(tmp_path / "new")
    assert loaded.classes == ["blue", "green", "red", "yellow"]
    assert loaded.meta["metrics"]["added_class"] == "yellow"
    record = loaded.open_set  # refitted with the new class's photos held out in turn
    assert record["refitted"] is True and "held out in turn" in record["note"]
    assert record["threshold"] == threshold_for(record["quantiles"], record["accept"])
    assert len(loaded.scorer.class_count) == 4 and loaded.scorer.class_count[3] == 6  # 3 photos + mirrors
    new = Predictor(tmp_path / "new", precision="fp32", backend="torch").predict(photos[3])[0]
    assert new.top[0][0] == "yellow" and not new.unknown
    # every old image the source model answers right is still answered right, none is taken for the new class
    old_images = [p for p, _ in expand_inputs([str(tiny_data)])]
    truth = [p.split("/")[-2] for p in old_images]
    before, after = top1(model, old_images), top1(tmp_path / "new", old_images)
    right = [n for n, (b, t) in enumerate(zip(before, truth)) if b == t]
    assert len(right) >= 30 and [after[n] for n in right] == [truth[n] for n in right]
    assert "yellow" not in after
    assert json.loads((model / "model.json").read_text())["classes"] == ["blue", "green", "red"]  # untouched


def test_the_new_directory_exports_and_the_same_seed_gives_the_same_model(model, yellow, tmp_path, capsys):
    photos = sorted(map(str, yellow.glob("*.jpg")))[:3]
    for name in ("a", "b"):
        assert (
            cli(capsys, "add-class", model, "yellow", *photos, "--out", tmp_path / name, "--steps", "20")[0]
            == 0
        )
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    code, out, err = cli(capsys, "export", tmp_path / "a", "--to", "onnx")
    assert code == 0, err
    assert (tmp_path / "a" / "model.onnx").is_file()


def test_remove_class_drops_its_row_and_its_open_set_rows(model, tiny_data, tmp_path, capsys):
    code, out, err = cli(capsys, "remove-class", model, "green", "--out", tmp_path / "two")
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'two'} (2 classes) in ")
    loaded = load_model_dir(tmp_path / "two")
    source = load_model_dir(model)
    assert loaded.classes == ["blue", "red"]
    torch.testing.assert_close(loaded.model.fc.weight, source.model.fc.weight[[0, 2]])
    assert loaded.scorer.class_count.tolist() == source.scorer.class_count[[0, 2]].tolist()
    assert sorted(bank_classes(loaded.scorer.tensors(), 2).unique().tolist()) == [0, 1]
    reds = [str(p) for p in sorted((tiny_data / "red").glob("*.jpg"))]
    assert top1(tmp_path / "two", reds) == top1(model, reds) == ["red"] * len(reds)


@pytest.mark.parametrize(
    "args, message",
    [
        (["add-class", "{model}", "red", "{photo}"], "'red' is already one of its 3 classes"),
        (["add-class", "{model}", "unknown", "{photo}"], "'unknown' is reserved"),
        (["add-class", "{model}", "cup", "{tmp}/none.jpg"], "no readable photos among"),
        (["add-class", "{model}", "cup", "{photo}", "--out", "{model}"], "the source is never modified"),
        (["add-class", "{model}", "cup", "{photo}", "--out", "{tmp}"], "already exists and is not empty"),
        (["remove-class", "{model}", "gren"], "'gren' is not one of its 3 classes; did you mean 'green'?"),
        (
            ["add-class", "{old}", "cup", "{photo}"],
            "trained by an older resnetcls; retrain it to add classes",
        ),
    ],
)
def test_bad_requests_exit_2_with_one_line(model, tiny_run, yellow, tmp_path, capsys, args, message):
    (tmp_path / "kept").write_text("x")
    fill = {"model": model, "photo": next(yellow.glob("*.jpg")), "tmp": tmp_path, "old": tiny_run / "best"}
    args = [a.format(**fill) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code, out, err = cli(capsys, *args)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") <= 2 and err.splitlines()[-1].startswith("resnetcls: error: ")
    assert not (tmp_path / "out").exists()


def test_a_model_keeps_at_least_two_classes(model, tmp_path):
    two = remove_class(model, "green", tmp_path / "two")
    with pytest.raises(UserError, match="has 2 classes; a model keeps at least 2"):
        remove_class(two, "red", tmp_path / "one")


def test_the_python_api_writes_what_the_cli_writes(model, yellow, tmp_path, capsys):
    photos = sorted(map(str, yellow.glob("*.jpg")))[:3]
    assert (
        cli(capsys, "add-class", model, "yellow", *photos, "--out", tmp_path / "cli", "--steps", "30")[0] == 0
    )
    path = resnetcls.add_class(model, "yellow", photos, tmp_path / "api", steps=30)
    assert path == tmp_path / "api"
    assert (path / "model.safetensors").read_bytes() == (tmp_path / "cli" / "model.safetensors").read_bytes()
    predictor = Predictor(model, precision="fp32", backend="torch").add_class(
        "yellow", yellow, tmp_path / "p"
    )
    assert predictor.classes[-1] == "yellow" and predictor.predict(photos[0])[0].top[0][0] == "yellow"
    removed = resnetcls.remove_class(path, "yellow", tmp_path / "removed")
    assert load_model_dir(removed).classes == ["blue", "green", "red"]


@pytest.mark.parametrize("score", ["knn", "mahalanobis", "msp"])
def test_the_scorer_grows_and_shrinks_by_one_class_s_rows(score):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(10)
    features = torch.rand(30, 16, generator=generator) + 4 * nn.functional.one_hot(labels, 16)
    scorer = fit_scorer(score, features, labels, 3)
    if score == "knn":  # k above the new class's photos, so that its bank rows are padded
        scorer = OpenSetScorer(score, scorer.tensors(), k=5)
    stats = scorer.tensors()
    new = torch.rand(2, 16, generator=generator) + 4 * nn.functional.one_hot(torch.tensor([5, 5]), 16)
    grown = grown_scorer(scorer, new, stats)
    assert grown.class_count.tolist() == [10, 10, 10, 2]
    torch.testing.assert_close(grown.class_mean[3], new.mean(dim=0))
    if score == "knn":  # two views padded to k = 5 rows
        assert bank_classes(grown.tensors(), 4).tolist() == [0] * 10 + [1] * 10 + [2] * 10 + [3] * 5
    if score == "mahalanobis":
        assert grown.means_whitened.shape[0] == 4
    # a photo of the new class scores like a known image; removing the class again gives the original rows
    if score != "msp":
        assert grown(new, torch.zeros(2, 4)).min() > scorer(new, torch.zeros(2, 3)).max()
    shrunk = shrunk_scorer(grown, 3, 4)
    for name, tensor in scorer.tensors().items():
        torch.testing.assert_close(shrunk.tensors()[name], tensor)


def test_tuning_stops_at_its_step_count_and_is_reproducible(model, yellow, tmp_path):
    photos = sorted(map(str, yellow.glob("*.jpg")))[:3]
    one = add_class(model, "yellow", photos, tmp_path / "one", settings=TuneSettings(steps=0))
    imprinted = load_model_dir(one).model.fc
    source = load_model_dir(model).model.fc
    torch.testing.assert_close(imprinted.weight[:3], source.weight)  # 0 steps: only the imprinted row is new
    norms = source.weight.norm(dim=1)
    torch.testing.assert_close(imprinted.weight[3].norm(), norms.mean())
    torch.testing.assert_close(imprinted.bias[3], source.bias.mean())


def test_the_refitted_threshold_weighs_the_new_class_as_one_class_among_all():
    old = {"quantiles": [i / 100 for i in range(101)]}  # known scores spread evenly over 0..1
    low = refitted_quantiles(old, torch.zeros(6), num_classes=1)  # half the known mass now sits at 0
    assert threshold_for(low, 0.95) == pytest.approx(0.0, abs=1e-9)
    assert threshold_for(low, 0.40) == pytest.approx(0.2, abs=0.02)  # the old 20% point, at 60% of the mass
    high = refitted_quantiles(old, torch.full((6,), 10.0), num_classes=9)  # a tenth of the mass above all
    assert threshold_for(high, 0.95) == pytest.approx(0.05 / 0.9, abs=0.01)
    assert all(a <= b for a, b in zip(high, high[1:]))


def test_one_photo_keeps_the_source_threshold(model, yellow, tmp_path, capsys):
    photo = sorted(map(str, yellow.glob("*.jpg")))[0]
    assert cli(capsys, "add-class", model, "yellow", photo, "--out", tmp_path / "new")[0] == 0
    record = load_model_dir(tmp_path / "new").open_set
    assert record["refitted"] is False and record["threshold"] == load_model_dir(model).open_set["threshold"]


def test_serve_answers_with_the_added_class(model, yellow, tmp_path, capsys):
    photos = sorted(map(str, yellow.glob("*.jpg")))
    assert cli(capsys, "add-class", model, "yellow", *photos[:3], "--out", tmp_path / "new")[0] == 0
    with TestClient(create_app(ServeSettings(str(tmp_path / "new")))) as client:
        classes = client.get("/info").json()["classes"]
        with open(photos[3], "rb") as image:
            body = client.post("/predict", files={"file": ("yellow.jpg", image, "image/jpeg")}).json()
    assert classes == ["blue", "green", "red", "yellow"] and body["top"][0]["class"] == "yellow"
