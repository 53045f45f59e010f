"""CSV manifests' rows and labels: the table with its one-line problems (read_table, raise_problems,
row_problem), and multi-label manifests, images that hold several classes at once (utils/multilabel.py).

Two multi-label forms, both read by sources.read_csv:
- a `label` column holding the image's labels joined by data.label_separator (default ";"): `cup;spoon`;
  with multi-label on (data.multi_label=on, or auto finding a separator in some label) a wholly empty label
  is an image without any of the classes (a negative image), an empty label between separators an error;
- no `label` column, one column per class holding 0 or 1 (`path,cup,spoon,split`): a class column is every
  column other than path, split and data.split_by whose cells are all whole numbers; any cell other than 0 or
  1 in it is an error naming file:line and column; a row of zeros is a negative image.
The classes are sorted by name, as for single-label data; `Samples.labels[i]` is the first label of image i
(0 for a negative image) so class counts, samplers and hold-outs keep working.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..utils.multilabel import DEFAULT_SEPARATOR, cooccurrence, parse_label_set
from .classnames import undecodable_byte
from .layouts import SPLITS, csv_missing_file

MODES = ("auto", "on", "off")
WHOLE_NUMBER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class CsvLabels:
    """How a CSV's labels are read: data.label_separator, data.multi_label (auto | on | off) and
    data.split_by (a column that is never a 0/1 class column)."""

    separator: str = DEFAULT_SEPARATOR
    multi_label: str = "auto"
    split_by: str = ""

    def check(self) -> None:
        if self.multi_label not in MODES:
            raise UserError(f"data.multi_label={self.multi_label!r}: expected auto, on or off")
        sep = self.separator
        if len(sep) != 1 or sep.isalnum() or sep.isspace() or sep in ',"':
            raise UserError(
                f"data.label_separator={sep!r}: expected one punctuation character other than a comma or a "
                "quote, e.g. ';' or '|'"
            )


SINGLE_LABEL = CsvLabels(multi_label="off")


def wants_columns(header: list[str], labels: CsvLabels) -> bool:
    """True when a header without a `label` column may be the 0/1 form (path plus other columns)."""
    return labels.multi_label != "off" and "path" in header and "label" not in header and len(header) > 1


def is_multi_label_column(texts: list[str], labels: CsvLabels) -> bool:
    """Whether a `label` column is read as label sets: data.multi_label=on, or auto and some label holds the
    separator."""
    if labels.multi_label == "auto":
        return any(labels.separator in text for text in texts)
    return labels.multi_label == "on"


def label_column_sets(path: Path, table: list[tuple[int, dict]], labels: CsvLabels) -> list:
    """Each row's label set as names (or the problem, a one-line error text, for a bad label)."""
    sets: list = []
    for line_no, rec in table:
        where, text = f"{path}:{line_no}", rec["label"]
        if undecodable_byte(text):
            sets.append(
                f"{where}: label {text!r} is not UTF-8 text (byte {undecodable_byte(text)}); save the CSV "
                "as UTF-8"
            )
            continue
        try:
            names = parse_label_set(text, labels.separator, where) if text else []
        except UserError as e:
            sets.append(str(e))
            continue
        sets.append(names)  # NFC-normalised by read_csv, after its warning about spellings
    return sets


def class_columns(path: Path, header: list[str], table: list[tuple[int, dict]], labels: CsvLabels) -> list:
    """The 0/1 class columns of a header without `label` (see the module docstring); none is an error."""
    skip = {"path", "split", labels.split_by}
    columns = [
        h
        for h in header
        if h not in skip
        and any(rec[h] for _, rec in table)
        and all(WHOLE_NUMBER.fullmatch(rec[h]) for _, rec in table if rec[h])
    ]
    if not columns:
        raise UserError(
            f"{path}:1: CSV header has no 'label' column and no 0/1 class columns (header is {header}); "
            "give path,label (labels joined by data.label_separator) or one 0/1 column per class"
        )
    return columns


def column_sets(path: Path, table: list[tuple[int, dict]], columns: list[str]) -> list:
    """Each row's label set from its 0/1 class columns (or the problem for a cell other than 0 or 1)."""
    sets: list = []
    for line_no, rec in table:
        bad = [c for c in columns if rec[c] not in ("0", "1")]
        if bad:
            sets.append(
                f"{path}:{line_no}: column {bad[0]!r} holds {rec[bad[0]]!r}; a class column holds 0 or 1"
            )
        else:
            sets.append(sorted(c for c in columns if rec[c] == "1"))
    return sets


def index_sets(name_sets: list[list[str]], classes: list[str]) -> list[tuple[int, ...]]:
    """Label sets of names -> tuples of class indices, in the order given."""
    index = {c: i for i, c in enumerate(classes)}
    return [tuple(index[name] for name in names) for names in name_sets]


def first_labels(label_sets: list[tuple[int, ...]]) -> list[int]:
    """Samples.labels of a multi-label set: each image's first label, 0 for a negative image."""
    return [labels[0] if labels else 0 for labels in label_sets]


def rarest_labels(label_sets: list[tuple[int, ...]], num_classes: int) -> list[int]:
    """Each image's rarest class (-1 for a negative image): the stratum of a multi-label hold-out, and what
    a balanced sampler balances, so that rare classes reach both sides and are drawn as often as common
    ones."""
    counts = [0] * num_classes
    for labels in label_sets:
        for label in labels:
            counts[label] += 1
    return [min(labels, key=lambda c: (counts[c], c)) if labels else -1 for labels in label_sets]


def join_labels(labels: tuple[int, ...], classes: list[str], separator: str) -> str:
    """A label set as a CSV label cell: the names joined by the separator ('' for a negative image)."""
    return separator.join(classes[label] for label in labels)


def read_table(
    path: Path, required: tuple[str, ...], labels: CsvLabels = SINGLE_LABEL
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV with a header -> (header, [(line number, row dict)]); structural problems name the line.
    labels: with multi-label allowed, a header with path but no label may be the 0/1 class-column form."""
    try:
        # utf-8-sig drops a spreadsheet's BOM; surrogateescape keeps non-UTF-8 file names byte-exact.
        text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    except OSError as e:
        raise UserError(f"{path}: cannot read CSV: {e.strerror or e}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in required if c not in header]
        if missing and not wants_columns(header, labels):
            raise UserError(
                f"{path}:1: CSV header must have columns {', '.join(map(repr, required))}; "
                f"missing {', '.join(map(repr, missing))} (header is {header})"
            )
        rows, problems = [], []
        line_no = reader.line_num
        for row in reader:
            start, line_no = line_no + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                problems.append(
                    f"{path}:{start}: malformed row: expected {len(header)} columns, got {len(row)}"
                )
                continue
            rows.append((start, {h: c.strip() for h, c in zip(header, row)}))
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
    raise_problems(problems)
    return header, rows


def raise_problems(problems: list[str]) -> None:
    """Report every row problem at once: the first in full, then how many more and on which lines."""
    if problems:
        more = (
            f" (and {len(problems) - 1} more: {'; '.join(problems[1:6])}"
            + (" ..." if len(problems) > 6 else "")
            + ")"
            if len(problems) > 1
            else ""
        )
        raise UserError(problems[0] + more)


def row_problem(path: Path, line_no: int, rec: dict, names) -> str:
    """The one-line problem of a CSV row ('' when it is fine); names: its label set (or the label set's own
    problem text) for multi-label data, None for single-label data."""
    if isinstance(names, str):
        return names
    if names is None and undecodable_byte(rec["label"]):  # paths may keep non-UTF-8 bytes; labels are text
        return (
            f"{path}:{line_no}: label {rec['label']!r} is not UTF-8 text (byte "
            f"{undecodable_byte(rec['label'])}); save the CSV as UTF-8"
        )
    if names is None and not rec["label"]:
        return f"{path}:{line_no}: empty label"
    if "split" in rec and rec["split"] not in SPLITS:
        return f"{path}:{line_no}: unknown split {rec['split']!r}; expected train, val or test"
    if not rec["path"] or not (path.parent / rec["path"]).is_file():
        return csv_missing_file(path, line_no, rec["path"])
    return ""


def sampler_labels(samples) -> list[int]:
    """What data.sampler=balanced balances: the labels of single-label samples; for multi-label samples each
    image's rarest class, images without any class forming one more group (index len(classes))."""
    if samples.label_sets is None:
        return samples.labels
    negative = len(samples.classes)
    return [negative if c < 0 else c for c in rarest_labels(samples.label_sets, len(samples.classes))]


TOP_PAIRS = 10  # `data check`: the most frequent pairs of classes listed


def label_section(dataset) -> dict:
    """`data check`'s "multi_label" section of a multi-label data set (all splits together), else {}:
    images per class, how many images hold 0, 1, 2, ... labels, and the most frequent pairs of classes."""
    sets = [s for samples in dataset.splits.values() for s in samples.label_sets or []]
    if not any(samples.label_sets is not None for samples in dataset.splits.values()):
        return {}
    classes = dataset.classes
    counts = cooccurrence(sets, len(classes))
    per_image = Counter(len(labels) for labels in sets)
    pairs = [
        {"classes": [classes[a], classes[b]], "images": int(counts[a, b])}
        for a in range(len(classes))
        for b in range(a + 1, len(classes))
        if counts[a, b] > 0
    ]
    pairs.sort(key=lambda pair: (-pair["images"], pair["classes"]))
    return {
        "multi_label": {
            "images": len(sets),
            "per_class": {c: int(counts[k, k]) for k, c in enumerate(classes)},
            "labels_per_image": {str(n): per_image[n] for n in range(max(per_image, default=0) + 1)},
            "top_pairs": pairs[:TOP_PAIRS],
            "pairs": len(pairs),
        }
    }


def cooccurrence_lines(section: dict) -> list[str]:
    """The co-occurrence summary lines of `data check` (label_section's)."""
    per_image = ", ".join(f"{n}: {count}" for n, count in section["labels_per_image"].items())
    per_class = ", ".join(f"{c} {n}" for c, n in section["per_class"].items())
    lines = [
        f"  multi-label: {section['images']} images; images per number of labels ({per_image})",
        f"    images per class: {per_class}",
        f"    most frequent pairs ({section['pairs']} pairs occur):",
    ]
    lines += [f"      {' + '.join(p['classes'])}: {p['images']}" for p in section["top_pairs"]]
    return lines
