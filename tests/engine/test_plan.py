"""engine/plan.py: every refusal comes before anything is written or decoded, every automatic choice is made
once and listed with why, and config.yaml is written once, with the choices in it."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import resnetcls
from resnetcls.config import build_config, explicit_settings
from resnetcls.engine import plan as plan_module
from resnetcls.engine import prepare, recipe
from resnetcls.engine.plan import TrainRequest, make_plan
from resnetcls.engine.train import saved_run_config
from tests.conftest import TINY, run_cli

CHOSEN_BY_PLAN = [a for a in TINY if a not in ("--batch-size", "16")]  # the batch size left to the plan


def files_under(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


REFUSALS = {
    "an unknown model, before the cache is built": (
        ["--model", "resnet-18", "--time", "1s"],
        "unknown model 'resnet-18'",
    ),
    "an unknown model, before the LR range test decodes": (
        ["--model", "resnet-18", "--lr", "auto"],
        "unknown model 'resnet-18'",
    ),
    "a value out of range": (["--set", "train.batch_size=0", "--time", "1s"], "train.batch_size"),
    "pretrained weights that are not there": (
        ["--pretrained", "missing-weights.pt", "--time", "1s"],
        "missing-weights.pt: no such file",
    ),
    "an unknown device": (["--device", "tpu", "--time", "1s"], "--device 'tpu'"),
}


@pytest.mark.parametrize("flags, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_refused_plan_leaves_no_run_directory_and_builds_no_cache(tiny_data, tmp_path, flags, message):
    work = tmp_path / "work"
    work.mkdir()
    cache = tmp_path / "cache"
    out = work / "run"
    args = ["train", tiny_data, *CHOSEN_BY_PLAN, *flags, "--set", f"data.cache_dir={cache}", "--out", out]
    result = run_cli(*args, cwd=work)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not cache.exists()  # nothing decoded
    assert files_under(work) == {}  # no run directory, no probe left behind


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_cuda_on_a_machine_without_a_gpu_leaves_no_run_directory(tiny_data, tmp_path):
    result = run_cli("train", tiny_data, *TINY, "--device", "cuda", "--out", tmp_path / "run")
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_data_leaves_no_run_directory(tmp_path):
    result = run_cli("train", tmp_path / "nowhere", *TINY, "--out", tmp_path / "run")
    assert result.returncode == 2 and "nowhere" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_refused_resume_leaves_the_run_directory_as_it_was(tiny_run):
    before = files_under(tiny_run)
    result = run_cli("train", "--resume", tiny_run, "--set", "optim.lr=0.5")
    assert result.returncode == 2 and "refusing to resume" in result.stderr
    assert files_under(tiny_run) == before


def request(data: Path, out: Path, *overrides: str, **flags) -> TrainRequest:
    """What `resnetcls train DATA --set ...` asks, with flags as their config keys (None: not given)."""
    keys = {"data.train": str(data), **flags}
    settings = [
        "model.width=8",
        "data.num_workers=0",
        "log.tensorboard=false",
        "train.auto_recipe=false",
        *overrides,
    ]
    cfg = build_config(None, settings, keys)
    return TrainRequest(cfg, out, batch_auto=True, explicit=explicit_settings(None, settings, keys))


def test_the_plan_lists_each_choice_with_why_and_writes_nothing(tiny_data, tmp_path):
    out = tmp_path / "run"
    flags = {"model.name": "resnet18", "data.image_size": 32, "train.time_budget": "1s"}
    plan = make_plan(request(tiny_data, out, "data.progressive=0.5", **flags))
    names = ["recipe", "batch_size", "time_budget", "precision", "progressive"]
    assert [made.name for made in plan.decisions] == names
    off, batch, budget, precision, progressive = plan.decisions
    assert off.chosen == {} and off.why == "train.auto_recipe=false" and off.record is None
    assert batch.lines[0].startswith(
        f"--batch-size auto: {plan.cfg.train.batch_size} (the most train images/s"
    )
    assert batch.chosen["train.batch_size"] == plan.cfg.train.batch_size and not batch.logged
    assert budget.chosen == {"train.epochs": plan.cfg.train.epochs} and budget.why.startswith("--time 1s")
    assert budget.lines[0].startswith("time budget 1s: measured") and budget.record["kind"] == "time_budget"
    assert precision.chosen["precision"] in ("fp32", "bf16") and precision.why.startswith("train.precision=")
    assert progressive.lines[0].startswith("progressive resizing:")
    assert plan.cfg.data.train == str(tiny_data.absolute()) and len(plan.splits.classes) == 3
    assert not out.exists() and list(tmp_path.iterdir()) == []  # the checkpoint timing's probe is gone


def test_a_resumed_run_keeps_its_choices_measures_nothing_and_its_plan_writes_nothing(tiny_run):
    before = files_under(tiny_run)
    cfg = build_config(None, [], {}, base=saved_run_config(tiny_run))
    plan = make_plan(TrainRequest(cfg, tiny_run, resume=str(tiny_run), batch_auto=False))
    assert [made.name for made in plan.decisions] == ["resume", "precision"]
    assert plan.decisions[0].why == "a resumed run keeps the choices of its config.yaml"
    assert plan.resumed is not None and plan.cfg.train.epochs == 2
    assert files_under(tiny_run) == before


def test_config_yaml_is_written_once_with_the_choices_and_they_are_logged(tiny_data, tmp_path, monkeypatch):
    written = []
    real = prepare.write_text_atomic

    def counting(path, text):
        written.append(Path(path).name)
        return real(path, text)

    monkeypatch.setattr(prepare, "write_text_atomic", counting)
    out = tmp_path / "run"
    run = resnetcls.train(
        tiny_data,
        model="resnet18",
        image_size=32,
        time="1s",
        batch_size="auto",
        out=out,
        set={"model.width": 8, "data.num_workers": 0, "log.tensorboard": False, "train.auto_recipe": False},
        report=False,
    )
    assert written.count("config.yaml") == 1
    saved = yaml.safe_load((out / "config.yaml").read_text())
    budget = next(r for r in run.metrics if r["kind"] == "time_budget")
    assert saved["train"]["epochs"] == budget["epochs"] == run.summary["epochs"]
    assert saved["train"]["batch_size"] in (16, 32, 64, 128)
    assert [r["kind"] for r in run.metrics][:2] == ["time_budget", "cache"]  # logged once, at the start


def test_under_torchrun_every_rank_takes_rank_0s_measured_budget(tiny_data, tmp_path):
    """Two ranks measure their shares; both train the epochs chosen from rank 0's figures (a rank with another
    count would hang in a collective), one budget line is printed, and the probe folder is gone."""
    from tests.engine.test_distributed import run, torchrun

    work = tmp_path / "work"
    work.mkdir()
    out = work / "run"
    result = run(
        torchrun("train", tiny_data, *TINY, "--time", "1s", "--set", "log.tensorboard=false", "--out", out)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = [text for text in result.stderr.splitlines() if text.startswith("time budget 1s:")]
    epochs = yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"]
    assert f"chose {epochs} epochs" in line and f"epoch {epochs}/{epochs} " in result.stderr
    assert [p.name for p in work.iterdir()] == ["run"]


def test_with_the_recipe_on_batch_size_auto_is_listed_as_yours_and_chosen_after_it(
    tiny_data, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(recipe, "measure_images_per_s", lambda *args: 100.0)
    chosen = SimpleNamespace(batch_size=16, grad_accum_steps=1, line="--batch-size auto: 16")
    monkeypatch.setattr(plan_module, "pick_batch_size", lambda *args: chosen)
    keys = {
        "data.train": str(tiny_data),
        "train.device": "cpu",
        "train.batch_size": "auto",
        "train.epochs": 2,
    }
    settings = ["data.num_workers=0"]
    cfg = build_config(None, settings, {k: v for k, v in keys.items() if v != "auto"})
    explicit = explicit_settings(None, settings, keys)
    plan = make_plan(TrainRequest(cfg, tmp_path / "run", batch_auto=True, explicit=explicit))
    assert [made.name for made in plan.decisions][:2] == ["recipe", "batch_size"]
    assert (
        plan.decision("recipe")
        .lines[0]
        .startswith(
            "auto recipe: from you: train.batch_size=auto, train.epochs=2; chosen: resnet18 width 64 at 64 px"
        )
    )
    assert plan.cfg.train.batch_size == 16 and plan.cfg.data.augment == "trivialaugment"
