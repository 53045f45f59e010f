"""`resnetcls predict`'s output: top-k in table, JSON and CSV, error rows with exit code 2 at the end,
Grad-CAM overlays with --explain, and the options as a library call takes them."""

import csv
import io
import json
import os
import shutil

import pytest
import torch

from resnetcls.errors import UserError
from resnetcls.inference.command import OPEN_SET_COLUMNS, PredictOptions, format_results, run_predict
from resnetcls.inference.explain import overlay_name
from resnetcls.inference.predictor import Prediction, Predictor
from resnetcls.records.modelfile import write_open_set
from resnetcls.utils.openset import OpenSetScorer, fit_scorer, score_quantiles, threshold_for
from tests.conftest import run_cli
from tests.inference.test_predictor import run


def test_the_options_default_to_top_5_in_a_table_and_are_checked(tiny_run, tiny_data, capsys):
    image = tiny_data / "red" / "1.jpg"
    assert run_predict(str(tiny_run), [str(image)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("path") and lines[1].startswith(str(image)) and lines[1].count(" (") == 3
    assert run_predict(str(tiny_run), [str(image)], PredictOptions(topk=1, fmt="json")) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["top"]) == 1
    with pytest.raises(UserError, match="--topk 0: expected a whole number of at least 1"):
        run_predict(str(tiny_run), [str(image)], PredictOptions(topk=0))
    with pytest.raises(UserError, match="--batch-size 0: expected a whole number of at least 1"):
        run_predict(str(tiny_run), [str(image)], PredictOptions(batch_size=0))


def test_each_format_writes_a_prediction_and_an_error_row():
    results = [
        Prediction("a.jpg", top=[("cat", 0.75), ("dog", 0.25)]),
        Prediction("b.jpg", error="unreadable"),
    ]
    assert format_results(results, "csv").splitlines() == [
        "path,rank,class,prob,error",
        "a.jpg,1,cat,0.750000,",
        "a.jpg,2,dog,0.250000,",
        "b.jpg,,,,unreadable",
    ]
    table = format_results(results, "table").splitlines()
    assert table[1].split() == ["a.jpg", "cat", "(0.750)", "dog", "(0.250)"]
    assert table[2].split() == ["b.jpg", "ERROR:", "unreadable"]
    assert [r["path"] for r in json.loads(format_results(results, "json"))] == ["a.jpg", "b.jpg"]


def test_the_table_lines_up_for_paths_and_class_names_of_any_length(tiny_run, tiny_data, tmp_path, capsys):
    long_dir = tmp_path / ("a-rather-long-folder-name-" * 4)
    long_dir.mkdir()
    shutil.copy(tiny_data / "red" / "1.jpg", long_dir / "x.jpg")
    paths = [
        tiny_data / "blue" / "2.jpg",
        long_dir / "x.jpg",
        tmp_path / "gone.jpg",
        tiny_data / "green" / "3.jpg",
    ]
    assert run_predict(str(tiny_run), [str(p) for p in paths], PredictOptions(topk=3)) == 2
    lines = capsys.readouterr().out.splitlines()
    assert len(str(paths[1])) > 60 and [line.split("  ")[0] for line in lines[1:]] == [str(p) for p in paths]
    starts = {len(line) - len(line[len(str(p)) :].lstrip()) for line, p in zip(lines[1:], paths)}
    assert starts == {lines[0].index("top classes")}  # the classes start in one column
    rows = [
        Prediction(p, top=[(c, 0.5), ("b", 0.25)]) for p, c in (("x.jpg", "cat"), ("much/longer.jpg", "wolf"))
    ]
    table = format_results(rows, "table").splitlines()
    assert [line.index("b (") for line in table[1:]] == [
        len("much/longer.jpg") + 2 + len("wolf (0.500)  ")
    ] * 2


def test_json_gives_topk_class_names_with_probabilities(tiny_run, tiny_data, capsys):
    images = [tiny_data / "red" / "1.jpg", tiny_data / "blue" / "2.jpg"]
    code, out, err = run(capsys, tiny_run, *images, "--topk", "2", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["path"] for r in rows] == [str(p) for p in images]
    for r in rows:
        assert len(r["top"]) == 2 and {t["class"] for t in r["top"]} <= {"blue", "green", "red"}
        assert r["top"][0]["prob"] >= r["top"][1]["prob"]


def test_a_whole_folder_tree_in_csv_format(tiny_run, tiny_data, capsys):
    code, out, err = run(capsys, tiny_run, tiny_data, "--format", "csv", "--topk", "1", "--batch-size", "8")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 36 and {r["rank"] for r in rows} == {"1"}
    correct = sum(r["class"] == r["path"].split("/")[-2] for r in rows)
    assert correct >= 30, f"only {correct}/36 right: the trained tiny model should separate solid colours"


def test_unreadable_images_give_error_rows_and_exit_nonzero_at_the_end(tiny_run, tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    good = [tiny_data / "red" / "1.jpg", tiny_data / "green" / "2.jpg"]
    code, out, err = run(capsys, tiny_run, good[0], bad, tmp_path / "gone.png", good[1], "--format", "csv")
    assert code == 2 and "2 of 4 inputs could not be predicted" in err
    assert f"{good[0]},1," in out and f"{good[1]},1," in out
    assert (
        f'{bad},,,,"not an image in a format we read (JPEG' in out
        and f"{tmp_path / 'gone.png'},,,,file not found" in out
    )
    code, out, _ = run(capsys, tiny_run, good[0], bad)
    lines = out.splitlines()
    assert code == 2 and lines[0].startswith("path") and "ERROR: not an image in a format we read" in lines[2]
    assert "red (" in lines[1]


def test_explain_writes_one_overlay_per_image_and_lists_it(tiny_run, tiny_data, tmp_path, capsys):
    twin = tmp_path / "other" / "1.jpg"  # the same file name as red/1.jpg, in another folder
    twin.parent.mkdir()
    shutil.copy(tiny_data / "blue" / "1.jpg", twin)
    images = [tiny_data / "red" / "1.jpg", twin]
    out = tmp_path / "cams"
    code, text, err = run(capsys, tiny_run, *images, "--explain", out, "--format", "json")
    assert code == 0, err
    rows = json.loads(text)
    names = [overlay_name(str(image)) for image in images]
    assert [r["gradcam"] for r in rows] == [str(out / name) for name in names] and names[0] != names[1]
    from PIL import Image

    for r in rows:
        with Image.open(r["gradcam"]) as overlay:
            assert overlay.format == "PNG" and overlay.size == (32, 32)  # the model's input crop
    code, text, _ = run(capsys, tiny_run, images[0], "--explain", out, "--format", "csv", "--topk", "2")
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["gradcam"] for r in table] == [str(out / names[0])] * 2
    code, text, _ = run(capsys, tiny_run, images[0], "--explain", out)
    assert f"gradcam: {out / names[0]}" in text
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # the twin's overlay is still there


def test_explain_names_always_fit_and_an_unwritable_overlay_keeps_every_prediction(
    tiny_run, tiny_data, tmp_path, capsys
):
    source = tiny_data / "red" / "1.jpg"
    long_name = tmp_path / ("n" * 245 + ".jpg")  # 249 bytes: the longest names a file system allows
    blocked = tmp_path / "blocked.jpg"
    for target in (long_name, blocked):
        shutil.copy(source, target)
    out = tmp_path / "cams"
    (out / overlay_name(str(blocked))).mkdir(parents=True)  # a folder where its overlay would go
    images = [long_name, blocked, tiny_data / "blue" / "2.jpg"]
    code, text, err = run(capsys, tiny_run, *images, "--explain", out, "--format", "json")
    assert code == 2  # an overlay the user asked for is missing
    rows = json.loads(text)
    assert [r["path"] for r in rows] == [str(p) for p in images] and all(len(r["top"]) == 3 for r in rows)
    assert "gradcam" not in rows[1] and all(os.path.isfile(rows[i]["gradcam"]) for i in (0, 2))
    assert os.path.basename(rows[0]["gradcam"]).startswith("n" * 100)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{blocked}: Grad-CAM overlay not written" in warnings[0]
    assert "Is a directory" in warnings[0]
    assert "1 of 3 Grad-CAM overlays could not be written" in err

    code, text, _ = run(capsys, tiny_run, blocked, "--explain", out, "--format", "csv")
    assert code == 2 and list(csv.DictReader(io.StringIO(text)))[0]["gradcam"] == ""  # the column stays


def test_explain_errors_are_one_line_user_errors(tiny_run, tiny_data, tmp_path, capsys):
    image = tiny_data / "red" / "1.jpg"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run(capsys, tiny_run, image, "--explain", blocker / "cams")
    assert code == 2 and err.startswith("resnetcls: error: --explain") and "cannot write there" in err


def test_explain_works_on_an_onnx_backend_from_the_eager_model(tiny_run, tiny_data, tmp_path, capsys):
    image = tiny_data / "red" / "1.jpg"
    code, text, _ = run(capsys, tiny_run, image, "--explain", tmp_path / "cams", "--backend", "openvino")
    overlay = tmp_path / "cams" / overlay_name(str(image))
    assert code == 0 and overlay.is_file() and f"gradcam: {overlay}" in text


BANK = [f"{c}/{i}.jpg" for c in ("red", "blue") for i in range(4)]  # the open-set score's known features
KNOWN = [f"{c}/{i}.jpg" for c in ("red", "blue") for i in range(4, 8)]  # known classes, accepted
OTHER = [f"green/{i}.jpg" for i in range(3)]  # a class the score never saw: "unknown"


def open_set_model(run_dir, data, out):
    """A copy of run_dir's best model with a kNN open-set record (k = 1) fitted on the features of the BANK
    images; its quantiles come from the KNOWN images and its threshold lies halfway between them and the
    OTHER (green) images, so green is answered "unknown" and red and blue are not."""
    model = shutil.copytree(run_dir / "best", out)
    predictor = Predictor(model)

    def scores_of(scorer, names):
        return scorer(*predictor.features_and_logits(torch.stack([predictor.load(data / n) for n in names])))

    features, _ = predictor.features_and_logits(torch.stack([predictor.load(data / n) for n in BANK]))
    labels = torch.tensor([predictor.classes.index(n.split("/")[0]) for n in BANK])
    scorer = OpenSetScorer("knn", fit_scorer("knn", features, labels, len(predictor.classes)).tensors(), k=1)
    known, other = scores_of(scorer, KNOWN), scores_of(scorer, OTHER)
    assert float(other.max()) < float(known.min()) - 0.1  # the planted case holds
    threshold = (float(other.max()) + float(known.min())) / 2
    write_open_set(
        model, scorer, {"threshold": threshold, "accept": 1.0, "quantiles": score_quantiles(known)}
    )
    return model


@pytest.fixture(scope="session")
def open_set_run(tiny_run, tiny_data, tmp_path_factory):
    return open_set_model(tiny_run, tiny_data, tmp_path_factory.mktemp("open-set") / "model")


def test_the_table_answers_unknown_with_the_score_and_still_shows_the_nearest_classes(
    open_set_run, tiny_data, capsys
):
    images = [tiny_data / KNOWN[0], tiny_data / OTHER[0]]
    code, out, err = run(capsys, open_set_run, *images, "--topk", "2")
    assert code == 0, err
    header, red, green = out.splitlines()
    assert header.split("  ")[0] == "path" and "answer (open-set score)" in header
    assert red.split()[1] == "red" and green.split()[1] == "unknown"
    assert green.split()[3:5] == ["green", f"({green.split()[4][1:-1]})"]  # the nearest class still shown
    assert header.index("top classes") == green.index("green (")  # the columns line up
    assert err == ""  # no note without --unknown-accept


def test_json_and_csv_give_label_unknown_and_score(open_set_run, tiny_data, capsys):
    images = [tiny_data / KNOWN[0], tiny_data / OTHER[0]]
    code, out, _ = run(capsys, open_set_run, *images, "--format", "json", "--topk", "1")
    rows = json.loads(out)
    assert code == 0 and [(r["label"], r["unknown"]) for r in rows] == [("red", False), ("unknown", True)]
    threshold = json.loads((open_set_run / "model.json").read_text())["open_set"]["threshold"]
    assert rows[0]["open_set_score"] >= threshold > rows[1]["open_set_score"]
    assert rows[1]["top"][0]["class"] == "green"
    code, out, _ = run(capsys, open_set_run, *images, "--format", "csv", "--topk", "1")
    table = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(table[0]) == [*"path rank class prob error".split(), *OPEN_SET_COLUMNS]
    assert [(r["label"], r["unknown"]) for r in table] == [("red", "false"), ("unknown", "true")]
    assert float(table[1]["open_set_score"]) == pytest.approx(rows[1]["open_set_score"], abs=1e-5)


def test_open_set_off_gives_the_plain_output(open_set_run, tiny_run, tiny_data, capsys):
    image = tiny_data / OTHER[0]
    for fmt in ("table", "json", "csv"):
        _, off, _ = run(capsys, open_set_run, image, "--format", fmt, "--open-set", "off")
        _, plain, _ = run(capsys, tiny_run, image, "--format", fmt)  # the same weights, no record
        assert off == plain and "unknown" not in off


def test_open_set_on_without_a_threshold_is_a_one_line_error(tiny_run, tiny_data, capsys):
    code, out, err = run(capsys, tiny_run, tiny_data / KNOWN[0], "--open-set", "on")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "--open-set on, but the model has no open-set threshold" in err and "--open-set off" in err


def test_unknown_accept_moves_the_threshold_and_says_where(open_set_run, tiny_data, capsys):
    record = json.loads((open_set_run / "model.json").read_text())["open_set"]
    code, out, err = run(
        capsys, open_set_run, tiny_data / OTHER[0], "--unknown-accept", "0.5", "--format", "json"
    )
    moved = threshold_for(record["quantiles"], 0.5)
    assert code == 0 and err.splitlines() == [
        f"--unknown-accept 0.5: unknown below knn score {moved:.4g}, which accepts 50% of the known "
        f"validation images (the model's own threshold: {record['threshold']:.4g}, accepting 100%)"
    ]
    assert json.loads(out)[0]["unknown"] is True
    refused = run_cli("predict", open_set_run, tiny_data / OTHER[0], "--unknown-accept", "1.5")
    assert refused.returncode == 2 and "--unknown-accept: must be between 0 and 1, got 1.5" in refused.stderr


def test_the_formats_of_predictions_with_and_without_a_score():
    results = [
        Prediction("a.jpg", top=[("cat", 0.75), ("dog", 0.25)], open_set_score=0.91),
        Prediction("b.jpg", top=[("dog", 0.5), ("cat", 0.5)], open_set_score=0.2, unknown=True),
        Prediction("c.jpg", error="unreadable"),
    ]
    assert format_results(results, "table").splitlines() == [
        "path   answer (open-set score)  top classes (probability)",
        "a.jpg  cat (0.910)              cat (0.750)  dog (0.250)",
        "b.jpg  unknown (0.200)          dog (0.500)  cat (0.500)",
        "c.jpg  ERROR: unreadable",
    ]
    assert format_results(results, "csv").splitlines() == [
        "path,rank,class,prob,error,label,unknown,open_set_score",
        "a.jpg,1,cat,0.750000,,cat,false,0.910000",
        "a.jpg,2,dog,0.250000,,cat,false,0.910000",
        "b.jpg,1,dog,0.500000,,unknown,true,0.200000",
        "b.jpg,2,cat,0.500000,,unknown,true,0.200000",
        "c.jpg,,,,unreadable,,,",
    ]
    assert [r.get("label") for r in json.loads(format_results(results, "json"))] == ["cat", "unknown", None]
