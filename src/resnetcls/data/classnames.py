"""Class names as every file stores them: NFC-normalised Unicode, a byte that is not UTF-8 an error naming
where it came from, and warnings about names that differ only by normalisation or by case."""

from __future__ import annotations

import sys
import unicodedata
from collections import defaultdict

from ..errors import UserError


def undecodable_byte(text: str) -> str:
    """'' for valid text; else the first byte that was not UTF-8 (read with surrogateescape), as 0xNN."""
    for ch in text:
        if "\udc80" <= ch <= "\udcff":
            return f"0x{ord(ch) - 0xDC00:02X}"
    return ""


def class_name(raw: str, where: str) -> str:
    """A class name as stored everywhere (model.json, reports, serve): NFC-normalised Unicode, so the same
    name typed on macOS (decomposed, NFD) and elsewhere (NFC) is one class. A byte that is not UTF-8 is an
    error naming where it came from."""
    byte = undecodable_byte(raw)
    if byte:
        raise UserError(f"{where}: class name {raw!r} is not UTF-8 text (byte {byte}); save it as UTF-8")
    return unicodedata.normalize("NFC", raw)


def warn_similar_names(raw_names, where: str) -> None:
    """Warn (stderr) about names merged by NFC normalisation and names that differ only by case."""
    merged: dict[str, set[str]] = defaultdict(set)
    for raw in raw_names:
        merged[unicodedata.normalize("NFC", raw)].add(raw)
    for name, spellings in sorted(merged.items()):
        if len(spellings) > 1:
            print(
                f"warning: {where}: {len(spellings)} spellings of class {name!r} differ only by Unicode "
                f"normalisation ({', '.join(map(ascii, sorted(spellings)))}); they are one class",
                file=sys.stderr,
                flush=True,
            )
    by_case: dict[str, list[str]] = defaultdict(list)
    for name in sorted(merged):
        by_case[name.casefold()].append(name)
    for names in by_case.values():
        if len(names) > 1:
            print(
                f"warning: {where}: classes {', '.join(map(repr, names))} differ only by case; they stay "
                f"separate classes (rename one if they are the same)",
                file=sys.stderr,
                flush=True,
            )
