"""`resnetcls predict`: inputs of every kind, batching, top-k, formats, flip TTA and per-image errors."""

import csv
import io
import json
import os
import shutil

import pytest
import torch

from resnetcls.cli import main
from resnetcls.data.decode import decode_image
from resnetcls.inference.explain import overlay_name
from resnetcls.inference.predictor import Predictor, expand_inputs


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor(tiny_run)


def run(capsys, *args):
    code = main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_gives_topk_class_names_with_probabilities(tiny_run, tiny_data, capsys):
    images = [tiny_data / "red" / "1.jpg", tiny_data / "blue" / "2.jpg"]
    code, out, err = run(capsys, tiny_run, *images, "--topk", "2", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["path"] for r in rows] == [str(p) for p in images]
    for r in rows:
        assert len(r["top"]) == 2 and {t["class"] for t in r["top"]} <= {"blue", "green", "red"}
        assert r["top"][0]["prob"] >= r["top"][1]["prob"]


def test_folders_globs_and_csv_lists_expand_in_order(tiny_data, tmp_path):
    nested = tmp_path / "photos" / "day1" / "deep"
    nested.mkdir(parents=True)
    shutil.copy(tiny_data / "red" / "0.jpg", nested / "a.jpg")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    (tmp_path / "list.csv").write_text(
        f"path,comment\n{tiny_data / 'blue' / '3.jpg'}\nphotos/day1/deep/a.jpg,x\n"
    )
    items = expand_inputs(
        [
            str(tmp_path / "photos"),
            str(tiny_data / "g*" / "1?.jpg"),
            str(tmp_path / "list.csv"),
            str(tmp_path / "missing.jpg"),
            str(tmp_path / "nothing*.png"),
        ]
    )
    assert items[0] == (str(nested / "a.jpg"), "")  # folder, recursive
    assert [p for p, _ in items[1:3]] == [str(tiny_data / "green" / f"1{i}.jpg") for i in range(2)]  # glob
    assert items[3:5] == [
        (str(tiny_data / "blue" / "3.jpg"), ""),
        (str(tmp_path / "photos/day1/deep/a.jpg"), ""),
    ]
    assert items[5] == (str(tmp_path / "missing.jpg"), "file not found")
    assert items[6] == (str(tmp_path / "nothing*.png"), "no files match this pattern") and len(items) == 7


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


def test_images_are_predicted_in_batches(predictor, tiny_data):
    calls = []
    handle = predictor.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        paths = sorted(str(p) for p in tiny_data.rglob("*.jpg"))
        results = predictor.predict(paths, topk=3, batch_size=16)
    finally:
        handle.remove()
    assert calls == [16, 16, 4] and [r.path for r in results] == paths


def test_flip_tta_averages_the_image_and_its_mirror(predictor, tiny_data):
    path = str(tiny_data / "green" / "4.jpg")
    image = predictor.transform(decode_image(path))[None]
    expected = (predictor.probabilities(image) + predictor.probabilities(image.flip(-1))) / 2
    [plain] = predictor.predict([path], topk=3)
    [tta] = predictor.predict([path], topk=3, tta=True)
    top = dict(tta.top)
    for i, name in enumerate(predictor.classes):
        assert top[name] == pytest.approx(float(expected[0, i]), abs=1e-5)
    assert plain.top != tta.top or torch.allclose(image, image.flip(-1))


def test_a_very_wide_image_is_centre_cropped_before_its_resize(predictor, tiny_run, tmp_path, capsys):
    from PIL import Image

    from resnetcls.data.geometry import CropToAspect

    strip = Image.new("RGB", (20000, 16), (30, 30, 200))
    strip.paste((220, 20, 20), (9968, 0, 10032, 16))  # the red centre: all the model is shown
    strip.save(tmp_path / "strip.png")
    decoded = decode_image(tmp_path / "strip.png")
    assert CropToAspect()(decoded).size == (64, 16)  # 4 short sides, not 20000 px resized to 37x46250
    assert torch.equal(
        predictor.transform(decoded), predictor.transform(Image.new("RGB", (64, 16), (220, 20, 20)))
    )
    code, out, err = run(capsys, tiny_run, tmp_path / "strip.png", "--format", "json")
    assert code == 0, err
    assert len(json.loads(out)[0]["top"]) == 3


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


def test_probabilities_are_the_softmax_of_the_logits_divided_by_the_temperature(tmp_path, tiny_data, capsys):
    from resnetcls.records.modelfile import write_calibration
    from tests.export.test_formats import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "model")
    image = tiny_data / "red" / "1.jpg"
    before = Predictor(model, precision="fp32").predict([str(image)], topk=3)[0].top
    write_calibration(model, {"calibrated": True, "temperature": 0.25, "fitted_on": "val", "images": 30})
    predictor = Predictor(model, precision="fp32")
    batch = predictor.transform(decode_image(image))[None]
    with torch.no_grad():
        logits = predictor.loaded.model(batch)
    assert predictor.temperature == 0.25
    assert torch.allclose(predictor.probabilities(batch), (logits / 0.25).softmax(1), atol=1e-6)
    assert torch.allclose(predictor.logits(batch), logits, atol=1e-6)
    code, out, err = run(capsys, model, image, "--format", "json", "--precision", "fp32", "--topk", "3")
    top = json.loads(out)[0]["top"]
    assert [t["class"] for t in top] == [c for c, _ in before]  # same ranking, sharper probabilities
    assert top[0]["prob"] == pytest.approx(float((logits / 0.25).softmax(1).max()), abs=1e-5)
    assert top[0]["prob"] > before[0][1]
