"""serve's admission control in process (FastAPI's TestClient): 503 + Retry-After when the decode budget or the
model queue is full, a per-request pixel limit for /predict/batch, per-file errors, 500s without internals,
and /healthz failing while the model thread is stuck."""

import threading
import time

import pytest
from fastapi.testclient import TestClient

from resnetcls.serve.app import ServeSettings, create_app
from tests.export.test_formats import make_tiny_model_dir
from tests.serve.test_app import png_bytes

SECRET = "/srv/secret/model.safetensors token=hunter2"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("admission") / "model")


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """A copy of the module's model with its model.onnx (the module's model stays without one)."""
    import shutil

    from resnetcls.export.formats import export_model

    copy = shutil.copytree(model, tmp_path_factory.mktemp("exported") / "model")
    export_model(copy, "onnx", None, None)
    return copy


def client_for(model, **settings) -> TestClient:
    return TestClient(create_app(ServeSettings(str(model), **settings)), raise_server_exceptions=False)


def wait_until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_internal_errors_answer_500_without_internals_and_stay_per_file_in_a_batch(model):
    def broken_model(batch):
        raise RuntimeError(SECRET)

    with client_for(model) as client:
        client.app.state.service.batcher.run_batch = broken_model
        one = client.post("/predict", content=png_bytes(20, 20))
        assert one.status_code == 500 and one.json() == {
            "detail": "internal error (details are in the server log)"
        }
        files = [("files", ("a.png", png_bytes(20, 20))), ("files", ("junk.txt", b"hello"))]
        batch = client.post("/predict/batch", files=files)
        assert batch.status_code == 200 and [r["status"] for r in batch.json()["results"]] == [500, 415]
        assert "secret" not in one.text + batch.text and "RuntimeError" not in one.text + batch.text


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


def test_an_exhausted_decode_budget_answers_503_with_retry_after(model):
    with client_for(model, admission_wait_s=0, max_decode_mb=50) as client:  # no waiting: shed at once
        budget = client.app.state.service.budget
        budget.in_use = budget.capacity  # as if other decodes held all of it
        response = client.post("/predict", content=png_bytes(20, 20))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "busy decoding other images" in response.json()["detail"]
        budget.in_use = 0
        assert client.post("/predict", content=png_bytes(20, 20)).status_code == 200
        # an image whose decode alone exceeds the whole budget can never be admitted
        big = client.post("/predict", content=png_bytes(4000, 3000))  # 12 Mpx RGB: about 64 MB
        assert big.status_code == 413 and "above the server's decode budget of 50 MB" in big.json()["detail"]


def test_full_queue_answers_503_and_healthz_fails_while_the_model_thread_is_stuck(model):
    release = threading.Event()
    with client_for(model, max_queue=1, stall_s=0.3) as client:
        batcher = client.app.state.service.batcher
        real = batcher.run_batch
        batcher.run_batch = lambda batch: (release.wait(30), real(batch))[1]
        answers = []
        send = lambda: answers.append(client.post("/predict", content=png_bytes(20, 20)).status_code)  # noqa: E731
        threads = [threading.Thread(target=send)]
        threads[0].start()
        wait_until(lambda: batcher.busy_since is not None, "the first request to reach the model")
        threads.append(threading.Thread(target=send))
        threads[1].start()
        wait_until(lambda: batcher.queue.full(), "the second request to wait in the queue")
        shed = client.post("/predict", content=png_bytes(20, 20))
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
        assert "already waiting for the model" in shed.json()["detail"]
        wait_until(lambda: client.get("/healthz").status_code == 503, "/healthz to fail")
        assert "model thread has made no progress" in client.get("/healthz").json()["detail"]
        release.set()
        for thread in threads:
            thread.join(30)
        assert answers == [200, 200]
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["decode_mb_in_use"] == 0


def test_past_max_connections_requests_being_processed_get_503_while_healthz_and_info_answer(model):
    release = threading.Event()
    with client_for(model, max_connections=1) as client:
        batcher = client.app.state.service.batcher
        real = batcher.run_batch
        batcher.run_batch = lambda batch: (release.wait(30), real(batch))[1]
        answers = []
        first = threading.Thread(
            target=lambda: answers.append(client.post("/predict", content=png_bytes(20, 20)))
        )
        first.start()
        wait_until(lambda: batcher.busy_since is not None, "the first request to reach the model")
        shed = client.post("/predict", content=png_bytes(20, 20))
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
        assert (
            "1 of at most 1 requests are already being processed (--max-connections)" in shed.json()["detail"]
        )
        assert client.get("/healthz").status_code == 200 and client.get("/info").status_code == 200
        release.set()
        first.join(30)
        assert answers[0].status_code == 200
        assert client.post("/predict", content=png_bytes(20, 20)).status_code == 200  # the slot is free again


def test_out_of_range_settings_are_refused_naming_the_flag(model):
    from resnetcls.errors import UserError

    with pytest.raises(UserError, match="--max-queue 0: must be positive"):
        create_app(ServeSettings(str(model), max_queue=0))
    with pytest.raises(UserError, match="--max-idle-per-client 0: must be positive"):
        create_app(ServeSettings(str(model), max_idle_per_client=0))


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
