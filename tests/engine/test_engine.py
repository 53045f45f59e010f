"""Engine pieces a user relies on: checkpoints, sampler, schedules, losses, accumulation, EMA."""
import json
import os
import shutil

import pytest
import torch
from torch import nn

from resnetcls.config import SchedConfig
from resnetcls.data.sampler import ResumableSampler
from resnetcls.engine.checkpoint import load_latest, prune_checkpoints, save_checkpoint
from resnetcls.engine.loop import EpochStats, Optimization, StepContext, train_one_epoch
from resnetcls.engine.optim import SigmoidOneHotLoss, build_ema, build_scheduler, class_weights
from tests.conftest import TINY, run_cli


def test_checkpoint_roundtrip_loads_without_unpickling_code(tmp_path):
    state = {"global_step": 5, "model": {"w": torch.arange(3.0)}, "rng": torch.get_rng_state(), "x": (1, "a")}
    pt = save_checkpoint(tmp_path, state, {"global_step": 5})
    assert torch.load(pt, weights_only=True)["model"]["w"].tolist() == [0.0, 1.0, 2.0]
    loaded, meta = load_latest(tmp_path, print)
    assert loaded["global_step"] == 5 and meta["file"] == pt.name and len(meta["sha256"]) == 64
    assert not list(tmp_path.glob("*.tmp"))


def test_partial_checkpoint_without_description_is_skipped_with_warning(tmp_path):
    save_checkpoint(tmp_path, {"global_step": 1}, {"global_step": 1})
    save_checkpoint(tmp_path, {"global_step": 2}, {"global_step": 2})
    (tmp_path / "step-00000002.json").unlink()  # killed between the two renames
    warnings = []
    state, _ = load_latest(tmp_path, warnings.append)
    assert state["global_step"] == 1
    assert warnings == [f"warning: skipping {tmp_path / 'step-00000002.pt'}: incomplete checkpoint "
                        f"(no valid step-00000002.json)"]


def test_keep_last_k_plus_best(tmp_path):
    for step, top1 in [(1, 0.5), (2, 0.9), (3, 0.6), (4, None), (5, 0.7), (6, None)]:
        save_checkpoint(tmp_path, {"global_step": step},
                        {"global_step": step, "metrics": None if top1 is None else {"val_top1": top1}})
    prune_checkpoints(tmp_path, keep_last=2, metric="val_top1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"step-0000000{s}.{ext}" for s in (2, 5, 6) for ext in ("json", "pt")]


def test_sampler_resumes_at_the_exact_sample_and_seeds_each_sample():
    sampler = ResumableSampler(list(range(10)) * 3, "shuffle", seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, position=7)
    rest = list(sampler)
    assert rest == whole[7:] and [i.seed for i in rest] == [i.seed for i in whole[7:]]
    sampler.set_epoch(3)
    assert sorted(sampler) == sorted(whole) and list(sampler) != whole  # a new order each epoch


def test_balanced_sampler_draws_rare_classes_as_often():
    labels = [0] * 900 + [1] * 100
    sampler = ResumableSampler(labels, "balanced", seed=0)
    drawn = torch.tensor([labels[i] for i in sampler])
    assert len(drawn) == 1000 and 400 < int((drawn == 1).sum()) < 600


def test_epoch_interval_schedule_changes_only_at_epoch_boundaries():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, SchedConfig(name="cosine", interval="epoch", warmup_epochs=0), 4, 3)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert len(set(lrs[0:4])) == len(set(lrs[4:8])) == len(set(lrs[8:12])) == 1
    assert lrs[0] > lrs[4] > lrs[8]


def test_balanced_class_weights_and_weighted_bce():
    w = class_weights([0, 0, 0, 1], 2, "balanced")
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    logits, target = torch.tensor([[2.0, -1.0], [0.5, 0.3]]), torch.tensor([0, 1])
    weighted = SigmoidOneHotLoss(2, weight=torch.tensor([1.0, 3.0]))(logits, target)
    per_sample = nn.functional.binary_cross_entropy_with_logits(
        logits, nn.functional.one_hot(target, 2).float(), reduction="none").sum(1)
    assert float(weighted) == pytest.approx(float((per_sample[0] + 3 * per_sample[1]) / 4))


def _linear_run(batches, accum):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = Optimization(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                       torch.amp.GradScaler("cpu", enabled=False), build_ema(model, 0.5), accum)
    stats = EpochStats()
    train_one_epoch(model, batches, opt, nn.CrossEntropyLoss(), StepContext(torch.device("cpu"), None, False),
                    stats, lambda s: False)
    return model, opt, stats


def test_gradient_accumulation_equals_one_large_batch():
    torch.manual_seed(1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    big = [{"images": x[i:i + 8], "labels": y[i:i + 8], "bad": []} for i in (0, 8)]
    small = [{"images": x[i:i + 4], "labels": y[i:i + 4], "bad": []} for i in range(0, 16, 4)]
    m_big, _, s_big = _linear_run(big, accum=1)
    m_small, opt, s_small = _linear_run(small, accum=2)
    assert s_big.steps == s_small.steps == 2 and s_small.batches == 4
    assert torch.allclose(m_big.weight, m_small.weight, atol=1e-6)
    # The EMA moved toward the trained weights but is not them.
    assert not torch.equal(opt.ema.module.weight, m_small.weight)


def test_resume_with_changed_result_affecting_setting_is_refused_unless_forced(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = run_cli("train", "--resume", run, "--batch-size", "8")
    assert result.returncode == 2
    assert "refusing to resume" in result.stderr and "train.batch_size: 16 -> 8" in result.stderr
    result = run_cli("train", "--resume", run, "--batch-size", "8", "--force")
    assert result.returncode == 0, result.stderr
    assert "warning: resuming with a changed setting (--force): train.batch_size: 16 -> 8" in result.stderr


def test_resume_from_another_working_directory_finds_the_data(tiny_data, tmp_path):
    """DATA typed as a relative path is recorded as an absolute one: the run directory alone is enough to
    continue from anywhere."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    shutil.copytree(tiny_data, here / "photos")
    elsewhere.mkdir()
    first = run_cli("train", "photos", *TINY, "--epochs", "1", "--out", "run", cwd=here)
    assert first.returncode == 0, first.stderr
    assert str(here / "photos") in (here / "run" / "config.yaml").read_text()
    again = run_cli("train", "--resume", here / "run", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr and "error" not in again.stderr


def test_new_run_into_a_run_directory_with_checkpoints_is_refused(tiny_run, tiny_data):
    result = run_cli("train", tiny_data, "--out", tiny_run)
    assert result.returncode == 2 and "--resume auto" in result.stderr


def test_run_directory_and_checkpoints_record_config_versions_and_commit(tiny_run):
    env = json.loads((tiny_run / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and "torchvision" in env and "python" in env
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    metas = [json.loads(p.read_text()) for p in sorted((tiny_run / "checkpoints").glob("step-*.json"))]
    assert [m["epoch"] for m in metas] == [2, 3]  # both epoch ends kept (keep_last=3)
    state = torch.load(tiny_run / "checkpoints" / metas[-1]["file"], weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "ema", "epoch", "step_in_epoch", "sampler", "rng"):
        assert key in state
    assert state["config"]["model"]["width"] == 8 and state["env"]["git_commit"] == env["git_commit"]
    assert set(state["rng"]) >= {"python", "numpy", "torch"}


def test_live_progress_bar_on_a_terminal_and_bf16_autocast(tiny_data, tmp_path):
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal's size
    proc = subprocess.Popen([sys.executable, "-m", "resnetcls", "train", str(tiny_data), "--model", "resnet18",
                             "--image-size", "32", "--batch-size", "4", "--epochs", "1", "--set", "model.width=8",
                             "--set", "data.num_workers=0", "--set", "log.tensorboard=false",
                             "--set", "train.amp=bf16", "--out", str(tmp_path / "r")],
                            stderr=follower, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=300) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "cpu bf16 channels_last" in text
    bar = [part for part in text.split("\r") if "epoch 1/1:" in part and "step" in part]
    assert bar and "img/s" in bar[-1] and "data wait" in bar[-1] and "lr " in bar[-1] and "<" in bar[-1]
