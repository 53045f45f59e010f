"""The raced auto recipe (engine/race.py): which candidates race, how long each rung is, and `train --time`
running the race, picking a winner deterministically, resuming an interrupted race, recording every score."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from resnetcls.config import build_config, dump_yaml, explicit_settings
from resnetcls.engine import plan as plan_module
from resnetcls.engine import race, recipe
from resnetcls.engine import train as train_module
from resnetcls.engine.plan import TrainRequest, make_plan
from resnetcls.engine.race import Entry, plan_race, race_candidates, rung_steps, smaller_size
from resnetcls.engine.recipe_choice import IMBALANCED, DataFacts
from resnetcls.engine.runner import StopRequest, TrainingInterrupted
from resnetcls.engine.train import saved_run_config
from resnetcls.errors import UserError
from tests.conftest import make_class_folders, run_cli

HEAVY_RUN = {**race.HEAVY, "data.image_size": 128}
SMALL = DataFacts(720, 80, 12, 224, 256)
STEP_S, VAL_S = 0.1, 0.05  # the fake machine: every candidate's step and validation, no checkpoint time


def names(entries: list[Entry]) -> list[str]:
    return [entry.name for entry in entries]


def test_small_data_races_both_augmentations_at_two_resolutions_the_rules_choice_first():
    entries, why = race_candidates(HEAVY_RUN, {}, SMALL)
    assert names(entries) == ["heavy 128px", "light 128px", "heavy 96px", "light 96px"] and why == ""
    assert entries[1].values == {**race.LIGHT, "data.image_size": 128}


def test_given_flags_remove_their_dimension():
    entries, why = race_candidates(HEAVY_RUN, {"data.image_size": 128}, SMALL)
    assert names(entries) == ["heavy 128px", "light 128px"] and why == "image size given"
    entries, why = race_candidates(HEAVY_RUN, {"data.mixup": 0.2}, SMALL)
    assert names(entries) == ["heavy 128px", "heavy 96px"] and why == "augmentation given"
    both = {"data.augment": "trivialaugment", "data.image_size": 128}
    assert names(race_candidates(HEAVY_RUN, both, SMALL)[0]) == ["heavy 128px"]


def test_many_images_a_class_race_only_the_resolution_and_small_sizes_only_the_augmentation():
    light_run = {**race.LIGHT, "data.image_size": 224}
    entries, why = race_candidates(light_run, {}, DataFacts(50_000, 5000, 10, 300, 256))
    assert names(entries) == ["light 224px", "light 160px"] and why.startswith("5000 images a class")
    assert names(race_candidates({**race.HEAVY, "data.image_size": 32}, {}, SMALL)[0]) == [
        "heavy 32px",
        "light 32px",
    ]
    assert [smaller_size(size) for size in (224, 160, 128, 64, 48, 32)] == [160, 112, 96, 48, 32, 32]


def measured(count: int, step_s: float = STEP_S, val_s: float = VAL_S) -> list[Entry]:
    sizes = [(f"c{i}", {"data.image_size": 32}) for i in range(count)]
    return [Entry(name, values, step_s * (1 + i), val_s, 0.01, 4) for i, (name, values) in enumerate(sizes)]


def worst_race_seconds(entries: list[Entry], rungs: list[int]) -> float:
    """The race's time with every survivor of the later rungs as slow as the slowest candidate."""
    total = sum(rungs[0] * entry.step_s + entry.val_s + entry.save_s for entry in entries)
    slowest = max(entry.step_s for entry in entries), max(entry.val_s + entry.save_s for entry in entries)
    alive, done = len(entries) // 2, rungs[0]
    for target in rungs[1:]:
        total += alive * ((target - done) * slowest[0] + slowest[1])
        alive, done = max(1, alive // 2), target
    return total


@pytest.mark.parametrize("count, share_s", [(4, 6.0), (4, 30.0), (2, 1.0), (2, 7.5), (3, 5.0)])
def test_the_rungs_double_and_fit_the_share_even_when_the_slowest_survive(count, share_s):
    entries = measured(count)
    rungs = rung_steps(entries, share_s)
    assert rungs[0] >= race.MIN_RUNG_STEPS and all(b == 2 * a for a, b in zip(rungs, rungs[1:], strict=False))
    assert len(rungs) == (2 if count == 4 else 1)
    assert worst_race_seconds(entries, rungs) <= share_s
    longer = [step // rungs[0] * (rungs[0] + 1) for step in rungs]
    assert worst_race_seconds(entries, longer) > share_s  # the longest first rung that fits


def test_a_short_share_drops_the_resolution_then_the_race():
    fit = {"image_size": 32, "progressive": 0.0}
    assert len(plan_race(measured(4), 20.0, 0.2, 0.0, fit).entries) == 4
    two = plan_race(measured(4), 5.0, 0.2, 0.0, fit)  # 1 s: 4 candidates get under 2 steps, 2 get more
    assert names(two.entries) == ["c0", "c1"] and two.rungs == [2]
    assert plan_race(measured(4), 3.0, 0.2, 0.0, fit) is None


def test_each_candidate_plans_its_schedule_for_the_budget_left_plus_its_own_race_steps():
    race_plan = plan_race(measured(2), 20.0, 0.25, 1.0, {"image_size": 32, "progressive": 0.0})
    first, second = race_plan.entries
    assert race_plan.share_s == 5.0 and race_plan.setup_s == 1.0
    # 14 s after the race plus its own race steps, in epochs of 4 steps, a validation and a checkpoint
    assert first.epochs == round((14 + race_plan.rungs[-1] * 0.1) / (4 * 0.1 + 0.05 + 0.01))
    assert second.epochs < first.epochs  # the slower candidate fits fewer epochs


@pytest.fixture
def photos(tmp_path_factory) -> Path:
    """Three colour classes at 64 px, so the recipe's 48 px and the raced 32 px both apply."""
    classes = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
    return make_class_folders(tmp_path_factory.mktemp("race") / "data", classes, size=64)


@pytest.fixture
def fake_machine(monkeypatch):
    """The real rules at a test model's scale (width 8, 48 px on a CPU), and a machine that measures the
    same fake speed for every candidate with no set-up time, so the race's plan is the same every time."""
    monkeypatch.setattr(
        recipe,
        "RULES",
        tuple(dataclasses.replace(rule, width=8, image_size=48, cpu_image_size=48) for rule in recipe.RULES),
    )
    monkeypatch.setattr(recipe, "MIN_SIZE", 32)
    monkeypatch.setattr(plan_module, "measure_speed", lambda *args: (STEP_S, VAL_S, 0.0))
    monkeypatch.setattr(plan_module, "time", SimpleNamespace(perf_counter=lambda: 0.0))
    monkeypatch.setenv("RESNETCLS_OFFLINE", "1")


@pytest.fixture
def imbalanced(tmp_path_factory) -> Path:
    """Red with ten times the images of blue and green (40, 4, 4) at 64 px."""
    root = tmp_path_factory.mktemp("imbalanced") / "data"
    make_class_folders(root, {"red": (220, 30, 30)}, per_class=40, size=64)
    return make_class_folders(root, {"blue": (20, 40, 220), "green": (30, 200, 40)}, per_class=4, size=64)


CPU = ["--device", "cpu", "--set", "data.num_workers=0", "--set", "log.tensorboard=false"]
RACE = ["--time", "4s", "--set", "train.race_share=0.5", *CPU]  # 2 s of race: rungs of 2 and 4 steps


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def finished(run: Path) -> dict:
    """What a raced run leaves: race.json, the race record, config.yaml, the epochs, the summary."""
    saved = json.loads((run / "race.json").read_text())
    recs = records(run)
    record = next(r for r in recs if r["kind"] == "race")
    config = yaml.safe_load((run / "config.yaml").read_text())
    epochs = [r["epoch"] for r in recs if r["kind"] == "epoch"]
    losses = [r["val/loss"] for r in recs if r["kind"] == "epoch"]
    assert recs[-1]["kind"] == "summary" and (run / "final" / "model.json").is_file()
    return {"race": saved, "record": record, "config": config, "epochs": epochs, "losses": losses}


def test_the_race_picks_a_winner_deterministically_and_a_stopped_race_resumes_to_the_same_end(
    photos, tmp_path, fake_machine, monkeypatch
):
    """One race run through; the same race stopped after its first rung (what a kill then leaves: race.json
    with the first rung's scores, no checkpoint of the run's own) and resumed: the same scores, winner,
    config and epochs."""
    whole = run_cli("train", photos, *RACE, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    (tmp_path / "whole.log").write_text(whole.stderr)
    done = finished(tmp_path / "whole")
    real, calls = race.run_rung, []

    def stop_after_the_first_rung(plan, entry, target, hooks):
        calls.append(target)
        if len(calls) > 4:
            raise TrainingInterrupted(str(plan.run_dir))
        return real(plan, entry, target, hooks)

    monkeypatch.setattr(race, "run_rung", stop_after_the_first_rung)
    run = tmp_path / "cut"
    assert run_cli("train", photos, *RACE, "--out", run).returncode == 130
    saved = json.loads((run / "race.json").read_text())
    assert len(saved["scores"]) == 1 and saved["winner"] == "" and not (run / "checkpoints").exists()
    monkeypatch.setattr(race, "run_rung", real)
    resumed = run_cli("train", "--resume", run, *CPU)
    assert resumed.returncode == 0, resumed.stderr
    cut = finished(run)
    assert cut["race"] == {**done["race"], "seconds": cut["race"]["seconds"]}  # the same scores and winner
    assert cut["config"]["train"] == done["config"]["train"] and cut["epochs"] == done["epochs"]
    assert cut["losses"] == done["losses"]  # the winner's run itself is the same, to the last digit
    assert cut["config"]["data"] == {**done["config"]["data"], "train": cut["config"]["data"]["train"]}
    check_the_race(done, whole.stderr, tmp_path / "whole")


def test_a_race_stopped_without_out_is_found_by_resume_latest_and_resume_auto(
    photos, tmp_path, fake_machine, monkeypatch
):
    """A run without --out stopped during its race (race.json, no checkpoint of the run's own): --resume
    latest continues that race in runs/train, and so does `train DATA --resume auto`, to its end; no new run
    folder is made."""
    real, calls, stop_after = race.run_rung, [], [4]

    def stopped_by_a_kill(plan, entry, target, hooks):
        calls.append(target)
        if len(calls) > stop_after[0]:
            raise TrainingInterrupted(str(plan.run_dir))
        return real(plan, entry, target, hooks)

    monkeypatch.setattr(race, "run_rung", stopped_by_a_kill)
    assert run_cli("train", photos, *RACE, cwd=tmp_path).returncode == 130  # after the first rung
    run = tmp_path / "runs" / "train"
    assert [len(rung) for rung in json.loads((run / "race.json").read_text())["scores"]] == [4]
    assert not (run / "checkpoints").exists()
    stop_after[0] = len(calls) + 1  # the next run scores one candidate of the second rung, then is killed
    latest = run_cli("train", "--resume", "latest", *CPU, cwd=tmp_path)
    assert latest.returncode == 130, latest.stderr
    assert [len(rung) for rung in json.loads((run / "race.json").read_text())["scores"]] == [4, 1]
    monkeypatch.setattr(race, "run_rung", real)
    auto = run_cli("train", photos, *RACE, "--resume", "auto", cwd=tmp_path)
    assert auto.returncode == 0, auto.stderr
    assert "starting a new run" not in auto.stderr and "run folder" not in auto.stderr
    resumed = (
        f"resuming {Path('runs', 'train', 'race')}"  # a candidate of the second rung, from its checkpoint
    )
    assert resumed in auto.stderr and "race: heavy 48px" in auto.stderr
    saved = finished(run)["race"]
    assert [len(rung) for rung in saved["scores"]] == [4, 2] and saved["winner"] in saved["scores"][1]
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["latest", "train"]


def check_the_race(done: dict, stderr: str, run: Path) -> None:
    """Every candidate's score in the race line, race.json and metrics.jsonl; the winner's values as the
    run's config; its race epochs kept (the run's epochs count on from them)."""
    saved = done["race"]
    assert saved["rungs"] == [2, 4] and saved["share_s"] == 2.0
    assert [entry["name"] for entry in saved["entries"]] == [
        "heavy 48px",
        "light 48px",
        "heavy 32px",
        "light 32px",
    ]
    assert (
        len(saved["scores"][0]) == 4
        and len(saved["scores"][1]) == 2
        and saved["winner"] in saved["scores"][1]
    )
    assert [len(rung) for rung in saved["losses"]] == [4, 2]
    line = next(text for text in stderr.splitlines() if text.startswith("race: "))
    for entry in saved["entries"]:
        assert f"{entry['name']} {saved['scores'][0][entry['name']]:.1%}" in line or entry["name"] in line
    assert line.split(" -> ")[1].startswith(saved["winner"])
    assert done["record"]["scores"] == saved["scores"] and done["record"]["winner"] == saved["winner"]
    winner = next(entry for entry in saved["entries"] if entry["name"] == saved["winner"])
    assert done["config"]["data"]["image_size"] == winner["values"]["data.image_size"]
    assert done["config"]["data"]["augment"] == winner["values"]["data.augment"]
    assert done["config"]["train"]["epochs"] == winner["epochs"]
    assert done["epochs"] == list(range(1, winner["epochs"] + 1))  # its race epochs kept, not restarted
    for entry in saved["entries"]:
        assert (run / "race" / entry["name"].replace(" ", "-") / "config.yaml").is_file()
    assert "<h2>Recipe race</h2>" in (run / "report.html").read_text()


def plan_for(data: Path, out: Path, *settings: str, **flags) -> TrainRequest:
    keys = {"data.train": str(data), "train.time_budget": "4s", **flags}
    settings = ("data.num_workers=0", "log.tensorboard=false", "train.device=cpu", *settings)
    cfg = build_config(None, list(settings), keys)
    return make_plan(TrainRequest(cfg, out, explicit=explicit_settings(None, list(settings), keys)))


def test_the_plan_races_only_what_is_left_open_and_nothing_without_its_share_or_the_recipe(
    photos, tmp_path, fake_machine
):
    plan = plan_for(photos, tmp_path / "r", "train.race_share=0.5")
    assert names(plan.race.entries) == ["heavy 48px", "light 48px", "heavy 32px", "light 32px"]
    assert plan.decision("race").lines[0].startswith("auto recipe race: heavy 48px, light 48px")
    assert plan.decision("time_budget") is None
    sized = plan_for(photos, tmp_path / "r", "train.race_share=0.5", **{"data.image_size": 48})
    assert names(sized.race.entries) == ["heavy 48px", "light 48px"]
    for off in ("train.race_share=0", "train.auto_recipe=false"):
        plan = plan_for(photos, tmp_path / "r", off)
        assert plan.race is None and plan.decision("race") is None and plan.decision("time_budget")
    assert plan_for(photos, tmp_path / "r", **{"train.time_budget": ""}).race is None
    short = plan_for(photos, tmp_path / "r", "train.race_share=0.05")  # 0.2 s: not 2 steps for 2 candidates
    assert short.race is None and short.decision("race") is None
    assert short.decision("time_budget").lines[1] == (
        "auto recipe race: none (4 candidates would get under 2 steps each in train.race_share=0.05 of the "
        "budget)"
    )
    assert not (tmp_path / "r").exists()  # the plan writes nothing


def test_a_planted_imbalance_is_balanced_by_the_recipe_so_the_race_leaves_the_class_balance_alone(
    photos, imbalanced, tmp_path, fake_machine
):
    plan = plan_for(imbalanced, tmp_path / "r", "train.race_share=0.5")
    assert plan.cfg.data.sampler == "balanced"  # the auto recipe's class balance, in every candidate
    assert names(plan.race.entries) == ["heavy 48px", "light 48px", "heavy 32px", "light 32px"]
    assert plan.decision("recipe").record["imbalance"] > IMBALANCED
    for fixed in ("data.sampler=shuffle", "loss.class_weights=balanced"):
        plan = plan_for(imbalanced, tmp_path / "r", "train.race_share=0.5", fixed)
        assert names(plan.race.entries) == ["heavy 48px", "light 48px", "heavy 32px", "light 32px"]
    assert plan_for(photos, tmp_path / "r", "train.race_share=0.5").cfg.data.sampler == "shuffle"


def test_a_raced_run_on_imbalanced_data_keeps_the_recipes_balanced_sampler_through_a_resume(
    imbalanced, tmp_path, fake_machine, monkeypatch
):
    """The smaller size made to win: the run's config.yaml keeps the recipe's data.sampler=balanced with the
    winner's settings, and the run stopped after the race resumes from `train DATA --resume auto` to its
    end."""
    real_rung, real_epochs = race.run_rung, train_module.train_epochs

    def small_wins(plan, entry, target, hooks):
        real_rung(plan, entry, target, hooks)
        return (1.0, 0.0) if entry.name == "heavy 32px" else (0.0, 1.0)

    def killed_after_the_race(run, on_epoch):
        if race.RACE_DIR not in run.run_dir.parts:
            raise TrainingInterrupted(str(run.run_dir))
        return real_epochs(run, on_epoch)

    monkeypatch.setattr(race, "run_rung", small_wins)
    monkeypatch.setattr(train_module, "train_epochs", killed_after_the_race)
    run = tmp_path / "run"
    stopped = run_cli("train", imbalanced, *RACE, "--out", run)
    assert stopped.returncode == 130, stopped.stderr
    assert "-> heavy 32px" in stopped.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert (saved["sampler"], saved["image_size"]) == ("balanced", 32)
    monkeypatch.setattr(train_module, "train_epochs", real_epochs)
    resumed = run_cli("train", imbalanced, *RACE, "--out", run, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    done = finished(run)
    assert done["race"]["winner"] == "heavy 32px" and done["config"]["data"]["sampler"] == "balanced"


def test_a_race_under_way_resumes_from_race_json_and_refuses_changed_settings(photos, tmp_path, fake_machine):
    """What a race stopped before its first rung ended leaves (config.yaml, race.json, no checkpoint of the
    run's own): its plan is the saved race, measured again nowhere; a changed setting is refused."""
    run = tmp_path / "r"
    planned = plan_for(photos, run, "train.race_share=0.5")
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(planned.cfg))
    (run / "race.json").write_text(json.dumps(planned.race.to_dict()))
    cfg = build_config(None, [], {}, base=saved_run_config(run))
    resumed = make_plan(TrainRequest(cfg, run, resume=str(run)))
    assert resumed.race.to_dict() == planned.race.to_dict() and resumed.resumed is None
    assert resumed.decision("race").why.startswith("the race resumes") and not resumed.decision("time_budget")
    changed = build_config(None, ["train.seed=3"], {}, base=saved_run_config(run))
    with pytest.raises(UserError, match=r"refusing to resume the race .*train.seed: 0 -> 3"):
        make_plan(TrainRequest(changed, run, resume=str(run)))
    with pytest.raises(UserError, match=r"holds a recipe race \(race.json\); continue it with --resume auto"):
        plan_for(photos, run, "train.race_share=0.5")  # a new run into it


def test_a_rung_stops_at_its_step_target_and_ctrl_c_names_the_race_to_resume(tmp_path):
    state = SimpleNamespace(global_step=3)
    stop = race.RungStop(state, 4, tmp_path)
    assert not stop.requested and not stop.at_target() and not stop.signalled()
    state.global_step = 4
    assert stop.requested and stop.at_target() and not stop.signalled()
    stop.requested = True  # what SIGINT/SIGTERM set
    assert stop.signalled() and not stop.at_target() and stop.resume_dir == tmp_path
    assert not StopRequest().at_target() and StopRequest().resume_dir is None  # a plain run's stop
