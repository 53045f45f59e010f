"""Run logging: a live progress bar per epoch on a terminal (one line per epoch otherwise), metrics.jsonl with
every logged value, TensorBoard scalars under train/ and val/, and the console lines (the
opening lines, epoch lines, warnings, the summary: not the progress bar) on stderr and in RUN/train.log."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import time
from pathlib import Path

from ..config import LogConfig
from ..records.tracking import open_trackers
from ..utils.atomic import write_text_atomic
from ..utils.limits import MATRIX_IN_JSON_MAX_CLASSES
from ..utils.progress import progress_enabled

# Records logged at the end of an epoch (plain: "epoch"; lifelong: a task's epoch, a task's results), numbered
# by the epoch they close, so a resumed run drops those it will log again.
EPOCH_KINDS = ("epoch", "task_epoch", "task")


def confusion_field(confusion) -> dict:
    """{"val_confusion": the C x C matrix as lists} for an epoch record up to MATRIX_IN_JSON_MAX_CLASSES
    classes; {} above it (a 1000-class matrix is ~3 MB a line: eval's confusion_matrix.csv holds the final
    one) or without one."""
    if confusion is None or len(confusion) > MATRIX_IN_JSON_MAX_CLASSES:
        return {}
    return {"val_confusion": confusion.tolist()}


class Console:
    """A run's console lines: each printed on stderr at once and appended to RUN/train.log, flushed line by
    line (a killed run keeps every line it printed). Lines said before the run folder exists (the plan's)
    are kept and written first when it is attached."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.file = None

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        if self.file is None:
            self.pending.append(text)
            return
        self.file.write(text + "\n")
        self.file.flush()

    def attach(self, path: Path, resumed: str | None = None) -> None:
        """Append from now on to path; a log that already holds lines gets a separator line first, naming
        the resumption (resumed: what was resumed) or the new run."""
        had_lines = path.is_file() and path.stat().st_size > 0
        self.file = open(path, "a", encoding="utf-8")
        if had_lines:
            when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            what = f"resumed from {resumed}" if resumed else "a new run in this folder"
            self.file.write(f"---- {when}: {what} ----\n")
        for text in self.pending:
            self.file.write(text + "\n")
        self.pending = []
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


CONSOLES: list[Console] = []  # the consoles of the runs under way in this process, innermost last


def say(text: str) -> None:
    """One console line: on stderr, and in the train.log of the run under way (console_log), if any."""
    if CONSOLES:
        CONSOLES[-1].say(text)
    else:
        print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def console_log(enabled: bool = True):
    """The Console that say() writes to while a run is under way (enabled=False: a rank that does not
    write, whose say() still prints)."""
    console = Console()
    if enabled:
        CONSOLES.append(console)
    try:
        yield console
    finally:
        if enabled:
            CONSOLES.remove(console)
        console.close()


class RunLogger:
    """Writes every logged record to metrics.jsonl and TensorBoard; its console lines go through say().

    enabled=False (a non-zero rank under torchrun) makes every method a no-op: one place decides who writes.
    resume_step, resume_epoch: where a resumed run continues. What was logged after that point before a kill
    (and the epoch records of epochs not finished in the checkpoint, and old summaries) is dropped from
    metrics.jsonl and TensorBoard, since it is logged again: curves have no duplicated stretch.
    tracking: log.mlflow / log.wandb (tracking.py): every epoch record and the summary also go to the tracker
    runs (a resumed run continues the ones in tracking.json); precision is one of their tags.
    """

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        resume_step: int | None = None,
        enabled: bool = True,
        resume_epoch: int = 1,
        tracking: LogConfig | None = None,
        precision: str | None = None,
    ) -> None:
        self.run_dir, self.enabled, self.writer, self.jsonl, self.trackers = (
            run_dir,
            enabled,
            None,
            None,
            None,
        )
        if not enabled:
            return
        if tracking is not None:  # first: a missing tracker package stops the run before anything is written
            self.trackers = open_trackers(tracking, run_dir, resume_step is not None, precision)
        path = run_dir / "metrics.jsonl"
        if resume_step is not None and path.is_file():
            _truncate_after(path, resume_step, resume_epoch)
        self.jsonl = open(path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import

            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge)

    def log(self, record: dict, step: int) -> None:
        """record: {"kind": "train"|"epoch"|"summary"|..., "epoch": .., "train/loss": .., "val/top1": ..}."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "step": step, **record}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in record.items():
                if "/" in key and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
        if self.trackers is not None:
            self.trackers.log(record)

    def info(self, text: str) -> None:
        """A console line (stderr and RUN/train.log)."""
        if self.enabled:
            say(text)

    def progress(self, epoch: int, epochs: int, total_steps: int, done_steps: int) -> Progress:
        return Progress(
            f"epoch {epoch}/{epochs}", total_steps, done_steps, live=self.enabled and progress_enabled()
        )

    def close(self, interrupted: bool = False) -> None:
        """Flush and close the logs; the tracker runs end FINISHED, or KILLED when interrupted (resumable)."""
        if self.trackers is not None:
            self.trackers.close("KILLED" if interrupted else "FINISHED")
            self.trackers = None
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
        if self.writer is not None:
            self.writer.close()


def _truncate_after(path: Path, step: int, epoch: int) -> None:
    """Rewrite metrics.jsonl without what will be logged again when continuing at (step, epoch)."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        redone = (
            r.get("kind") in ("summary", "calibration")  # end-of-run records: logged again at the end
            or (r.get("kind") in EPOCH_KINDS and r.get("epoch", 0) >= epoch)
        )
        if r.get("step", 0) <= step and not redone:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


class Progress:
    """A tqdm bar on stderr with loss, lr, images/s, data-wait share and ETA; silent unless live."""

    def __init__(self, desc: str, total: int, initial: int, live: bool) -> None:
        self.bar, self.first = None, True
        if live:
            from tqdm import tqdm

            # The width of the terminal the bar is drawn on (stderr: stdout may be piped to a file), fixed
            # for the run; 100 where it reports none or 0 columns (some ptys), which would give an empty bar.
            try:
                width = os.get_terminal_size(sys.stderr.fileno()).columns or 100
            except (OSError, ValueError, AttributeError):
                width = 100
            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="step",
                file=sys.stderr,
                ncols=width,
                leave=False,
                mininterval=0.5,
            )

    def update(self, loss: float, lr: float, images_per_s: float, data_wait_share: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            # The numbers show from the first step on; later refreshes follow tqdm's mininterval.
            self.bar.set_postfix_str(
                f"loss {loss:.4f} lr {lr:.2e} {images_per_s:.0f} img/s data wait {data_wait_share:.0%}",
                refresh=self.first,
            )
            self.first = False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
