"""engine/distill.py: `train --teacher MODEL_DIR`: the distillation loss, the teacher's input, the refusals
(another class list, a missing folder, another teacher on resume) and a distilled run that records its
teacher and resumes bit for bit."""

import json
import math
import shutil

import pytest
import torch
from torch import nn

from resnetcls.engine.distill import (
    DistillHooks,
    TeacherInput,
    class_difference,
    distill_loss,
    kd_loss,
)
from resnetcls.models import create_model
from resnetcls.records.modelfile import save_model_dir
from tests.conftest import run_cli
from tests.engine.test_resume import ARGS, STEP_CKPT, assert_identical, weights

PREPROCESS = {
    "image_size": 32,
    "resize": 37,
    "resize_mode": "shorter_side",
    "interpolation": "bilinear",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def test_alpha_0_is_the_task_loss_and_equal_logits_add_no_kd_term():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 4), torch.randn(6, 4)
    task = nn.functional.cross_entropy(student, torch.tensor([0, 1, 2, 3, 0, 1]))
    assert torch.equal(distill_loss(task, student, teacher, alpha=0.0, temperature=4.0), task)
    assert float(distill_loss(task, student, student.clone(), alpha=1.0, temperature=4.0)) == pytest.approx(
        0.0, abs=1e-6
    )
    # KL([0.75, 0.25] || [0.5, 0.5]) at T = 1, by hand; at T = 2 the softened outputs, times T^2 = 4
    hand = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    logits_t, logits_s = torch.tensor([[math.log(3.0), 0.0]]), torch.zeros(1, 2)
    assert float(kd_loss(logits_s, logits_t, 1.0)) == pytest.approx(hand, rel=1e-5)
    soft = torch.softmax(logits_t / 2, dim=1)[0]
    expected = 4 * float((soft * (soft / 0.5).log()).sum())
    assert float(kd_loss(logits_s, logits_t, 2.0)) == pytest.approx(expected, rel=1e-5)


def test_the_teacher_gets_the_batch_at_its_own_size_and_normalisation():
    images = torch.rand(2, 3, 40, 40)
    same = TeacherInput({**PREPROCESS, "image_size": 40}, {**PREPROCESS, "image_size": 40})
    assert same(images) is images  # nothing to do: the very tensor
    plain = {**PREPROCESS, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    view = TeacherInput({**PREPROCESS, "image_size": 40}, plain)
    pixels = images * torch.tensor(PREPROCESS["std"]).view(1, 3, 1, 1) + torch.tensor(
        PREPROCESS["mean"]
    ).view(1, 3, 1, 1)
    expected = nn.functional.interpolate((pixels - 0.5) / 0.5, size=(32, 32), mode="bilinear", antialias=True)
    assert torch.allclose(view(images), expected, atol=1e-5)


def test_the_hooks_weigh_the_task_loss_and_add_the_kd_term_without_teacher_gradients():
    teacher = nn.Conv2d(3, 4, 32)
    hooks = DistillHooks(
        nn.Sequential(teacher, nn.Flatten()), TeacherInput(PREPROCESS, PREPROCESS), 0.25, 2.0
    )
    assert hooks.task_weight == 0.75 and not teacher.training
    images = torch.rand(3, 3, 32, 32)
    student = torch.randn(3, 4, requires_grad=True)
    term = hooks.extra_loss(images, student)
    with torch.no_grad():
        expected = 0.25 * kd_loss(student, teacher(images).flatten(1), 2.0)
    assert torch.allclose(term, expected)
    term.backward()
    assert student.grad is not None and teacher.weight.grad is None


def test_a_class_list_in_another_order_or_with_other_names_is_named():
    assert class_difference(["a", "b"], ["a", "b"]) == ""
    assert "class 1 is the teacher's 'c', DATA's 'b'" in class_difference(["a", "c", "b"], ["a", "b", "c"])
    text = class_difference(["a", "b", "x"], ["a", "b", "c", "d"])
    assert "only the teacher has 'x'" in text and "only DATA has 'c', 'd'" in text


def model_dir(path, classes, seed=1):
    torch.manual_seed(seed)
    model = create_model("resnet18", len(classes), width=8)
    return save_model_dir(path, model, "resnet18", {"width": 8}, classes, PREPROCESS)


@pytest.mark.parametrize(
    "teacher, message",
    [
        ("other-order", "its classes are not DATA's: the same 3 classes in another order"),
        ("missing", "--teacher (distill.teacher): "),
    ],
)
def test_a_teacher_of_other_classes_or_none_is_refused_before_a_run_starts(
    tiny_data, tmp_path, teacher, message
):
    if teacher == "other-order":
        model_dir(tmp_path / teacher, ["blue", "red", "green"])
    out = tmp_path / "run"
    result = run_cli("train", tiny_data, *ARGS, "--teacher", tmp_path / teacher, "--out", out)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_distilled_run_records_its_teacher_resumes_bit_identical_and_refuses_another_teacher(
    tiny_data, tiny_run, tmp_path, plain_interpreter
):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_run / "best", teacher)
    out = tmp_path / "run"
    args = [*ARGS, *STEP_CKPT, "--epochs", "1", "--teacher", teacher, "--out", out]  # 8 steps
    result = plain_interpreter.run("train", tiny_data, *args)
    assert result.returncode == 0, result.stderr
    assert f"distillation: teacher resnet18 {teacher}" in result.stderr
    sha = json.loads((teacher / "model.json").read_text())["sha256"]["model.safetensors"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["weights_sha256"] for r in records if r["kind"] == "distill"] == [sha]
    newest = sorted((out / "checkpoints").glob("step-*.json"))[-1]
    assert json.loads(newest.read_text())["distill"]["weights_sha256"] == sha
    # A run stopped after step 3 (the later checkpoints gone) resumes to the very same weights.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    for path in sorted((resumed / "checkpoints").glob("step-*"))[6:]:
        path.unlink()
    result = plain_interpreter.run("train", "--resume", resumed)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr and "at epoch 1 step 3/8" in result.stderr
    assert_identical(weights(resumed), weights(out))
    # The teacher's folder now holds another model: the run is not resumed with it.
    shutil.rmtree(teacher)
    model_dir(teacher, ["blue", "green", "red"])
    result = run_cli("train", "--resume", out)
    assert result.returncode == 2, result.stderr
    assert "not the teacher this run started with" in result.stderr and "--force" in result.stderr
