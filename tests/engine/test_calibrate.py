"""The end of training fits the temperature on the validation split and ships it in model.json."""

import json

import pytest

from resnetcls.records.modelfile import load_model_dir
from tests.conftest import CALIBRATED, TINY, run_cli


def test_train_fits_a_temperature_on_val_stores_it_and_prints_one_line(calibrated_run):
    out, stderr = calibrated_run
    record = json.loads((out / "best" / "model.json").read_text())["calibration"]
    assert record["calibrated"] is True and record["fitted_on"] == "val" and record["images"] == 12
    assert record["nll_after"] <= record["nll_before"] + 1e-9  # the fit never does worse on what it saw
    assert 0.1 <= record["temperature"] <= 10
    line = next(text for text in stderr.splitlines() if text.startswith("calibration:"))
    assert (
        f"temperature {record['temperature']:.3g} on 12 val images: NLL {record['nll_before']:.3f} -> "
        in line
    )
    assert load_model_dir(out / "best").temperature == pytest.approx(record["temperature"])
    # final/ has its own record (the same one when it holds the same weights); metrics.jsonl logs it too
    assert json.loads((out / "final" / "model.json").read_text())["calibration"]["fitted_on"] == "val"
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["temperature"] for r in logged if r["kind"] == "calibration"] == [record["temperature"]]


def test_calibrate_false_records_t_1_as_not_calibrated(tiny_data, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", tiny_data, *CALIBRATED, "--set", "eval.calibrate=false", "--out", out)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "best" / "model.json").read_text())["calibration"]
    assert record["calibrated"] is False and record["temperature"] == 1.0 and record["fitted_on"] is None
    assert "calibration: none, temperature 1 (eval.calibrate=false)" in result.stderr


def test_a_run_with_too_few_val_images_ships_t_1_and_says_why(tiny_run):
    record = json.loads((tiny_run / "best" / "model.json").read_text())["calibration"]
    assert record["calibrated"] is False and record["temperature"] == 1.0
    assert "validation images; at least 10 are needed" in record["note"]


def test_a_bad_calibrate_value_is_exit_2_naming_the_key(tiny_data, tmp_path):
    result = run_cli("train", tiny_data, *TINY, "--set", "eval.calibrate=maybe", "--out", tmp_path / "r")
    assert result.returncode == 2 and "eval.calibrate" in result.stderr and "bool" in result.stderr


def test_the_fit_from_the_epochs_kept_logits_equals_a_fit_of_best_loaded_back(calibrated_run):
    """Train fits on the logits its epoch validation already computed (no second pass); that must be the fit a
    pass of the written best/ over the same validation images gives."""
    import torch

    from resnetcls.config import DataConfig
    from resnetcls.data.sources import load_splits
    from resnetcls.engine.calibrate import fit_model_dir
    from resnetcls.engine.loop import StepContext
    from resnetcls.engine.prepare import DataPipeline

    out, _ = calibrated_run
    splits = load_splits(str(out / "split.csv"))  # the run's own split: path,label,split
    loader = DataPipeline(DataConfig(image_size=32, num_workers=0), 16, uint8_batches=False).eval_loader(
        splits.val
    )
    again = fit_model_dir(out / "best", loader, StepContext(torch.device("cpu")))  # fp32, as the run
    record = json.loads((out / "best" / "model.json").read_text())["calibration"]
    assert again.images == record["images"] == 12
    assert again.temperature == pytest.approx(record["temperature"], rel=1e-4)


def test_train_calibrates_without_a_second_pass_over_val(tiny_data, tmp_path, monkeypatch):
    from resnetcls.engine import calibrate

    def second_pass(*args):
        raise AssertionError("best/ or final/ was loaded back and evaluated again")

    monkeypatch.setattr(calibrate, "fit_model_dir", second_pass)
    result = run_cli("train", tiny_data, *CALIBRATED, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert (
        json.loads((tmp_path / "run" / "best" / "model.json").read_text())["calibration"]["calibrated"]
        is True
    )
