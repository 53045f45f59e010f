"""`resnetcls predict`'s output: top-k in table, JSON and CSV, error rows with exit code 2 at the end,
Grad-CAM overlays with --explain, and the options as a library call takes them."""

import csv
import io
import json
import os
import shutil

import pytest

from resnetcls.errors import UserError
from resnetcls.inference.command import PredictOptions, format_results, run_predict
from resnetcls.inference.explain import overlay_name
from resnetcls.inference.predictor import Prediction
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
