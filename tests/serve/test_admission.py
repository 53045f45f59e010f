"""serve's admission control in process (FastAPI's TestClient): 503 + Retry-After when the decode budget,
the model queue or --max-connections is full, 500s without internals, /healthz failing while the model
thread is stuck, and out-of-range settings refused naming the flag."""

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
