"""`resnetcls predict` and Predictor.predict: inputs of every kind (tensors and arrays too), batching, top-k,
formats, flip TTA, per-image errors (raised for one image, error rows in a list), reprs and progress."""

import json
import shutil

import numpy as np
import pytest
import torch

from resnetcls.cli import main
from resnetcls.data.decode import DecodeError, decode_image
from resnetcls.errors import UserError
from resnetcls.inference.inputs import expand_inputs
from resnetcls.inference.predictor import Prediction, Predictor


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor(tiny_run)


def run(capsys, *args):
    code = main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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


def test_tensors_and_arrays_in_either_layout_predict_as_the_file(predictor, tiny_data):
    path = tiny_data / "blue" / "2.jpg"
    pixels = np.asarray(decode_image(path))
    chw = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    [expected] = predictor.predict(path, topk=3)
    for image in (chw, chw.float() / 255, pixels / 255.0, pixels.transpose(2, 0, 1)):
        [got] = predictor.predict(image, topk=3)
        assert [c for c, _ in got.top] == [c for c, _ in expected.top]
        assert np.allclose([p for _, p in got.top], [p for _, p in expected.top], atol=1e-5)
    batch = predictor.predict(torch.stack([chw, chw.flip(-1), chw]), topk=3)
    assert [r.path for r in batch] == ["<tensor 0>", "<tensor 1>", "<tensor 2>"]
    assert batch[0].top == batch[2].top and batch[0].top[0][0] == expected.top[0][0]


def test_one_unreadable_image_raises_and_a_list_keeps_the_others(predictor, tiny_data, tmp_path):
    missing, good = tmp_path / "missing.jpg", tiny_data / "red" / "0.jpg"
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DecodeError, match="missing.jpg: file not found"):
        predictor.predict(missing)
    with pytest.raises(DecodeError, match="broken.jpg: "):
        predictor.predict(str(tmp_path / "broken.jpg"))
    results = predictor.predict([missing, good, tmp_path / "broken.jpg"])
    assert results[0].error == "file not found" and results[1].top and results[2].error
    assert predictor.predict(missing, errors="return")[0].error == "file not found"
    with pytest.raises(DecodeError, match="missing.jpg"):
        predictor.predict([good, missing], errors="raise")
    with pytest.raises(UserError, match="errors='ignore': expected one of raise, return"):
        predictor.predict(good, errors="ignore")


def test_reprs_are_one_short_line_and_load_gives_the_run_s_best_model(predictor, tiny_run, tiny_data):
    import resnetcls

    loaded = resnetcls.load(tiny_run)
    assert isinstance(loaded, Predictor) and loaded.loaded.path == tiny_run / "best"
    assert repr(loaded) == (
        f"Predictor(model='{tiny_run / 'best'}', classes=3, backend='{loaded.backend}', "
        f"precision='{loaded.precision}', open_set='off')"
    )
    assert (
        repr(Prediction("a.jpg", [("red", 0.934), ("blue", 0.041)]))
        == "Prediction('a.jpg': red 0.93, blue 0.04)"
    )
    assert repr(Prediction("b.jpg", error="file not found")) == "Prediction('b.jpg': error: file not found)"


def test_progress_shows_by_default_only_for_more_than_one_batch(predictor, tiny_data, monkeypatch):
    from resnetcls.inference import predictor as predictor_module

    asked = []
    real = predictor_module.progress_bar
    monkeypatch.setattr(
        predictor_module, "progress_bar", lambda *a, enabled=None, **k: asked.append(enabled) or real(*a, **k)
    )
    paths = sorted(tiny_data.rglob("*.jpg"))[:5]
    predictor.predict(paths, batch_size=2)
    predictor.predict(paths, batch_size=8)
    predictor.predict(paths, batch_size=8, progress=True)
    assert asked == [None, False, None]  # None: shown where a person watches (utils/progress.py)


def test_the_draft_decode_leaves_predictions_of_large_photos_unchanged(predictor, tiny_data, tmp_path):
    from PIL import Image

    paths = []
    for colour in ("red", "green", "blue"):  # camera-sized JPEGs: drafted to 1/8 for this 32 px model
        path = tmp_path / f"{colour}.jpg"
        Image.open(tiny_data / colour / "0.jpg").resize((800, 600)).save(path, quality=90)
        paths.append(str(path))
    assert predictor.loader.fast
    fast = predictor.predict(paths, topk=3)
    predictor.loader.fast = False
    try:
        exact = predictor.predict(paths, topk=3)
    finally:
        predictor.loader.fast = True
    for a, b in zip(fast, exact):
        assert a.label == b.label
        assert max(abs(x[1] - y[1]) for x, y in zip(a.top, b.top)) < 0.02
