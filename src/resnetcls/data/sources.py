"""DATA argument -> labelled samples per split.

DATA is a folder of class sub-folders, a folder with train/ and val/ (and test/) class folders, or a CSV
manifest with columns path,label[,split][,extra...] (paths relative to the CSV's folder).
"""
from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .decode import is_image_file

SPLITS = ("train", "val", "test")


@dataclass
class Samples:
    """Image paths with integer labels into `classes`, plus any extra CSV columns."""

    paths: list[str]
    labels: list[int]
    classes: list[str]
    extra: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: list[int]) -> "Samples":
        return Samples([self.paths[i] for i in indices], [self.labels[i] for i in indices], self.classes,
                       {k: [v[i] for i in indices] for k, v in self.extra.items()})


@dataclass
class Splits:
    classes: list[str]
    train: Samples
    val: Samples
    test: Samples | None = None


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in {"thumbs.db", "desktop.ini"}


def _scan_class_folders(root: Path) -> dict[str, list[str]]:
    """{class name: sorted image paths} for each sub-folder of root; an empty class folder is an error."""
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    by_class: dict[str, list[str]] = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p)):
        files = sorted(str(p) for p in class_dir.rglob("*")
                       if p.is_file() and not _is_hidden(p) and is_image_file(p))
        if not files:
            raise UserError(f"{class_dir}: class folder has no images")
        by_class[class_dir.name] = files
    if not by_class:
        raise UserError(f"{root}: no class sub-folders with images (expected DATA/<class>/<image>)")
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


def read_folder(root: Path, classes: list[str] | None = None) -> Samples:
    """A folder with one sub-folder per class; classes are the sorted folder names unless given."""
    by_class = _scan_class_folders(root)
    return _to_samples(by_class, classes or sorted(by_class), root)


def read_csv(path: Path) -> tuple[Samples, list[str]]:
    """A CSV manifest -> (all samples with classes sorted by name, split column or [] when absent)."""
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig drops a BOM written by spreadsheets
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read CSV: {e}") from None
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    for required in ("path", "label"):
        if required not in header:
            raise UserError(f"{path}:1: CSV header must have columns 'path' and 'label', got {header}")
    rows: list[dict[str, str]] = []
    for line_no, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise UserError(f"{path}:{line_no}: expected {len(header)} columns, got {len(row)}")
        rec = {h: c.strip() for h, c in zip(header, row)}
        if not rec["label"]:
            raise UserError(f"{path}:{line_no}: empty label")
        if "split" in rec and rec["split"] not in SPLITS:
            raise UserError(f"{path}:{line_no}: unknown split {rec['split']!r}; expected train, val or test")
        file = base / rec["path"]
        if not file.is_file():
            raise UserError(f"{path}:{line_no}: image file not found: {rec['path']}")
        rec["path"] = str(file)
        rows.append(rec)
    if not rows:
        raise UserError(f"{path}: CSV has no rows")
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    extra_cols = [h for h in header if h not in ("path", "label", "split")]
    samples = Samples([r["path"] for r in rows], [index[r["label"]] for r in rows], classes,
                      {c: [r[c] for r in rows] for c in extra_cols})
    return samples, [r["split"] for r in rows] if "split" in header else []


def stratified_holdout(samples: Samples, val_fraction: float, seed: int,
                       split_by: str = "") -> tuple[list[int], list[int]]:
    """Seeded per-class hold-out, identical across runs and machines; split_by keeps groups together."""
    if not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction={val_fraction}: must be between 0 and 1")
    if split_by and split_by not in samples.extra:
        raise UserError(f"data.split_by={split_by!r}: no such column (have: {', '.join(samples.extra)})")
    rng = random.Random(seed)
    units: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, label in enumerate(samples.labels):
        unit = samples.extra[split_by][i] if split_by else samples.paths[i]
        units[label][unit].append(i)
    train, val = [], []
    for label in sorted(units):
        keys = sorted(units[label])
        rng.shuffle(keys)
        n_val = round(len(keys) * val_fraction) if len(keys) > 1 else 0
        n_val = max(n_val, 1) if len(keys) > 1 else 0
        for k, key in enumerate(keys):
            (val if k < n_val else train).extend(units[label][key])
    return sorted(train), sorted(val)


def load_splits(data: str, val: str = "", val_fraction: float = 0.1, seed: int = 0,
                split_by: str = "") -> Splits:
    """Resolve DATA (and an optional separate val DATA) into train/val(/test) samples."""
    root = Path(data)
    if not root.exists():
        raise UserError(f"{data}: no such file or folder")
    test = None
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise UserError(f"{data}: DATA must be a folder or a .csv manifest")
        samples, split_col = read_csv(root)
        classes = samples.classes
        if split_col:
            by = {s: [i for i, v in enumerate(split_col) if v == s] for s in SPLITS}
            train = samples.subset(by["train"])
            valid = samples.subset(by["val"]) if by["val"] else None
            test = samples.subset(by["test"]) if by["test"] else None
            if not by["train"]:
                raise UserError(f"{data}: no rows with split=train")
        else:
            train, valid = samples, None
    elif (root / "train").is_dir():
        train = read_folder(root / "train")
        classes = train.classes
        valid = read_folder(root / "val", classes) if (root / "val").is_dir() else None
        test = read_folder(root / "test", classes) if (root / "test").is_dir() else None
    else:
        train = read_folder(root)
        classes, valid = train.classes, None
    if val:
        valid = load_splits(val).train
        valid = _relabel(valid, classes, val)
    if valid is None:
        tr, va = stratified_holdout(train, val_fraction, seed, split_by)
        train, valid = train.subset(tr), train.subset(va)
    return Splits(classes, train, valid, test)


def _relabel(samples: Samples, classes: list[str], where: str) -> Samples:
    """Map samples onto another class list (the training classes); unknown classes are errors."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(samples.classes) - set(index))
    if unknown:
        raise UserError(f"{where}: classes not among the training classes: {', '.join(unknown)}")
    labels = [index[samples.classes[label]] for label in samples.labels]
    return Samples(samples.paths, labels, classes, samples.extra)


def load_eval_samples(data: str, classes: list[str]) -> tuple[Samples, str]:
    """Samples to evaluate a model on, labelled in the model's class order, and which split they are.

    A plain class-folder DATA is evaluated whole; a DATA with splits gives its test split, else its val split.
    Classes the model does not know are an error naming them; a subset of the model's classes is fine.
    """
    root = Path(data)
    if not root.exists():
        raise UserError(f"{data}: no such file or folder")
    if root.is_file():
        samples, split_col = read_csv(root) if root.suffix.lower() == ".csv" else (None, [])
        if samples is None:
            raise UserError(f"{data}: DATA must be a folder or a .csv manifest")
        which = next((s for s in ("test", "val") if s in split_col), "all")
        if which != "all":
            samples = samples.subset([i for i, v in enumerate(split_col) if v == which])
    elif (root / "train").is_dir():
        which = next((s for s in ("test", "val") if (root / s).is_dir()), "train")
        samples = read_folder(root / which)
    else:
        samples, which = read_folder(root), "all"
    return _relabel(samples, classes, data), which
