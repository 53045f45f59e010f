"""Checkpoints: atomic, loadable without unpickling code, keep-last-K plus best, recording config and
versions."""

import json

import torch

from resnetcls.engine.checkpoint import load_latest, prune_checkpoints, save_checkpoint


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
    assert warnings == [
        f"warning: skipping {tmp_path / 'step-00000002.pt'}: incomplete checkpoint "
        f"(no valid step-00000002.json)"
    ]


def test_keep_last_k_plus_best(tmp_path):
    for step, top1 in [(1, 0.5), (2, 0.9), (3, 0.6), (4, None), (5, 0.7), (6, None)]:
        save_checkpoint(
            tmp_path,
            {"global_step": step},
            {"global_step": step, "metrics": None if top1 is None else {"val_top1": top1}},
        )
    prune_checkpoints(tmp_path, keep_last=2, metric="val_top1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"step-0000000{s}.{ext}" for s in (2, 5, 6) for ext in ("json", "pt")
    ]


def test_run_directory_and_checkpoints_record_config_versions_and_commit(tiny_run):
    env = json.loads((tiny_run / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and "torchvision" in env and "python" in env
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    metas = [json.loads(p.read_text()) for p in sorted((tiny_run / "checkpoints").glob("step-*.json"))]
    assert [m["epoch"] for m in metas] == [2, 3]  # both epoch ends kept (keep_last=3)
    state = torch.load(tiny_run / "checkpoints" / metas[-1]["file"], weights_only=True)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "ema",
        "epoch",
        "step_in_epoch",
        "sampler",
        "rng",
    ):
        assert key in state
    assert state["config"]["model"]["width"] == 8 and state["env"]["git_commit"] == env["git_commit"]
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
