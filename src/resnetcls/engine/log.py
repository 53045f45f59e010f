"""Run logging: one line per epoch on stderr, metrics.jsonl, and TensorBoard scalars under train/ and val/."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class RunLogger:
    """Writes every logged record to metrics.jsonl and TensorBoard; prints epoch lines to stderr."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import
            self.writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, record: dict, step: int) -> None:
        """record: {"kind": "train"|"val"|"epoch"|..., "epoch": .., numbers...}."""
        record = {"time": round(time.time(), 3), "step": step, **record}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in record.items():
                if "/" in key and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def info(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()
