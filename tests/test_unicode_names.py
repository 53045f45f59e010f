"""No class name can make eval, report, predict or serve fail: names with TeX, HTML, right-to-left marks,
emoji, tabs, newlines and decomposed accents go through a whole run and come out as the same text."""

import json
import unicodedata

import httpx
import pytest

from tests.conftest import TINY, make_class_folders, run_cli
from tests.serve.test_app import png_bytes, start_server, stop_server

ODD = {
    "a$\\frac{b$ 100%": (20, 40, 220),  # matplotlib mathtext would fail the figure
    "<b>&amp; \"q\" 'x'": (30, 200, 40),  # HTML in the report
    "日本語 \u202ertl 🦜": (220, 30, 30),  # CJK, a right-to-left override, an emoji
    "tab\tand, comma\nnewline": (200, 200, 30),  # CSV and table separators
    "nai\u0308ve": (120, 30, 200),  # decomposed (NFD) as macOS writes it
}
NAMES = sorted(unicodedata.normalize("NFC", name) for name in ODD)


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    data = make_class_folders(root / "data", ODD, per_class=6)
    result = run_cli("train", data, *TINY, "--epochs", "1", "--out", root / "run")
    assert result.returncode == 0, result.stderr
    return root / "run", data


def test_odd_names_survive_eval_and_report(odd_run):
    run, data = odd_run
    assert json.loads((run / "best" / "model.json").read_text())["classes"] == NAMES
    result = run_cli("eval", run, data)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["classes"] == NAMES and set(metrics["per_class"]) == set(NAMES)
    assert (run / "eval" / "confusion_matrix.png").stat().st_size > 0
    assert run_cli("report", run).returncode == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;&amp;amp; &quot;q&quot;" in page and "<b>&amp;" not in page
    assert "日本語" in page and "naïve" in page


def test_odd_names_survive_predict(odd_run, tmp_path):
    run, data = odd_run
    image = next((data / "nai\u0308ve").iterdir())
    result = run_cli("predict", run, image, "--topk", "5", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert sorted(t["class"] for t in json.loads(result.stdout)[0]["top"]) == NAMES
    for fmt in ("table", "csv"):
        assert run_cli("predict", run, image, "--topk", "5", "--format", fmt).returncode == 0


def test_odd_names_survive_serve(odd_run, tmp_path):
    run, _ = odd_run
    proc, url = start_server(run / "best", tmp_path / "server.log")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            info = client.get("/info")
            assert info.status_code == 200 and info.json()["classes"] == NAMES
            answer = client.post(
                "/predict?topk=5", content=png_bytes(40, 40), headers={"content-type": "image/png"}
            )
            assert answer.status_code == 200, answer.text
            assert sorted(t["class"] for t in answer.json()["top"]) == NAMES
    finally:
        stop_server(proc)
