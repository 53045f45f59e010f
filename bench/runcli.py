"""What the bench scripts that train through the command line share: run `resnetcls` as a user would, and
read the summary a run wrote. Imported by scripts run as `python bench/NAME.py` (their folder is on the path).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def resnetcls(*args: str, env: dict | None = None) -> tuple[float, str]:
    """Run the CLI (in env, default this process's environment); (wall seconds, stderr). Exits with its
    message if it fails."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "resnetcls", *args], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        sys.exit(f"resnetcls {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, result.stderr


def summary_of(run_dir: Path) -> dict:
    """The last "summary" record of a run's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "summary"][-1]
