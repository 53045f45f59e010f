"""lifelong/results.py: summarize (the metrics of a sequence or a joint run, the gap to a joint run) on a
hand-computed 2x2 accuracy matrix, and the files write_results leaves."""

import csv
import json

import pytest
import torch

from resnetcls.config import Config, LifelongConfig, ModelConfig
from resnetcls.data.transforms import make_preprocess
from resnetcls.engine.prepare import arch_args
from resnetcls.errors import UserError
from resnetcls.lifelong.results import LifelongResults, summarize, write_results
from resnetcls.models import create_model
from resnetcls.records.modelfile import load_model_dir

R = [
    [0.8, 0.1],  # after task 1: 0.8 on task 1, 0.1 on the unseen task 2
    [0.6, 0.9],
]  # after task 2
B = [0.05, 0.2]  # before any training
NAMES, CLASSES = ["light=bright", "light=dark"], ["green", "red", "blue"]


def test_summarize_a_sequence_and_its_gap_to_a_joint_run(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"ACC": 0.85}))
    m = summarize(R, B, "naive", str(tmp_path))
    assert m["tasks"] == 2
    assert m["ACC"] == pytest.approx((0.6 + 0.9) / 2)  # 0.75
    assert m["BWT"] == pytest.approx(0.6 - 0.8)  # -0.2: task 1 was partly forgotten
    assert m["FWT"] == pytest.approx(0.1 - 0.2)  # -0.1
    assert m["forgetting"] == pytest.approx([0.8 - 0.6])
    assert m["joint_ACC"] == 0.85 and m["gap_to_joint"] == pytest.approx(0.85 - 0.75)
    assert m["overall"] == pytest.approx((0.8 + 0.75) / 2)  # seen tasks after each session, averaged
    assert m["overall_vs_joint"] == pytest.approx(0.775 / 0.85)  # Kemker's Omega_all: relative to offline
    assert "gap_to_joint" not in summarize(R, B, "naive", None)


def test_a_joint_run_is_summarised_by_its_one_row():
    m = summarize([[0.7, 0.9]], B, "joint", None)
    assert m["tasks"] == 2 and m["ACC"] == pytest.approx(0.8) and m["per_task"] == [0.7, 0.9]
    assert "BWT" not in m  # no sequence, no transfer


def test_a_joint_reference_without_metrics_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match=f"--joint {tmp_path}: no metrics.json .*--strategy joint"):
        summarize(R, B, "naive", str(tmp_path))


def results_of(tmp_path, strategy, R_, seconds):
    cfg = Config(model=ModelConfig(name="resnet18", width=8), lifelong=LifelongConfig(strategy=strategy))
    torch.manual_seed(0)
    model = create_model("resnet18", len(CLASSES), **arch_args(cfg.model))
    results = LifelongResults(
        strategy=strategy,
        model_cfg=cfg.model,
        names=NAMES,
        classes=CLASSES,
        model=model,
        device="cpu",
        preprocess=make_preprocess(32),
        buffer_stats={"buffer_images": 6},
        R=R_,
        b=B,
        seconds=seconds,
        inference_s_per_image=0.0015,
        bad_images=1,
        inference_ms_batch1=2.25,
    )
    metrics = write_results(results, tmp_path, None)
    with open(tmp_path / "R.csv", newline="") as f:
        return model, metrics, list(csv.reader(f))


def test_write_results_leaves_the_matrix_the_metrics_and_the_final_model(tmp_path):
    model, m, table = results_of(tmp_path, "replay", R, [1.25, 2.5])
    assert table == [
        ["after", *NAMES],
        ["before", "0.050000", "0.200000"],
        ["light=bright", "0.800000", "0.100000"],
        ["light=dark", "0.600000", "0.900000"],
    ]
    assert json.loads((tmp_path / "R.json").read_text()) == {"tasks": NAMES, "b": B, "R": R}
    assert (tmp_path / "R.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "metrics.json").read_text()) == m  # what the caller gets is what is on disk
    assert m["strategy"] == "replay" and m["task_names"] == NAMES and m["ACC"] == pytest.approx(0.75)
    assert m["train_seconds_per_task"] == [1.25, 2.5] and m["train_seconds"] == 3.75
    assert m["inference_ms_per_image"] == 1.5 and m["buffer_images"] == 6
    assert m["inference_ms_batch1"] == 2.25 and m["device_name"]  # the machine the times were taken on
    assert m["model_params"] == sum(p.numel() for p in model.parameters()) and m["model_mb"] > 0
    assert (m["device"], m["classes"], m["bad_images"]) == ("cpu", 3, 1)
    final = load_model_dir(tmp_path / "final")
    assert final.classes == CLASSES and final.meta["metrics"] == {"ACC": m["ACC"]}
    assert final.meta["arch_args"] == arch_args(ModelConfig(name="resnet18", width=8))
    assert torch.equal(final.model.state_dict()["fc.weight"], model.state_dict()["fc.weight"])


def test_a_joint_run_writes_one_row_named_joint(tmp_path):
    _, m, table = results_of(tmp_path, "joint", [[0.7, 0.9]], [3.0])
    assert table == [["after", *NAMES], ["before", "0.050000", "0.200000"], ["joint", "0.700000", "0.900000"]]
    assert m["ACC"] == pytest.approx(0.8) and m["per_task"] == [0.7, 0.9] and m["R"] == [[0.7, 0.9]]
