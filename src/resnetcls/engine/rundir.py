"""Where a `train` run goes when no --out is given, and what --resume latest and --resume auto mean then.

Each such run gets a new folder under runs/: runs/train, runs/train-2, runs/train-3, ... (the first name not
taken), and runs/latest is a symlink to the newest of them, pointed once the plan is accepted and the folder
made (a refused plan leaves neither). A run with an explicit --out never moves runs/latest. Where a symlink
cannot be made (Windows without the privilege, a file system that refuses them), one line says so and there
is no runs/latest; a real folder named runs/latest (a run written there with --out runs/latest) is left as it
is, with one line saying that runs/latest cannot point to the new run until it is renamed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .race import RACE_FILE

RUNS = Path("runs")  # relative to the working directory, as --out is
LATEST = "latest"
FIRST_NAME = "train"


def next_run_dir(runs: Path = RUNS) -> Path:
    """The first free folder of runs/train, runs/train-2, runs/train-3, ... (nothing is made)."""
    number, name = 1, FIRST_NAME
    while (runs / name).exists() or (runs / name).is_symlink():
        number += 1
        name = f"{FIRST_NAME}-{number}"
    return runs / name


def point_latest(run_dir: Path, say: Callable[[str], None]) -> bool:
    """Make run_dir's sibling `latest` a symlink to it (by its name, so the folder can be moved with its
    parent), replacing an older link in one rename; True when it points there. A real folder or file named
    latest is never touched, and a file system that refuses symlinks gets no latest: one line each."""
    latest = run_dir.parent / LATEST
    if latest.exists() and not latest.is_symlink():
        say(
            f"note: {latest} is a run folder of its own, left as it is; rename it so that {latest} can "
            f"point to the newest run ({run_dir})"
        )
        return False
    staged = run_dir.parent / f".{LATEST}-{os.getpid()}"
    try:
        if staged.is_symlink():
            staged.unlink()
        os.symlink(run_dir.name, staged, target_is_directory=True)
        os.replace(staged, latest)
    except OSError as e:
        if staged.is_symlink():
            staged.unlink()
        say(
            f"note: no {latest} (this file system refused a symlink: {e.strerror or e}); the run is {run_dir}"
        )
        return False
    return True


def latest_run(runs: Path = RUNS) -> Path | None:
    """The run folder runs/latest points to (runs/NAME), runs/latest itself when it is a real folder, or None
    when there is none."""
    latest = runs / LATEST
    if latest.is_symlink():
        target = runs / os.readlink(latest)
        return target if target.is_dir() else None
    return latest if latest.is_dir() else None


def resolve_latest(runs: Path = RUNS) -> Path:
    """--resume latest: the newest run folder, or a UserError saying there is none."""
    found = latest_run(runs)
    if found is None:
        raise UserError(
            f"--resume latest: {runs / LATEST} points to no run folder (a `train` without --out makes it); "
            "give the run folder instead"
        )
    return found


def unfinished(run_dir: Path) -> bool:
    """Whether run_dir holds a checkpoint, or a recipe race under way (RUN/race.json, engine/race.py: no
    checkpoint of the run's own until the winner's is copied in), and no end-of-run summary (metrics.jsonl):
    a run to continue."""
    started = any((run_dir / "checkpoints").glob("step-*.json")) or (run_dir / RACE_FILE).is_file()
    if not started:
        return False
    metrics = run_dir / "metrics.jsonl"
    text = metrics.read_text(encoding="utf-8", errors="replace") if metrics.is_file() else ""
    return '"kind": "summary"' not in text


def where_to_train(
    out: str | None, resume: str | None, say: Callable[[str], None]
) -> tuple[str | None, str | None]:
    """(out, resume) as the engine takes them, out None meaning a new folder runs/train-N. --resume latest is
    the run folder runs/latest points to; --resume auto without --out continues that run when it is unfinished
    (a race under way included) and starts a new one otherwise (one line says so). An explicit --out is kept
    as it is."""
    if resume == LATEST:
        return None, str(resolve_latest())
    if out is not None or resume != "auto":
        return out, resume
    found = latest_run()
    if found is not None and unfinished(found):
        return str(found), "auto"
    say(f"--resume auto: no unfinished run at {RUNS / LATEST}; starting a new run")
    return None, None


def open_run_folder(run_dir: Path, named: bool, say: Callable[[str], None]) -> None:
    """Make the run folder; for a run named here (no --out), point runs/latest to it and say where it is."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if named:
        linked = point_latest(run_dir, say)
        say(f"run folder {run_dir}" + (f" ({run_dir.parent / LATEST} points to it)" if linked else ""))
