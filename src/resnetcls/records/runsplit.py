"""The run's split.csv, as train writes it (data/sources.write_split_csv): one row per image with its path
(absolute, or relative to the file's folder) and its split. eval reads it to leave out the training images
(analysis/overlap.py), export to check its files on the run's own validation images (export/formats.py)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError


def split_rows(path: Path) -> Iterator[tuple[str, str]]:
    """(image path joined to the file's folder, split) for each row that has both; a file that cannot be
    read or lacks the 'path' and 'split' columns, or a malformed row, is a UserError naming the file and
    line."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise UserError(f"{path}: cannot read the run's split: {e.strerror or e}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    if "path" not in header or "split" not in header:
        raise UserError(
            f"{path}:1: expected the columns 'path' and 'split' that train writes (header is {header})"
        )
    column, split_column = header.index("path"), header.index("split")
    try:
        for row in reader:
            if len(row) > max(column, split_column) and row[column]:
                yield os.path.join(path.parent, row[column]), row[split_column]
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
