"""lifelong/sequence.py: the joint task, a sequence built from the two-task manifest (loaders, first head,
the joint schedule), its accuracy on every task, and a restore from a checkpoint's state."""

import pytest
import torch

from resnetcls.config import Config, DataConfig, LifelongConfig, ModelConfig, TrainConfig
from resnetcls.lifelong.sequence import (
    build_sequence,
    evaluate_tasks,
    joint_task,
    restore_sequence,
    seen_accuracy,
)
from resnetcls.lifelong.tasks import build_tasks


def tiny_config(manifest, strategy="naive"):
    return Config(
        model=ModelConfig(name="resnet18", width=8),
        data=DataConfig(train=str(manifest), image_size=32, num_workers=0, cache=False, leak_check=False),
        train=TrainConfig(batch_size=8, device="cpu", seed=0, deterministic=True),
        lifelong=LifelongConfig(tasks="light", order="bright,dark", strategy=strategy),
    )


def sequence(manifest, tmp_path, strategy="naive"):
    cfg = tiny_config(manifest, strategy)
    tasks, classes = build_tasks(cfg.lifelong, cfg.data, cfg.train.seed)
    torch.manual_seed(0)
    return build_sequence(cfg, tmp_path, {}, tasks, classes)


def test_the_joint_task_trains_on_every_task_s_images(manifest):
    cfg = tiny_config(manifest)
    tasks, _ = build_tasks(cfg.lifelong, cfg.data, cfg.train.seed)
    joint = joint_task(tasks)
    assert joint.name == "joint"
    assert len(joint.train) == sum(len(task.train) for task in tasks) > 0
    assert sorted(joint.train.paths) == sorted(p for task in tasks for p in task.train.paths)
    assert joint.train.classes == tasks[0].train.classes


def test_a_sequence_has_a_loader_per_task_and_the_first_task_s_head(manifest, tmp_path):
    seq = sequence(manifest, tmp_path)
    assert [task.name for task in seq.schedule] == ["light=bright", "light=dark"]
    assert len(seq.train_loaders) == len(seq.test_loaders) == len(seq.samplers) == 2
    assert seq.classes == ["green", "red", "blue"]  # blue arrives with the dark task
    assert seq.model.fc.out_features == 2 and seq.head_size(1) == 3
    assert (seq.task, seq.R, seq.global_epoch()) == (0, [], 1)


def test_joint_schedules_one_task_with_every_class(manifest, tmp_path):
    seq = sequence(manifest, tmp_path, "joint")
    assert [task.name for task in seq.schedule] == ["joint"] and len(seq.test_loaders) == 2
    assert seq.model.fc.out_features == 3


def test_accuracy_on_every_task_and_over_the_tasks_seen(manifest, tmp_path):
    seq = sequence(manifest, tmp_path)
    row, seconds, images = evaluate_tasks(seq, None)
    assert len(row) == 2 and all(0.0 <= a <= 1.0 for a in row)
    assert images == 2 * 2 + 2 * 3 and seconds > 0  # two test images per class and task
    assert seen_accuracy(seq, [0.8, 0.2]) == pytest.approx(0.8)  # only the first task is trained
    seq.task = 1
    assert seen_accuracy(seq, [0.8, 0.2]) == pytest.approx(0.5)


def test_restore_continues_after_a_task_with_its_head_weights_and_matrix(manifest, tmp_path, capsys):
    trained = sequence(manifest, tmp_path)
    trained.model.fc = torch.nn.Linear(trained.model.fc.in_features, 3)
    state = {
        "extra": {
            "task": 1,
            "in_task": False,
            "num_classes": 3,
            "strategy": trained.hooks.state_dict(),
            "R": [[0.75, 0.25]],
            "b": [0.5, 0.0],
            "task_seconds": [1.5],
        },
        "model": trained.model.state_dict(),
        "epoch": 2,
        "global_step": 4,
        "bad_files": {},
    }
    seq = sequence(manifest, tmp_path)
    restore_sequence(seq, state, {"file": "ckpt.pt"})
    assert seq.model.fc.out_features == 3
    assert torch.equal(seq.model.fc.weight, trained.model.fc.weight)
    assert (seq.task, seq.R, seq.b, seq.seconds) == (1, [[0.75, 0.25]], [0.5, 0.0], [1.5])
    assert (seq.run.epoch, seq.run.global_step, seq.pending) == (1, 4, None)
    assert f"resuming {tmp_path} after task 1/2 from ckpt.pt" in capsys.readouterr().err
