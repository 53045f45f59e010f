"""What serve's endpoints do with a request's images (serve/service.py): the header probe and its refusals,
/info's description of the model and limits, per-file outcomes and the pixel limit of /predict/batch,
/explain within the decode budget, and the same answers from every backend (in process, FastAPI's
TestClient)."""

import json

import pytest
from starlette.exceptions import HTTPException

from resnetcls.errors import UserError
from resnetcls.inference.predictor import Predictor
from resnetcls.serve.schema import MAX_BATCH_FILES, ServeSettings
from resnetcls.serve.service import ImageService
from resnetcls.utils.openset import threshold_for
from tests.export.test_formats import CLASSES, make_tiny_model_dir
from tests.inference.test_command import KNOWN, OTHER, open_set_model
from tests.serve.test_admission import client_for
from tests.serve.test_app import png_bytes


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("service") / "model")


@pytest.fixture
def service(model):
    service = ImageService(ServeSettings(str(model), max_pixels=10_000))
    yield service
    service.model_thread.shutdown()


@pytest.mark.parametrize(
    "data, status, detail",
    [
        (b"", 400, "x.png: empty file"),
        (b"%PDF-1.4 not really", 415, "x.png: "),
        (
            png_bytes(200, 100),
            422,
            "x.png: image is 200x100 = 20000 pixels, above the limit of 10000 (possible decompression bomb)",
        ),
    ],
)
def test_probe_refuses_from_the_header_naming_the_file(service, data, status, detail):
    with pytest.raises(HTTPException) as refused:
        service.probe(data, "x.png")
    assert refused.value.status_code == status and refused.value.detail.startswith(detail)


def test_probe_gives_the_pixels_and_a_decode_peak_of_an_image_within_the_limit(service):
    pixels, peak = service.probe(png_bytes(50, 40), "a.png")
    assert pixels == 2000 and peak >= 2000 * 3  # at least the decoded RGB pixels


def test_info_describes_the_model_and_the_limits_without_internals(service):
    info = service.info()
    assert info["classes"] == CLASSES and "sha256" not in info
    assert info["limits"]["max_pixels"] == 10_000 and info["limits"]["max_batch_files"] == MAX_BATCH_FILES
    settings = service.settings
    assert info["batching"] == {"max_batch": settings.max_batch, "batch_wait_ms": settings.batch_wait_ms}


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """A copy of the module's model with its model.onnx (the module's model stays without one)."""
    import shutil

    from resnetcls.export.formats import export_model

    copy = shutil.copytree(model, tmp_path_factory.mktemp("exported") / "model")
    export_model(copy, "onnx", None, None)
    return copy


def test_one_file_that_fails_preprocessing_does_not_fail_the_batch(model):
    with client_for(model) as client:
        service = client.app.state.service
        real = service.predictor.transform

        def picky(image):
            if image.width == 13:
                raise ValueError("unsupported geometry")
            return real(image)

        service.predictor.transform = picky
        files = [
            ("files", ("a.png", png_bytes(20, 20))),
            ("files", ("odd.png", png_bytes(13, 20))),
            ("files", ("b.png", png_bytes(30, 20))),
        ]
        results = client.post("/predict/batch", files=files).json()["results"]
        assert [r["status"] for r in results] == [200, 422, 200]
        assert results[1]["error"] == "odd.png: cannot preprocess this image (ValueError)"


def test_a_batch_over_its_pixel_budget_is_refused_whole_with_413(model):
    with client_for(model, max_batch_pixels=5000) as client:
        files = [("files", (f"{i}.png", png_bytes(50, 60))) for i in range(2)]
        response = client.post("/predict/batch", files=files)
        assert response.status_code == 413
        assert "total 6000 pixels, above the per-request limit of 5000" in response.json()["detail"]
        assert client.post("/predict/batch", files=files[:1]).status_code == 200


def test_explain_waits_for_the_decode_budget_like_predict(model):
    with client_for(model, admission_wait_s=0, max_decode_mb=50) as client:
        service = client.app.state.service
        service.budget.in_use = service.budget.capacity  # someone else is decoding
        busy = client.post("/explain", content=png_bytes(20, 20))
        assert (
            busy.status_code == 503
            and busy.headers["retry-after"]
            and "busy decoding" in busy.json()["detail"]
        )
        service.budget.in_use = 0
        assert client.post("/explain", content=png_bytes(20, 20)).status_code == 200


def test_explain_works_on_the_onnx_backends_from_the_eager_model(exported):
    for backend in ("onnxruntime", "openvino"):
        with client_for(exported, backend=backend) as client:
            response = client.post("/explain", content=png_bytes(20, 20))
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            assert response.headers["x-class"] in ("ants", "bees", "cats")


def test_serve_runs_the_exported_model_on_openvino_with_the_same_answers(exported):
    answers = {}
    for backend, precision in (("onnxruntime", "auto"), ("openvino", "fp32"), ("openvino", "auto")):
        with client_for(exported, backend=backend, precision=precision) as client:
            info = client.get("/info").json()
            assert info["backend"] == backend
            reply = client.post("/predict", content=png_bytes(40, 30))
            assert reply.status_code == 200, reply.text
            answers[backend, precision] = (info["precision"], reply.json()["top"])
    reference = answers["onnxruntime", "auto"][1]
    for precision, top in answers.values():  # bf16 keeps 8 mantissa bits: probabilities move by a few 1e-3
        tolerance = {"fp32": 1e-4, "bf16": 3e-2}[precision]
        probs, expected = ({t["class"]: t["prob"] for t in answer} for answer in (top, reference))
        assert probs.keys() == expected.keys()
        assert max(abs(probs[c] - expected[c]) for c in probs) <= tolerance


@pytest.fixture(scope="module")
def open_set(tiny_run, tiny_data, tmp_path_factory):
    return open_set_model(tiny_run, tiny_data, tmp_path_factory.mktemp("serve-open-set") / "model")


def test_predict_answers_unknown_below_the_threshold_and_info_says_where_it_lies(open_set, tiny_data):
    threshold = json.loads((open_set / "model.json").read_text())["open_set"]["threshold"]
    red, green = ((tiny_data / name).read_bytes() for name in (KNOWN[0], OTHER[0]))
    with client_for(open_set) as client:
        known = client.post("/predict?topk=2", content=red).json()
        other = client.post("/predict?topk=2", content=green).json()
        files = [("files", ("red.jpg", red)), ("files", ("green.jpg", green)), ("files", ("x.txt", b"hi"))]
        batch = client.post("/predict/batch", files=files).json()["results"]
        info = client.get("/info").json()
    assert list(known) == ["filename", "top", "label", "unknown", "open_set_score"]
    assert (known["label"], known["unknown"], other["label"], other["unknown"]) == (
        "red",
        False,
        "unknown",
        True,
    )
    assert known["open_set_score"] >= threshold > other["open_set_score"]
    assert other["top"][0]["class"] == "green"  # the nearest class is still given
    assert [(r["status"], r.get("label")) for r in batch] == [(200, "red"), (200, "unknown"), (415, None)]
    assert batch[1]["open_set_score"] == pytest.approx(other["open_set_score"], abs=1e-5)
    assert info["open_set"] == {"on": True, "score": "knn", "threshold": threshold, "accept": 1.0}


def test_open_set_off_or_a_moved_threshold_as_the_settings_say(open_set, model, tiny_data):
    record = json.loads((open_set / "model.json").read_text())["open_set"]
    green = (tiny_data / OTHER[0]).read_bytes()
    with client_for(open_set, open_set="off") as client:
        assert list(client.post("/predict", content=green).json()) == ["filename", "top"]
        assert client.get("/info").json()["open_set"] == {
            "on": False,
            "score": "knn",
            "threshold": None,
            "accept": None,
        }
    with client_for(open_set, unknown_accept=0.5) as client:
        info = client.get("/info").json()["open_set"]
    assert (
        info["threshold"] == pytest.approx(threshold_for(record["quantiles"], 0.5)) and info["accept"] == 0.5
    )
    with pytest.raises(UserError, match="--open-set on, but the model has no open-set threshold"):
        ImageService(ServeSettings(str(model), open_set="on"))


def test_a_multi_label_model_answers_its_labels_and_info_gives_the_thresholds(tiny_run, tiny_data, tmp_path):
    from tests.inference.test_multilabel import ALWAYS_NEVER_ALWAYS, multilabel_model

    model = multilabel_model(tiny_run, tmp_path / "model", ALWAYS_NEVER_ALWAYS)
    image = next((tiny_data / "red").glob("*.jpg"))
    (expected,) = Predictor(model, backend="torch").predict(image, topk=3)
    with client_for(model, backend="torch") as client:
        info = client.get("/info").json()
        one = client.post("/predict", content=image.read_bytes()).json()
        files = [("files", ("a.jpg", image.read_bytes())), ("files", ("junk.txt", b"hello"))]
        batch = client.post("/predict/batch", files=files).json()["results"]
    with client_for(model, backend="torch", threshold=1.0) as client:
        none = client.post("/predict", content=image.read_bytes()).json()
        assert client.get("/info").json()["thresholds"] == {"blue": 1.0, "green": 1.0, "red": 1.0}
    assert info["multi_label"] is True and info["label_separator"] == ";"
    assert info["thresholds"] == dict(zip(["blue", "green", "red"], ALWAYS_NEVER_ALWAYS))
    assert list(one) == ["filename", "top", "labels"]
    assert [item["label"] for item in one["labels"]] == expected.labels
    for item in one["labels"]:
        assert item["probability"] == pytest.approx(expected.label_probs[item["label"]], abs=1e-5)
    assert batch[0]["labels"] == one["labels"] and "labels" not in batch[1]
    assert none["labels"] == []


def test_a_single_label_model_answers_without_labels(model):
    with client_for(model) as client:
        assert "labels" not in client.post("/predict", content=png_bytes(20, 20)).json()
        info = client.get("/info").json()
    assert info["multi_label"] is False and info["thresholds"] is None
