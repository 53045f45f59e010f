"""Precision on both kinds of CPU: auto picks bf16 only where it is native, and training, prediction and
evaluation run in bf16 and in fp32 when forced, whichever CPU the suite runs on (bf16 is emulated, and
slow, on AVX2-only CPUs: the models here are tiny)."""

import json

import pytest
import torch

from resnetcls.data.decode import decode_image
from resnetcls.errors import UserError
from resnetcls.inference.predictor import Predictor
from resnetcls.records.modelfile import load_model_dir
from resnetcls.utils import hardware
from tests.conftest import TINY, run_cli

# bf16 keeps 8 bits of mantissa: each operation may be off by about 2**-8 relative, which on these tiny
# models moves a softmax probability by up to a few 1e-3 (fp32 differs from itself only by summation order).
PROB_TOLERANCE = {"bf16": 3e-2, "fp32": 1e-5}


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_exactly_where_the_cpu_has_native_bf16(monkeypatch, native):
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert hardware.resolve_amp("auto", cpu) == (torch.bfloat16 if native else None)
    assert hardware.resolve_amp("fp32", cpu) is None and hardware.resolve_amp("bf16", cpu) == torch.bfloat16


def test_a_onednn_cap_below_bf16_means_no_native_bf16(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # how a user (or this suite) runs as an AVX2-only CPU
    hardware.cpu_has_fast_bf16.cache_clear()
    hardware.cpu_has_amx.cache_clear()
    try:
        assert hardware.cpu_has_fast_bf16() is False and hardware.cpu_has_amx() is False
        assert hardware.resolve_amp("auto", torch.device("cpu")) is None
    finally:
        monkeypatch.undo()
        hardware.cpu_has_fast_bf16.cache_clear()
        hardware.cpu_has_amx.cache_clear()


def test_amx_is_read_from_torchs_flags_unless_capped_below_it(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": True})
    for cap, expected in (("", True), ("AVX512_CORE_AMX", True), ("AVX512_CORE_BF16", False)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        hardware.cpu_has_amx.cache_clear()
        assert hardware.cpu_has_amx() is expected, cap
    monkeypatch.setattr(hardware, "cpu_capabilities", lambda: {"avx512_bf16": True})  # e.g. Zen 4
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "")
    hardware.cpu_has_amx.cache_clear()
    assert hardware.cpu_has_amx() is False
    monkeypatch.undo()
    hardware.cpu_has_amx.cache_clear()


@pytest.mark.parametrize("amp", ["bf16", "fp32"])
def test_training_runs_and_records_the_forced_precision(tiny_data, tmp_path, amp):
    out = tmp_path / "run"
    result = run_cli(
        "train", tiny_data, *TINY, "--epochs", "1", "--set", f"train.precision={amp}", "--out", out
    )
    assert result.returncode == 0, result.stderr
    assert f"cpu {amp} channels_last" in result.stderr
    summary = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["precision"] == amp
    assert all(
        torch.isfinite(t).all()
        for t in load_model_dir(out).model.state_dict().values()
        if t.is_floating_point()
    )


def test_predict_in_each_precision_agrees_with_fp32_eager(tiny_run, tiny_data):
    paths = sorted(str(p) for p in tiny_data.rglob("*.jpg"))
    reference = Predictor(tiny_run, precision="fp32")
    batch = torch.stack([reference.transform(decode_image(p)) for p in paths])
    with torch.inference_mode():
        eager = load_model_dir(tiny_run).model(batch).softmax(1)  # plain fp32, contiguous memory
    for precision in ("fp32", "bf16"):
        predictor = Predictor(tiny_run, precision=precision)
        assert predictor.precision == precision
        probs = predictor.probabilities(batch)
        assert float((probs - eager).abs().max()) <= PROB_TOLERANCE[precision], precision
    # fp32 is bit-stable: the same images give the same numbers, call after call
    assert torch.equal(reference.probabilities(batch), reference.probabilities(batch))


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_predict_and_eval_take_a_precision_flag(tiny_run, tiny_data, tmp_path, precision):
    image = str(sorted(tiny_data.rglob("*.jpg"))[0])
    result = run_cli("predict", tiny_run, image, "--format", "json", "--precision", precision)
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert sum(t["prob"] for t in row["top"]) == pytest.approx(1, abs=1e-3)
    result = run_cli("eval", tiny_run, tiny_data, "--out", tmp_path / "eval", "--precision", precision)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["inference_precision"] == precision


def test_bad_precision_requests_are_clear_errors(tiny_run):
    with pytest.raises(UserError, match="the onnxruntime backend does not run bf16"):
        Predictor(tiny_run, precision="bf16", backend="onnxruntime")
    with pytest.raises(UserError, match="--precision 'fp8'"):
        Predictor(tiny_run, precision="fp8")
    result = run_cli("predict", tiny_run, "x.jpg", "--precision", "fp16")
    assert result.returncode == 2 and "--precision" in result.stderr


def test_peak_gflops_gives_a_positive_limit_for_each_kernel_and_restores_the_threads():
    threads = torch.get_num_threads()
    limit = hardware.peak_gflops(seconds=0.01, threads=1)
    assert limit["threads"] == 1 and torch.get_num_threads() == threads
    assert all(limit[k] > 0 for k in ("fp32_matmul", "fp32_conv", "bf16_matmul", "bf16_conv"))
    # bf16 figures are flagged: where bf16 is emulated they are no limit for training to reach
    assert limit["bf16_native"] is hardware.cpu_has_fast_bf16()
