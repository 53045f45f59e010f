"""`resnetcls serve`: a real uvicorn server on 127.0.0.1 (free port), every endpoint and error over real HTTP,
and a bounded load test with malformed requests mixed in."""

import io
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from resnetcls.records.modelfile import write_calibration
from tests.export.test_formats import CLASSES, make_tiny_model_dir

MAX_BODY = 200_000  # bytes, small so the 413 test is cheap
MAX_PIXELS = 250_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, log: Path, *extra: str, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """`python -m resnetcls serve MODEL` on a free local port; returns once /healthz answers."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "resnetcls",
            "serve",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"server did not come up in {timeout}s: {log.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def png_bytes(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model = make_tiny_model_dir(root / "model")
    write_calibration(model, {"calibrated": True, "temperature": 0.5, "fitted_on": "val", "images": 20})
    proc, url = start_server(
        model,
        root / "server.log",
        "--max-body-mb",
        str(MAX_BODY / 1e6),
        "--max-pixels",
        str(MAX_PIXELS),
        "--batch-wait-ms",
        "2",
    )
    yield url, model
    stop_server(proc)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def assert_top(body: dict, k: int) -> None:
    assert len(body["top"]) == k and {t["class"] for t in body["top"]} <= set(CLASSES)
    probs = [t["prob"] for t in body["top"]]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)


def test_healthz_and_info(client):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = client.get("/info").json()
    assert (
        info["classes"] == CLASSES and info["arch"] == "resnet18" and info["preprocess"]["image_size"] == 32
    )
    assert "sha256" not in info and info["limits"]["max_pixels"] == MAX_PIXELS
    assert info["precision"] in ("bf16", "fp32")  # what --precision auto picked on this machine


def test_served_probabilities_are_calibrated_with_the_model_temperature(client, server):
    from resnetcls.data.decode import decode_image
    from resnetcls.inference.predictor import Predictor

    info = client.get("/info").json()
    assert info["calibration"]["temperature"] == 0.5
    image = png_bytes(50, 40)
    served = client.post("/predict?topk=3", content=image, headers={"content-type": "image/png"}).json()[
        "top"
    ]
    local = Predictor(server[1], precision=info["precision"])
    probs = local.probabilities(local.transform(decode_image(image))[None])[0]
    tolerance = 1e-4 if info["precision"] == "fp32" else 2e-2  # bf16 logits carry about 3 significant digits
    assert [t["class"] for t in served] == [CLASSES[i] for i in probs.argsort(descending=True).tolist()]
    assert max(abs(t["prob"] - float(probs[CLASSES.index(t["class"])])) for t in served) <= tolerance


def test_predict_multipart_and_raw_body_agree(client):
    image = png_bytes(50, 40)
    multipart = client.post("/predict", params={"topk": 2}, files={"file": ("red.png", image, "image/png")})
    raw = client.post("/predict?topk=2", content=image, headers={"content-type": "image/png"})
    assert multipart.status_code == 200 and raw.status_code == 200
    assert multipart.json()["filename"] == "red.png" and raw.json()["filename"] == "body"
    assert_top(multipart.json(), 2)
    assert multipart.json()["top"] == raw.json()["top"]
    assert len(client.post("/predict?topk=99", content=image).json()["top"]) == len(CLASSES)  # capped


def test_predict_batch_answers_each_file_and_reports_bad_ones(client):
    files = [
        ("files", ("a.png", png_bytes(40, 40), "image/png")),
        ("files", ("junk.txt", b"hello", "text/plain")),
        ("files", ("b.png", png_bytes(60, 30, (10, 200, 10)), "image/png")),
    ]
    response = client.post("/predict/batch", params={"topk": 1}, files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["a.png", "junk.txt", "b.png"]
    assert [r["status"] for r in results] == [200, 415, 200]
    assert_top(results[0], 1) and "junk.txt" in results[1]["error"]


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("too_large", 413, "larger than the limit"),
        ("not_image", 415, "not an image"),
        ("bomb", 422, "above the limit"),
        ("missing_raw", 400, "missing file"),
        ("missing_field", 400, "field 'file' not found"),
        ("bad_topk", 422, "topk"),
    ],
)
def test_bad_requests_get_clear_json_errors(client, case, status, words):
    requests = {
        "too_large": lambda: client.post("/predict", content=os.urandom(MAX_BODY + 1000)),
        "not_image": lambda: client.post(
            "/predict", files={"file": ("x.pdf", b"%PDF-1.4 not really", "a/pdf")}
        ),
        "bomb": lambda: client.post("/predict", content=png_bytes(1000, 1000)),  # 10 kB of PNG, 1 Mpx
        "missing_raw": lambda: client.post("/predict"),
        "missing_field": lambda: client.post("/predict", files={"other": ("a.png", png_bytes(8, 8))}),
        "bad_topk": lambda: client.post("/predict?topk=0", content=png_bytes(8, 8)),
    }
    response = requests[case]()
    assert response.status_code == status and response.headers["content-type"] == "application/json"
    assert words in response.json()["detail"]


def test_body_streamed_without_length_is_also_limited(client):
    chunks = (os.urandom(50_000) for _ in range(6))  # chunked transfer: no Content-Length to check up front
    response = client.post("/predict", content=chunks)
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_openapi_schema_describes_the_real_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/healthz", "/info"} <= set(schema["paths"])
    predict = schema["paths"]["/predict"]["post"]
    assert {"multipart/form-data", "image/*", "application/octet-stream"} <= set(
        predict["requestBody"]["content"]
    )
    assert {"200", "400", "413", "415", "422"} <= set(predict["responses"])
    assert [p["name"] for p in predict["parameters"]] == ["topk"]
    batch = schema["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert batch["schema"]["properties"]["files"]["type"] == "array"
    # the documented response fields are the ones actually returned
    components = schema["components"]["schemas"]
    real = client.post("/predict", content=png_bytes(20, 20)).json()
    documented = set(components["PredictResponse"]["properties"])
    # the open-set answer's fields come only from a model with an open-set threshold, labels only from a
    # multi-label model (test_service.py)
    assert set(real) == documented - {"label", "unknown", "open_set_score", "labels"}
    assert set(real["top"][0]) == set(components["ClassProb"]["properties"])
    assert set(client.get("/info").json()) == set(components["InfoResponse"]["properties"])


def test_explain_returns_a_png_overlay_with_the_class_in_the_headers(client):
    image = png_bytes(50, 40)
    top1 = client.post("/predict", content=image).json()["top"][0]
    response = client.post("/explain", files={"file": ("red.png", image, "image/png")})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-class"] == top1["class"]
    assert abs(float(response.headers["x-probability"]) - top1["prob"]) < 0.05  # fp32 here, maybe bf16 there
    with Image.open(io.BytesIO(response.content)) as overlay:
        assert overlay.format == "PNG" and overlay.size == (32, 32)  # the model's input crop
    other = next(c for c in CLASSES if c != top1["class"])
    chosen = client.post("/explain", params={"class": other}, content=image)
    assert chosen.status_code == 200 and chosen.headers["x-class"] == other


@pytest.mark.parametrize(
    "request_kwargs, status, words",
    [
        ({"params": {"class": "no-such-class"}, "content": png_bytes(8, 8)}, 422, "not one of the model's"),
        ({"content": b"\0" * (MAX_BODY + 1)}, 413, "limit"),
        ({"content": png_bytes(1000, 1000)}, 422, "decompression bomb"),
        ({"files": {"file": ("x.pdf", b"%PDF-1.4 not really", "a/pdf")}}, 415, "x.pdf"),
        ({}, 400, "missing file"),
    ],
)
def test_explain_honours_the_same_limits_as_predict(client, request_kwargs, status, words):
    response = client.post("/explain", **request_kwargs)
    assert response.status_code == status and words in response.json()["detail"]


def test_explain_is_documented_in_openapi(client):
    explain = client.get("/openapi.json").json()["paths"]["/explain"]["post"]
    assert "image/png" in explain["responses"]["200"]["content"]
    assert {"X-Class", "X-Probability"} <= set(explain["responses"]["200"]["headers"])
    assert [p["name"] for p in explain["parameters"]] == ["class"]
    assert {"multipart/form-data", "image/*"} <= set(explain["requestBody"]["content"])


def _one_request(client: httpx.Client, i: int) -> tuple[int, int, float]:
    """Every fifth request is malformed, in turn: not an image, no file, a bomb, too large, bad topk."""
    good = png_bytes(30 + i % 20, 30, (i % 255, 80, 160))
    start = time.perf_counter()
    if i % 5 != 4:
        r = client.post("/predict", files={"file": ("ok.png", good, "image/png")})
        expected = 200
    else:
        r, expected = [
            lambda: (client.post("/predict", content=b"GIF89a garbage"), 415),
            lambda: (client.post("/predict", files={"x": ("a", b"1")}), 400),
            lambda: (client.post("/predict", content=png_bytes(600, 600)), 422),
            lambda: (client.post("/predict", content=b"\0" * (MAX_BODY + 1)), 413),
            lambda: (client.post("/predict?topk=abc", content=good), 422),
        ][(i // 5) % 5]()
    return r.status_code, expected, time.perf_counter() - start


def test_bounded_load_with_malformed_requests_never_breaks_the_server(client, server):
    requests, concurrency = 300, 8
    clients = [httpx.Client(base_url=server[0], timeout=30) for _ in range(concurrency)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:  # a dropped connection raises here and fails the test
        outcomes = list(pool.map(lambda i: _one_request(clients[i % concurrency], i), range(requests)))
    wall = time.perf_counter() - start
    for c in clients:
        c.close()
    statuses = [s for s, _, _ in outcomes]
    assert not [s for s in statuses if s >= 500]
    assert [s for s, _, _ in outcomes] == [e for _, e, _ in outcomes]
    assert statuses.count(200) == requests * 4 // 5
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["queued"] == 0
    latencies = sorted(t for _, _, t in outcomes)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(
        f"\nload: {requests} requests, concurrency {concurrency}, {wall:.1f} s, "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"mean model batch {health['images_run'] / max(1, health['batches_run']):.2f}"
    )


def test_serve_refuses_a_bad_model_directory_with_exit_2(tmp_path, capsys):
    from resnetcls.cli import main

    assert main(["serve", str(tmp_path / "nope"), "--port", str(free_port())]) == 2
    assert "no such model directory" in capsys.readouterr().err


def test_workers_serve_with_the_command_line_settings_and_none_is_restarted(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model")
    log = tmp_path / "server.log"
    proc, url = start_server(model, log, "--workers", "2", "--max-idle-per-client", "5", timeout=240)
    try:
        assert httpx.get(url + "/info", timeout=30).json()["limits"]["max_idle_per_client"] == 5
        assert [httpx.get(url + "/healthz", timeout=30).status_code for _ in range(4)] == [200] * 4
    finally:
        stop_server(proc)
    assert "died" not in log.read_text()  # the supervisor killed no worker while it was starting
