"""`resnetcls benchmark`: the table and the JSON on a tiny trained model, a backend refused when its top-1
disagrees with torch fp32, no agreement on unlabelled images, and the one-line errors."""

import json
import shutil

import torch

from resnetcls.export import benchmark
from resnetcls.export.bench_backends import Runner
from tests.conftest import run_cli

FAST = ("--backends", "torch-fp32,torchscript", "--runs", "1", "--images", "4")


def test_table_and_json_on_a_tiny_trained_model(tiny_run, tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("benchmark", tiny_run, *FAST, "--json", out)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "cores" in lines[0]
    header = next(line for line in lines if line.startswith("backend"))
    for column in ("file MB", "top-1", "agrees", "p50 ms", "p99 ms", "img/s b32", " x ", "status"):
        assert column in header
    assert [line.split()[0] for line in lines if line.startswith("torch")] == ["torch-fp32", "torchscript"]
    record = json.loads(out.read_text())
    assert {"machine", "model", "data", "images", "thresholds", "rows", "agreement_omitted"} <= set(record)
    assert record["agreement_omitted"] is None and "labelled images from" in record["data"]
    torch_row, script_row = record["rows"]
    for row in (torch_row, script_row):
        assert row["status"] == "ok"
        assert row["agreement"] == 1.0 and 0 <= row["top1"] <= 1
        assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"] and row["images_per_s"] > 0
        assert row["file_mb"] > 0
    assert torch_row["file"].endswith("model.safetensors") and torch_row["speedup"] == 1.0
    # exported into a work folder, never into the model folder
    assert script_row["origin"] == "work folder" and not (tiny_run / "best" / "model.torchscript.pt").exists()


def test_a_backend_whose_top1_disagrees_with_torch_fp32_is_refused_and_not_timed(tiny_run, monkeypatch):
    real = benchmark.build_runner

    def disagreeing(files, backend):
        runner = real(files, "torch-fp32")
        if backend == "torch-fp32":
            return runner
        # every answer moved to the next class: top-1 never agrees
        return Runner(backend, lambda batch: runner.run(batch).roll(1, dims=1), runner.file, "x", "fp32")

    monkeypatch.setattr(benchmark, "build_runner", disagreeing)
    report = benchmark.run_benchmark(tiny_run, backends="torch-fp32,onnxruntime-fp32", images=4, runs=1)
    refused = report.rows[1]
    assert refused.status == "refused" and refused.p50_ms is None
    assert "top-1 agrees with torch fp32 on 0.0% of" in refused.reason and "(< 99.5%)" in refused.reason
    assert "refused: top-1 agrees with torch fp32" in benchmark.format_table(report)


def test_unlabelled_images_get_no_agreement_column(tiny_run, tiny_data, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    for i, image in enumerate(sorted(tiny_data.rglob("*.jpg"))[::6]):
        shutil.copy(image, loose / f"{i}.jpg")
    result = run_cli(
        "benchmark", tiny_run, loose, "--backends", "torch-fp32", "--runs", "1", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert "has no class labels" in record["agreement_omitted"]
    assert "agreement" not in record["rows"][0] and "top1" not in record["rows"][0]
    assert record["rows"][0]["status"] == "ok" and record["rows"][0]["p50_ms"] > 0


def test_the_table_leaves_agreement_out_and_says_why():
    data = benchmark.BenchData(
        torch.zeros(2, 3, 8, 8), None, "2 images from loose", "loose has no class labels"
    )
    row = benchmark.Row(
        "openvino-int8", precision="int8", file_mb=0.3, p50_ms=1.0, p99_ms=2.0, images_per_s=9
    )
    row.reason = "parity not checked: no labelled images of the model's classes"
    table = benchmark.format_table(benchmark.BenchReport("a CPU", "m", data, 1, [row]))
    assert "agrees" not in table and "top-1 and agreement omitted: loose has no class labels" in table
    assert table.splitlines()[0] == "machine: a CPU"
    assert "ok: parity not checked" in table


def test_an_untrained_model_gets_no_agreement(tiny_run, tiny_data):
    loaded = benchmark.load_model_dir(tiny_run, "cpu")
    del loaded.meta["metrics"]
    data = benchmark.load_bench_data(loaded, tiny_data, 4)
    assert data.labels is None and "no training metrics" in data.omitted
    assert data.tensors.shape[0] == 4 and data.tensors.dtype == torch.float32


def test_bad_input_is_one_line_with_exit_code_2(tiny_run, tmp_path):
    alone = tmp_path / "alone"
    shutil.copytree(tiny_run / "best", alone)  # no split.csv beside it
    result = run_cli("benchmark", alone)
    assert result.returncode == 2 and "no split.csv" in result.stderr and "give DATA" in result.stderr
    result = run_cli("benchmark", tiny_run, "--backends", "torch-fp32,tensorrt")
    assert (
        result.returncode == 2 and "--backends 'torch-fp32,tensorrt': expected names among" in result.stderr
    )
    result = run_cli("benchmark", tiny_run, tmp_path / "missing")
    assert result.returncode == 2 and "no such file or folder" in result.stderr
