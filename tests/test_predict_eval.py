"""`resnetcls eval` and `resnetcls predict` on a trained run, and the model directory's checks."""
import json
import shutil

from tests.conftest import run_cli


def test_eval_prints_top1_top5_and_writes_metrics_json(tiny_run, tiny_data, tmp_path):
    result = run_cli("eval", tiny_run, tiny_data, "--out", tmp_path / "ev")
    assert result.returncode == 0, result.stderr
    assert "top1" in result.stdout and "top5" in result.stdout
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["images"] == 36 and metrics["classes"] == ["blue", "green", "red"]
    assert 0.0 <= metrics["top1"] <= 1.0 and metrics["top5"] == 1.0
    assert sum(map(sum, metrics["confusion_matrix"])) == 36


def test_eval_refuses_data_with_classes_the_model_does_not_know(tiny_run, tiny_data, tmp_path):
    (tmp_path / "d" / "purple").mkdir(parents=True)
    shutil.copy(tiny_data / "red" / "0.jpg", tmp_path / "d" / "purple" / "0.jpg")
    result = run_cli("eval", tiny_run, tmp_path / "d")
    assert result.returncode == 2 and "purple" in result.stderr


def test_predict_json_gives_topk_class_names_with_probabilities(tiny_run, tiny_data):
    images = [tiny_data / "red" / "1.jpg", tiny_data / "blue" / "2.jpg"]
    result = run_cli("predict", tiny_run, *images, "--topk", "2", "--format", "json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [r["path"] for r in out] == [str(p) for p in images]
    for r in out:
        assert len(r["top"]) == 2 and {t["class"] for t in r["top"]} <= {"blue", "green", "red"}
        assert r["top"][0]["prob"] >= r["top"][1]["prob"]


def test_predict_reports_an_unreadable_image_and_keeps_the_others(tiny_run, tiny_data, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    result = run_cli("predict", tiny_run, tiny_data / "red" / "1.jpg", bad, "--format", "csv")
    assert result.returncode == 2
    assert "red/1.jpg,1," in result.stdout and f"{bad},,,," in result.stdout


def test_tampered_weights_are_refused(tiny_run, tiny_data, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_run / "best", model)
    with open(model / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    result = run_cli("predict", model, tiny_data / "red" / "1.jpg")
    assert result.returncode == 2 and "sha256 does not match" in result.stderr
