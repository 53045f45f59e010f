"""The task sequence of a lifelong run: DATA (+ the lifelong config) -> [Task(name, train, test)].

Three ways to define tasks:
- a CSV column (`--tasks illumination`): one task per value, in `--order` (comma-separated; an item `a-b` is
  the inclusive numeric range a..b, e.g. `--order 0-115,120-235,240-355` for COIL's `angle`) or sorted;
  `--bins N` cuts a numeric column into N ranges holding equally many distinct values, and any other column
  (e.g. `--tasks label`, the class itself: class-incremental tasks) into N groups of its sorted values;
- `--tasks batches`: the OpenLORIS-Object challenge's batchK folders (all, or those in `--order`);
- several DATA arguments: one task each, in the order given.
Each task's test split is DATA's test split (else its val split) restricted to the task. Labels index one
class list shared by every task, which grows in task order (a task's new classes are appended, sorted), so
later classes never renumber earlier ones. Rows whose value is in no task are counted and reported.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig, LifelongConfig
from ..data.sources import Samples, Splits, load_splits, openloris_batches
from ..errors import UserError

RANGE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*$")


@dataclass
class Task:
    name: str
    train: Samples
    test: Samples


def _number(value: str, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise UserError(
            f"lifelong.tasks={column!r}: value {value!r} is not a number, so ranges and bins "
            f"cannot apply; list the values in --order instead"
        ) from None


def task_groups(values: list[str], column: str, order: str, bins: int) -> list[tuple[str, callable]]:
    """(task name, value -> bool) per task, from --order, --bins or the sorted distinct values."""
    if order.strip():
        groups = []
        for item in (i.strip() for i in order.split(",") if i.strip()):
            m = RANGE.match(item)
            if m:
                lo, hi = float(m.group(1)), float(m.group(2))
                groups.append((item, lambda v, lo=lo, hi=hi: lo <= _number(v, column) <= hi))
            else:
                groups.append((item, lambda v, item=item: v == item))
        return groups
    distinct = sorted(set(values))
    if bins > 0 and not all(RANGE.match(f"{v}-{v}") for v in distinct):
        # a categorical column (e.g. label): N groups of its sorted distinct values (class-incremental splits)
        if bins > len(distinct):
            raise UserError(
                f"lifelong.bins={bins}: column {column!r} has only {len(distinct)} distinct values"
            )
        parts = [list(p) for p in np.array_split(np.array(distinct, dtype=object), bins)]
        return [
            ("|".join(p) if len(p) <= 3 else f"{p[0]}..{p[-1]}", lambda v, p=frozenset(p): v in p)
            for p in parts
        ]
    if bins > 0:
        numbers = sorted({_number(v, column) for v in distinct})
        if bins > len(numbers):
            raise UserError(
                f"lifelong.bins={bins}: column {column!r} has only {len(numbers)} distinct values"
            )
        parts = [p for p in np.array_split(np.array(numbers), bins)]
        return [
            (f"{p[0]:g}-{p[-1]:g}", lambda v, lo=p[0], hi=p[-1]: lo <= _number(v, column) <= hi)
            for p in parts
        ]
    try:
        distinct.sort(key=float)  # 1,2,10 rather than 1,10,2 when the column is numeric
    except ValueError:
        pass
    return [(v, lambda x, v=v: x == v) for v in distinct]


def _select(samples: Samples, column: str, where: str) -> list[str]:
    if column == "label":  # tasks by class: class-incremental learning
        return [samples.classes[label] for label in samples.labels]
    if column not in samples.extra:
        have = ", ".join(samples.extra) or "none; only CSV manifests have extra columns"
        raise UserError(f"{where}: no column {column!r} to define tasks by (have: {have})")
    return samples.extra[column]


def _split_by_column(splits: Splits, lc: LifelongConfig, where: str) -> list[tuple[str, Samples, Samples]]:
    test = splits.test if splits.test is not None and len(splits.test) else splits.val
    train_values, test_values = _select(splits.train, lc.tasks, where), _select(test, lc.tasks, where)
    groups = task_groups(train_values + test_values, lc.tasks, lc.order, lc.bins)  # bins span both splits
    out, used_train, used_test = [], set(), set()
    for name, member in groups:
        tr = [i for i, v in enumerate(train_values) if member(v)]
        te = [i for i, v in enumerate(test_values) if member(v)]
        if not tr or not te:
            raise UserError(
                f"{where}: task {lc.tasks}={name} has {len(tr)} train and {len(te)} test images; "
                f"each task needs both"
            )
        used_train.update(tr), used_test.update(te)
        out.append((f"{lc.tasks}={name}", splits.train.subset(tr), test.subset(te)))
    left = (len(train_values) - len(used_train), len(test_values) - len(used_test))
    if any(left):
        print(
            f"note: {left[0]} train and {left[1]} test images have a {lc.tasks} value in no task; "
            f"they are not used",
            file=sys.stderr,
        )
    return out


def _raw_tasks(lc: LifelongConfig, data_cfg: DataConfig, seed: int) -> list[tuple[str, Samples, Samples]]:
    def load(data, batches=""):
        return load_splits(data, "", data_cfg.val_fraction, seed, data_cfg.split_by, batches)

    if lc.datasets:
        if lc.tasks:
            raise UserError("lifelong: give either several DATA arguments or --tasks, not both")
        out = []
        for data in lc.datasets:
            s = load(data)
            out.append((Path(data).stem or str(data), s.train, s.test if s.test is not None else s.val))
        return out
    if lc.tasks == "batches":
        found = openloris_batches(Path(data_cfg.train), "").get("train", [])
        if not found:
            raise UserError(
                f"{data_cfg.train}: --tasks batches needs the OpenLORIS layout (train/batchK/label.csv)"
            )
        numbers = [int(re.sub(r"\D", "", p.name)) for p in found]
        wanted = [int(x) for x in lc.order.split(",") if x.strip()] if lc.order.strip() else numbers
        out = []
        for k in wanted:
            s = load(data_cfg.train, str(k))
            out.append((f"batch{k}", s.train, s.test if s.test is not None else s.val))
        return out
    if not lc.tasks:
        raise UserError(
            "lifelong: say how to cut DATA into tasks: --tasks COLUMN, --tasks batches, "
            "or several DATA arguments"
        )
    return _split_by_column(load(data_cfg.train), lc, data_cfg.train)


def _relabel(samples: Samples, index: dict[str, int], classes: list[str]) -> Samples:
    labels = [index[samples.classes[label]] for label in samples.labels]
    return Samples(samples.paths, labels, classes, samples.extra)


def build_tasks(lc: LifelongConfig, data: DataConfig, seed: int) -> tuple[list[Task], list[str]]:
    """The tasks in training order and the shared class list (appended to in task order)."""
    raw = _raw_tasks(lc, data, seed)
    if not raw:
        raise UserError("lifelong: no tasks")
    classes: list[str] = []
    index: dict[str, int] = {}
    for _, train, _ in raw:
        for name in sorted({train.classes[label] for label in train.labels}):
            if name not in index:
                index[name] = len(classes)
                classes.append(name)
    tasks = []
    for name, train, test in raw:
        unknown = sorted({test.classes[label] for label in test.labels} - set(index))
        if unknown:
            raise UserError(f"task {name}: test classes never trained on: {', '.join(unknown[:10])}")
        tasks.append(Task(name, _relabel(train, index, classes), _relabel(test, index, classes)))
    return tasks, classes


def known_classes(tasks: list[Task], upto: int) -> int:
    """How many classes the head needs after tasks 0..upto (the class list only ever appends)."""
    return max(max(t.train.labels) for t in tasks[: upto + 1]) + 1
