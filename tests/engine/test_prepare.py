"""engine/prepare.py: the run directory a run starts from (config.yaml, environment.json, the checkpoint to
resume or the refusal), seeding, the device/precision context, the model and the data pipeline."""

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from resnetcls.config import (
    CkptConfig,
    Config,
    DataConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    config_to_dict,
)
from resnetcls.data.sampler import ResumableSampler
from resnetcls.data.sources import load_splits
from resnetcls.engine.checkpoint import Checkpointer, RunState
from resnetcls.engine.prepare import (
    DataPipeline,
    arch_args,
    build_context,
    build_model,
    find_resume,
    prepare_run,
    saved_run_config,
    seed_everything,
    with_saved_total,
)
from resnetcls.errors import UserError


@pytest.fixture(autouse=True)
def restore_torch_flags(monkeypatch):
    """prepare_run and seed_everything switch process-wide settings; put them back for the other tests."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    deterministic, benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = benchmark


def save_checkpoint_of(run_dir: Path, cfg: Config, global_step: int = 3) -> None:
    """A real (tiny) checkpoint of cfg in run_dir/checkpoints, as a training run leaves it."""
    Checkpointer(
        run_dir, CkptConfig(), cfg.train.batch_size, config_to_dict(cfg), {}, nn.Linear(2, 2), None
    ).save(RunState(global_step=global_step))


def test_prepare_run_writes_config_and_environment_with_absolute_data_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config(data=DataConfig(train="photos"))
    run = prepare_run(cfg, "run", None, False)
    photos = str(Path.cwd() / "photos")
    assert cfg.data.train == "photos"  # the caller's config is left as it was; the returned one is a copy
    assert run.cfg.data.train == photos and run.resumed is None and run.run_dir == Path("run")
    assert saved_run_config(tmp_path / "run")["data"]["train"] == photos  # `--resume RUN_DIR` works anywhere
    assert json.loads((tmp_path / "run" / "environment.json").read_text()) == run.env
    assert {"resnetcls", "torch", "python", "git_commit"} <= set(run.env)  # the provenance of the run


def test_an_invalid_config_or_a_non_writing_rank_leaves_nothing_on_disk(tmp_path):
    with pytest.raises(UserError, match=r"train.batch_size=0: must be in \[1, "):
        prepare_run(Config(train=TrainConfig(batch_size=0)), tmp_path / "bad", None, False)
    rank1 = prepare_run(Config(), tmp_path / "rank1", None, False, writes=False)
    assert rank1.run_dir == tmp_path / "rank1"
    assert not (tmp_path / "bad").exists() and not (tmp_path / "rank1").exists()


def test_a_directory_with_checkpoints_is_refused_for_a_new_run_and_left_as_it_was(tmp_path):
    run_dir = tmp_path / "run"
    first = prepare_run(Config(), run_dir, None, False)
    save_checkpoint_of(run_dir, first.cfg)
    before = (run_dir / "config.yaml").read_text()
    with pytest.raises(
        UserError, match="already holds checkpoints of an earlier run; continue it with --resume auto"
    ):
        prepare_run(Config(train=TrainConfig(epochs=3)), run_dir, None, False)
    assert (run_dir / "config.yaml").read_text() == before  # the refused run wrote nothing
    assert prepare_run(Config(), run_dir, "auto", False).resumed[1]["global_step"] == 3
    named = prepare_run(
        Config(), tmp_path / "ignored", str(run_dir), False
    )  # --resume RUN_DIR: that directory
    assert named.run_dir == run_dir and named.resumed[1]["global_step"] == 3
    assert not (tmp_path / "ignored").exists()


def test_resume_auto_without_a_checkpoint_starts_anew_but_a_named_run_must_have_one(tmp_path, capsys):
    assert find_resume("auto", tmp_path, Config(), False) is None
    assert f"no checkpoint in {tmp_path / 'checkpoints'}: starting a new run" in capsys.readouterr().err
    with pytest.raises(UserError, match=f"{tmp_path}: no complete checkpoint in "):
        find_resume(str(tmp_path), tmp_path, Config(), False)


def test_resume_lists_every_result_affecting_change_and_refuses_unless_forced(tmp_path, capsys):
    save_checkpoint_of(tmp_path, Config())
    changed = Config(train=TrainConfig(batch_size=8), optim=OptimConfig(lr=0.1), log=LogConfig(every_steps=5))
    with pytest.raises(UserError) as refused:
        find_resume("auto", tmp_path, changed, force=False)
    message = str(refused.value)
    assert (
        "refusing to resume with settings that change the result (optim.lr: 0.002 -> 0.1; "
        "train.batch_size: 32 -> 8)"
        in message
        and "--force" in message
    )
    assert "log.every_steps" not in message  # logging does not change the result
    state, meta = find_resume("auto", tmp_path, changed, force=True)
    assert meta["global_step"] == 3 and state["global_step"] == 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if "(--force)" in line]
    assert warnings == [
        "warning: resuming with a changed setting (--force): optim.lr: 0.002 -> 0.1",
        "warning: resuming with a changed setting (--force): train.batch_size: 32 -> 8",
    ]


def test_saved_run_config_of_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(
        UserError, match=r"not a run directory \(no config.yaml\); give DATA to start a new run"
    ):
        saved_run_config(tmp_path)


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_seed_everything_repeats_every_rng_and_switches_determinism_both_ways():
    seed_everything(7, deterministic=True)
    first = draws()
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    seed_everything(7, deterministic=False)
    assert draws() == first
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    seed_everything(8, deterministic=False)
    assert all(a != b for a, b in zip(draws(), first))  # python, numpy and torch each follow the seed


def test_build_model_follows_the_model_config_and_the_asked_memory_format():
    m = ModelConfig(name="resnet18", stem="small", width=8)
    assert arch_args(m) == {"stem": "small", "stride_on_1x1": False, "zero_init_residual": True, "width": 8}
    for channels_last in (True, False):
        t = TrainConfig(device="cpu", precision="fp32", channels_last=channels_last)
        ctx = build_context(t)
        assert (
            ctx.device == torch.device("cpu") and ctx.amp_dtype is None and ctx.channels_last is channels_last
        )
        model = build_model(m, t, 5, ctx)
        weight = model.conv1.weight
        assert weight.shape == (8, 3, 3, 3) and model.fc.out_features == 5  # the small stem, 5 classes
        assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
        assert weight.is_contiguous() is not channels_last
    # torchrun's device for this rank (device_name) wins over train.device
    assert build_context(TrainConfig(device="cuda:3", precision="bf16"), "cpu").device == torch.device("cpu")


def test_sync_bn_is_ignored_in_one_process_and_refused_on_cpu_under_torchrun(monkeypatch):
    t = TrainConfig(device="cpu", precision="fp32", sync_bn=True)
    m = ModelConfig(name="resnet18", width=8)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert isinstance(build_model(m, t, 3, build_context(t)).bn1, nn.BatchNorm2d)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(
        UserError, match="SyncBatchNorm runs on CUDA only; use --set train.sync_bn=false on CPU"
    ):
        build_model(m, t, 3, build_context(t))


def test_data_pipeline_hands_over_the_asked_batch_kind_and_the_requested_images(tiny_data):
    splits = load_splits(str(tiny_data))
    for uint8 in (True, False):
        pipeline = DataPipeline(DataConfig(image_size=32, num_workers=0), 8, uint8_batches=uint8)
        assert pipeline.preprocess["image_size"] == 32
        evens = range(0, len(splits.val), 2)  # one rank's share of the validation images
        batches = list(pipeline.eval_loader(splits.val, evens))
        assert [int(label) for b in batches for label in b["labels"]] == [splits.val.labels[i] for i in evens]
        assert batches[0]["images"].dtype == (torch.uint8 if uint8 else torch.float32)
        assert tuple(batches[0]["images"].shape[1:]) == (3, 32, 32)
        train = list(pipeline.train_loader(splits.train, ResumableSampler(splits.train.labels), 0))
        assert len(splits.train) % 8 and len(train) == len(splits.train) // 8  # the partial batch is dropped
        assert all(len(b["labels"]) == 8 for b in train)


def test_a_budgeted_run_keeps_the_total_it_chose_when_resumed():
    saved = config_to_dict(Config(train=TrainConfig(epochs=7, time_budget="20m")))
    assert with_saved_total(saved, Config(train=TrainConfig(time_budget="20m"))).train.epochs == 7
    assert with_saved_total(saved, Config(train=TrainConfig(epochs=3))).train.epochs == 3  # no budget now
    unbudgeted = config_to_dict(Config(train=TrainConfig(epochs=7)))
    assert with_saved_total(unbudgeted, Config(train=TrainConfig(time_budget="20m"))).train.epochs == 10


def test_a_device_augmenting_pipeline_ships_uint8_canvases_even_on_the_cpu(tiny_data):
    splits = load_splits(str(tiny_data))
    pipeline = DataPipeline(
        DataConfig(image_size=32, num_workers=0), 8, uint8_batches=False, device_augment=True
    )
    batch = next(iter(pipeline.train_loader(splits.train, ResumableSampler(splits.train.labels), 0)))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[-1] == round(32 / 0.875)
    assert tuple(batch["finish"](batch["images"]).shape[1:]) == (3, 32, 32)
    evals = next(iter(pipeline.eval_loader(splits.val)))
    assert "finish" not in evals and tuple(evals["images"].shape[1:]) == (
        3,
        32,
        32,
    )  # eval: centre crop, host


def test_a_failing_torch_compile_says_why_in_one_line_and_trains_eagerly(monkeypatch, capsys):
    from resnetcls.engine import prepare
    from resnetcls.engine.loop import StepContext

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("Inductor: no working C++ compiler found\nlong details")

    monkeypatch.setattr(torch, "compile", lambda module: Broken())
    model = nn.Linear(3, 2)
    step_model = prepare.wrap_model(model, StepContext(torch.device("cpu")), False, True)
    x = torch.randn(4, 3)
    assert torch.equal(step_model(x), model(x)) and torch.equal(step_model(x), model(x))
    err = capsys.readouterr().err
    assert (
        err.count("torch.compile failed") == 1 and "no working C++ compiler found); training eagerly" in err
    )
    assert "long details" not in err
