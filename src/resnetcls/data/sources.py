"""DATA argument -> labelled samples per split.

DATA is one of (DESIGN.md section 4):
- a folder of class sub-folders;
- a folder with train/ and val/ (or valid/, validation/) (and test/) class folders (data/layouts.py says which
  folder became which split, warns about what is not read, and refuses other layouts with a hint);
- a CSV manifest with columns path,label[,split][,extra...] (paths relative to the CSV's folder); a
  multi-label manifest holds several labels per image, joined in `label` or as one 0/1 column per class
  (data/csvlabels.py);
- an OpenLORIS-Object challenge folder: {train,validation,test}/batchK/label.csv with columns
  `file name,label` (integer labels) next to the images; `validation` is the val split.
Hidden files (.DS_Store, ._*, Thumbs.db, anything in a hidden folder) and files without an image extension
are ignored in folder scans and counted in `ignored`; extensions match case-insensitively.
"""

from __future__ import annotations

import os
import random
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UserError
from ..utils.atomic import csv_text, write_atomic
from ..utils.multilabel import DEFAULT_SEPARATOR
from .classnames import class_name, warn_similar_names
from .csvlabels import (
    CsvLabels,
    class_columns,
    column_sets,
    first_labels,
    index_sets,
    is_multi_label_column,
    join_labels,
    label_column_sets,
    raise_problems,
    rarest_labels,
    read_table,
    row_problem,
)
from .decode import is_image_file
from .layouts import (
    OPENLORIS_SPLITS,
    SPLITS,
    announce_splits,
    is_hidden,
    is_openloris,
    no_class_folders,
    openloris_batches,
    refuse_detection_layout,
    say,
    split_folders,
    warn_loose_files,
    wrapper_hint,
)


@dataclass
class Samples:
    """Image paths with integer labels into `classes`, plus any extra CSV columns.

    label_sets: None for single-label data; for multi-label data each image's classes (possibly none), and
    labels[i] is then its first label (0 for an image without any, data/csvlabels.py)."""

    paths: list[str]
    labels: list[int]
    classes: list[str]
    extra: dict[str, list[str]] = field(default_factory=dict)
    label_sets: list[tuple[int, ...]] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: list[int]) -> Samples:
        return Samples(
            [self.paths[i] for i in indices],
            [self.labels[i] for i in indices],
            self.classes,
            {k: [v[i] for i in indices] for k, v in self.extra.items()},
            None if self.label_sets is None else [self.label_sets[i] for i in indices],
        )


@dataclass
class DataSet:
    """Everything DATA holds, before any hold-out: split name ("train", "val", "test" or "all") -> samples."""

    classes: list[str]
    splits: dict[str, Samples]
    layout: str  # folders | split-folders | csv | openloris
    ignored: dict[str, list[str]] = field(default_factory=lambda: {"hidden": [], "not_image": []})


@dataclass
class Splits:
    classes: list[str]
    train: Samples
    val: Samples
    test: Samples | None = None
    ignored: dict[str, list[str]] = field(default_factory=dict)


def _scan_class_folders(
    root: Path, ignored: dict[str, list[str]], allow_empty: bool = False
) -> dict[str, list[str]]:
    """{class name: sorted image paths} for each sub-folder of root; an empty class folder is an error."""
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    refuse_detection_layout(root)
    by_class: dict[str, list[str]] = {}
    loose = []
    for entry in sorted(root.iterdir()):
        if is_hidden(entry):
            ignored["hidden"].append(str(entry))
        elif not entry.is_dir():
            ignored["not_image" if not is_image_file(entry) else "outside_class_folder"].append(str(entry))
            loose.append(entry)
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p)):
        files = []
        for p in sorted(class_dir.rglob("*")):
            if not p.is_file():
                continue
            if any(is_hidden(part) for part in p.relative_to(class_dir).parents if part.name) or is_hidden(p):
                ignored["hidden"].append(str(p))
            elif not is_image_file(p):
                ignored["not_image"].append(str(p))
            else:
                files.append(str(p))
        if not files and not allow_empty:
            raise UserError(f"{class_dir}: class folder has no images")
        by_class.setdefault(class_name(class_dir.name, str(class_dir)), []).extend(files)
    if not by_class:
        raise UserError(no_class_folders(root, loose))
    warn_loose_files(root, loose)
    warn_similar_names([p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p)], str(root))
    return by_class


def _to_samples(by_class: dict[str, list[str]], classes: list[str], where: Path) -> Samples:
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for name, files in by_class.items():
        if name not in index:
            raise UserError(f"{where / name}: class {name!r} is not among the training classes")
        paths += files
        labels += [index[name]] * len(files)
    return Samples(paths, labels, classes)


def read_folder(root: Path, classes: list[str] | None = None, ignored: dict | None = None) -> Samples:
    """A folder with one sub-folder per class; classes are the sorted folder names unless given."""
    by_class = _scan_class_folders(root, ignored if ignored is not None else defaultdict(list))
    return _to_samples(by_class, classes or sorted(by_class), root)


def read_csv(path: Path, labels: CsvLabels = CsvLabels()) -> tuple[Samples, list[str]]:  # noqa: B008
    """A CSV manifest -> (all samples with classes sorted by name, split column or [] when absent).

    labels: how multi-label manifests are read (data/csvlabels.py); data.multi_label=off reads every label
    as one class name, as single-label data."""
    labels.check()
    header, table = read_table(path, ("path", "label"), labels)
    columns: list[str] = []
    if "label" in header:
        multi = is_multi_label_column([rec["label"] for _, rec in table], labels)
        name_sets = label_column_sets(path, table, labels) if multi else None
    else:
        columns = class_columns(path, header, table, labels)
        name_sets = column_sets(path, table, columns)
    rows, sets, problems = [], [], []
    for k, (line_no, rec) in enumerate(table):
        problem = row_problem(path, line_no, rec, name_sets[k] if name_sets is not None else None)
        if problem:
            problems.append(problem)
            continue
        rec["path"] = str(path.parent / rec["path"])
        sets.append(name_sets[k] if name_sets is not None else [rec["label"]])
        rows.append(rec)
    raise_problems(problems)
    warn_similar_names({name for names in sets for name in names}, str(path))
    if not rows:
        raise UserError(f"{path}: CSV has no rows")
    sets = [[unicodedata.normalize("NFC", name) for name in names] for names in sets]
    extra_cols = [h for h in header if h not in ("path", "label", "split", *columns)]
    extra = {c: [r[c] for r in rows] for c in extra_cols}
    split_col = [r["split"] for r in rows] if "split" in header else []
    classes = sorted(
        {name for names in sets for name in names} | {unicodedata.normalize("NFC", c) for c in columns}
    )
    label_sets = index_sets(sets, classes)
    if name_sets is None:
        return Samples([r["path"] for r in rows], first_labels(label_sets), classes, extra), split_col
    multi = Samples([r["path"] for r in rows], first_labels(label_sets), classes, extra, label_sets)
    return multi, split_col


def read_openloris(root: Path, batches: str = "") -> DataSet:
    """OpenLORIS-Object challenge layout; classes are the integer labels in numeric order (as strings)."""
    rows: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for folder, batch_dirs in openloris_batches(root, batches).items():
        for batch_dir in batch_dirs:
            csv_path = batch_dir / "label.csv"
            _, table = read_table(csv_path, ("file name", "label"))
            problems = []
            for line_no, rec in table:
                if not re.fullmatch(r"-?\d+", rec["label"]):
                    problems.append(f"{csv_path}:{line_no}: label {rec['label']!r} is not an integer")
                elif not (batch_dir / rec["file name"]).is_file():
                    problems.append(f"{csv_path}:{line_no}: image file not found: {rec['file name']!r}")
                else:
                    rows[OPENLORIS_SPLITS[folder]].append(
                        (str(batch_dir / rec["file name"]), int(rec["label"]))
                    )
            raise_problems(problems)
    if not rows.get("train"):
        raise UserError(f"{root}: OpenLORIS layout without any labelled train/batchK/label.csv rows")
    numbers = sorted({label for split in rows.values() for _, label in split})
    classes, index = [str(n) for n in numbers], {n: i for i, n in enumerate(numbers)}
    splits = {
        s: Samples([p for p, _ in r], [index[label] for _, label in r], classes) for s, r in rows.items()
    }
    return DataSet(classes, splits, "openloris")


def read_data(
    data: str,
    batches: str = "",
    strict: bool = True,
    labels: CsvLabels = CsvLabels(),  # noqa: B008 (frozen)
) -> DataSet:
    """Everything DATA holds, split as DATA says (no hold-out). strict=False (for `data check`) allows empty
    classes and class folders that differ between splits, so they can be reported instead of raised.
    labels: how a CSV's labels are read (multi-label, data/csvlabels.py); folder layouts are single-label."""
    root = Path(data)
    if not root.exists():
        raise UserError(f"{data}: no such file or folder")
    ignored: dict[str, list[str]] = defaultdict(list)
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise UserError(f"{data}: DATA must be a folder or a .csv manifest")
        samples, split_col = read_csv(root, labels)
        if not split_col:
            return DataSet(samples.classes, {"all": samples}, "csv")
        splits = {s: samples.subset([i for i, v in enumerate(split_col) if v == s]) for s in SPLITS}
        if strict and not len(splits["train"]):
            raise UserError(f"{data}: no rows with split=train")
        return DataSet(samples.classes, {s: v for s, v in splits.items() if len(v)}, "csv")
    if is_openloris(root):
        return read_openloris(root, batches)
    found = split_folders(root)
    if found is None:
        by_class = _scan_class_folders(root, ignored, allow_empty=not strict)
        hint = wrapper_hint(root) if len(by_class) == 1 and not strict else None
        if hint:  # training refuses it (load_splits); `data check` reports what it sees, with the hint
            say(f"warning: {hint}")
        return DataSet(
            sorted(by_class), {"all": _to_samples(by_class, sorted(by_class), root)}, "folders", dict(ignored)
        )
    announce_splits(root, found)
    for entry in sorted(root.iterdir()):
        if entry not in found.values():
            ignored["hidden" if is_hidden(entry) else "not_a_split"].append(str(entry))
    scans = {s: _scan_class_folders(folder, ignored, allow_empty=not strict) for s, folder in found.items()}
    in_train = strict and "train" in scans
    classes = sorted(scans["train"]) if in_train else sorted({c for scan in scans.values() for c in scan})
    splits = {s: _to_samples(scan, classes, found[s]) for s, scan in scans.items()}
    return DataSet(classes, splits, "split-folders", dict(ignored))


def stratified_holdout(
    samples: Samples, val_fraction: float, seed: int, split_by: str = ""
) -> tuple[list[int], list[int]]:
    """Seeded per-class hold-out, identical across runs and machines; split_by keeps groups together."""
    if not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction={val_fraction}: must be between 0 and 1")
    if split_by and split_by not in samples.extra:
        raise UserError(
            f"data.split_by={split_by!r}: no such column "
            f"(have: {', '.join(samples.extra) or 'none; only CSV manifests have extra columns'})"
        )
    rng = random.Random(seed)
    units: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    # multi-label: each image's rarest class is its stratum, so rare classes reach both sides
    strata = (
        samples.labels
        if samples.label_sets is None
        else rarest_labels(samples.label_sets, len(samples.classes))
    )
    for i, label in enumerate(strata):
        # Relative names, not absolute paths, so the split does not depend on where the data lives.
        unit = samples.extra[split_by][i] if split_by else Path(samples.paths[i]).name + f"#{i}"
        units[label][unit].append(i)
    train, val = [], []
    for label in sorted(units):
        keys = sorted(units[label])
        rng.shuffle(keys)
        n_val = max(round(len(keys) * val_fraction), 1) if len(keys) > 1 else 0
        for k, key in enumerate(keys):
            (val if k < n_val else train).extend(units[label][key])
    return sorted(train), sorted(val)


def load_splits(
    data: str,
    val: str = "",
    val_fraction: float = 0.1,
    seed: int = 0,
    split_by: str = "",
    batches: str = "",
    labels: CsvLabels = CsvLabels(),  # noqa: B008 (frozen)
) -> Splits:
    """Resolve DATA (and an optional separate val DATA) into train/val(/test) samples; labels: how a CSV's
    labels are read (a separate val DATA of a multi-label DATA is read as multi-label too)."""
    dataset = read_data(data, batches, labels=labels)
    classes, parts = dataset.classes, dataset.splits
    train, valid, test = parts.get("train", parts.get("all")), parts.get("val"), parts.get("test")
    if train is None:
        raise UserError(
            f"{data}: no train split (DATA holds only {', '.join(parts)}); training reads "
            "DATA/train/<class>/<image>"
        )
    hint = wrapper_hint(Path(data)) if dataset.layout == "folders" and len(classes) == 1 else None
    if hint:
        raise UserError(hint)
    if val:  # a separate val DATA is used whole (or its val split, when it has splits of its own)
        multi = dataset.splits[next(iter(dataset.splits))].label_sets is not None
        other = read_data(val, batches, labels=replace(labels, multi_label="on") if multi else labels).splits
        valid = _relabel(next(other[s] for s in ("all", "val", "test", "train") if s in other), classes, val)
    if valid is None:
        tr, va = stratified_holdout(train, val_fraction, seed, split_by)
        train, valid = train.subset(tr), train.subset(va)
    return Splits(classes, train, valid, test, dataset.ignored)


def write_split_csv(splits: Splits, path: str | Path, separator: str = DEFAULT_SEPARATOR) -> Path:
    """The chosen split as a CSV manifest (absolute paths) that `resnetcls train PATH` accepts as DATA; a
    multi-label image's labels are joined by separator (an image without any: an empty label)."""
    path = Path(path)
    parts = [("train", splits.train), ("val", splits.val)] + ([("test", splits.test)] if splits.test else [])
    extra = list(splits.train.extra)
    rows = [["path", "label", "split", *extra]]
    for name, samples in parts:
        for i, (p, label) in enumerate(zip(samples.paths, samples.labels)):
            sets = samples.label_sets
            rows.append(
                [
                    os.path.abspath(p),
                    splits.classes[label]
                    if sets is None
                    else join_labels(sets[i], splits.classes, separator),
                    name,  # keeps the user's symlinks
                    *[samples.extra.get(c, [""] * len(samples))[i] for c in extra],
                ]
            )
    # surrogateescape: a file name that is not UTF-8 is written back as the bytes it was read from
    write_atomic(path, csv_text(rows).encode("utf-8", "surrogateescape"))
    return path


def _relabel(samples: Samples, classes: list[str], where: str) -> Samples:
    """Map samples onto another class list (the training classes); unknown classes are errors."""
    index = {c: i for i, c in enumerate(classes)}
    sets = samples.label_sets if samples.label_sets is not None else [(label,) for label in samples.labels]
    unknown = sorted({samples.classes[label] for labels in sets for label in labels} - set(index))
    if unknown:
        raise UserError(f"{where}: classes not among the training classes: {', '.join(unknown)}")
    if samples.label_sets is None:
        labels = [index[samples.classes[label]] for label in samples.labels]
        return Samples(samples.paths, labels, classes, samples.extra)
    label_sets = [tuple(index[samples.classes[label]] for label in labels) for labels in sets]
    return Samples(samples.paths, first_labels(label_sets), classes, samples.extra, label_sets)


def load_eval_samples(
    data: str,
    classes: list[str],
    batches: str = "",
    labels: CsvLabels = CsvLabels(multi_label="off"),  # noqa: B008 (frozen)
) -> tuple[Samples, str]:
    """Samples to evaluate a model on, labelled in the model's class order, and which split they are.

    A plain class-folder DATA is evaluated whole; a DATA with splits gives its test split, else its val split.
    Classes the model does not know are an error naming them; a subset of the model's classes is fine.
    labels: a multi-label model's data is read with multi_label=on and the model's separator.
    """
    dataset = read_data(data, batches, labels=labels)
    which = next(s for s in ("test", "val", "all", "train") if s in dataset.splits)
    return _relabel(dataset.splits[which], classes, data), which
