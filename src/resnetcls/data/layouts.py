"""How a DATA folder is laid out, said out loud: which sub-folder is which split (train/, val/ or valid/ or
validation/, test/), what under DATA is not read and why, and a "did you mean PATH?" for layouts that are
not one folder per class (a wrapper folder around the class folders, YOLO detection's images/ + labels/,
a val/ of loose images with a label file); the CSV manifest's missing-file message. Notes and warnings go to
stderr once per process (training reads DATA more than once); refusals are UserErrors (one line, exit 2).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from ..errors import UserError
from .decode import is_image_file

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
OPENLORIS_SPLITS = {"train": "train", "validation": "val", "test": "test"}
SPLIT_HELP = "train/, val/ (or valid/, validation/), test/"
HIDDEN_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
LOOSE_NAMED = 3  # loose files named one by one; the rest are counted in one line
_said: set[str] = set()


def is_hidden(path: Path) -> bool:
    """.DS_Store, ._*, Thumbs.db, desktop.ini, __MACOSX and any other dot-name: never data."""
    return path.name.startswith(".") or path.name.lower() in HIDDEN_NAMES


def say(line: str) -> None:
    """A note or warning on stderr, once per process."""
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr, flush=True)


def _folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p))


def _has_images(folder: Path) -> bool:
    """Whether any image lies anywhere under folder (stops at the first)."""
    return any(p.is_file() and is_image_file(p) for p in folder.rglob("*"))


def _images_directly_in(folder: Path) -> bool:
    return any(p.is_file() and not is_hidden(p) and is_image_file(p) for p in folder.iterdir())


def is_openloris(root: Path) -> bool:
    """OpenLORIS-Object: {train,validation,test}/batchK/label.csv."""
    return any(
        next((root / s).glob("batch*/label.csv"), None) is not None
        for s in OPENLORIS_SPLITS
        if (root / s).is_dir()
    )


def openloris_batches(root: Path, batches: str) -> dict[str, list[Path]]:
    """{split folder: [batchK folders with a label.csv]} limited to the requested batch numbers."""
    found = {
        s: sorted(
            (p for p in (root / s).glob("batch*") if (p / "label.csv").is_file()),
            key=lambda p: int(re.sub(r"\D", "", p.name) or 0),
        )
        for s in OPENLORIS_SPLITS
        if (root / s).is_dir()
    }
    if not batches.strip():
        return found
    try:
        wanted = {int(b) for b in str(batches).replace(" ", "").split(",") if b}
    except ValueError:
        raise UserError(f"data.batches={batches!r}: expected batch numbers such as 1,2,3") from None
    have = {int(re.sub(r"\D", "", p.name) or 0) for ps in found.values() for p in ps}
    if wanted - have:
        raise UserError(
            f"data.batches: no batch {', '.join(map(str, sorted(wanted - have)))} in {root} "
            f"(have {', '.join(map(str, sorted(have)))})"
        )
    return {s: [p for p in ps if int(re.sub(r"\D", "", p.name) or 0) in wanted] for s, ps in found.items()}


def split_folders(root: Path) -> dict[str, Path] | None:
    """{split: folder} in train, val, test order when root holds a train/ folder (or nothing but split
    folders); None for a class-folder DATA. Names match in any case; two folders for one split (val/ and
    valid/) are an error naming both."""
    folders = _folders(root)
    named = [(SPLIT_NAMES[p.name.lower()], p) for p in folders if p.name.lower() in SPLIT_NAMES]
    if not named or (len(named) < len(folders) and all(split != "train" for split, _ in named)):
        return None
    found: dict[str, Path] = {}
    for split, folder in named:
        if split in found:
            raise UserError(
                f"{root}: {found[split].name}/ and {folder.name}/ are both the {split} split; keep one "
                "(rename the other or move it out)"
            )
        found[split] = folder
    return {split: found[split] for split in SPLITS if split in found}


def announce_splits(root: Path, found: dict[str, Path]) -> None:
    """The note saying which folder became which split, and a warning for everything else in root."""
    say(f"note: {root}: " + ", ".join(f"{folder.name}/ -> {split}" for split, folder in found.items()))
    for entry in sorted(root.iterdir()):
        if is_hidden(entry) or entry in found.values():
            continue
        if entry.is_dir():
            say(f"warning: {entry}: not a split folder ({SPLIT_HELP}); rename it or move it out")
        else:
            say(f"warning: {entry}: a file beside the split folders is not read; move it out")


def warn_loose_files(root: Path, files: list[Path]) -> None:
    """Files directly in a folder of class folders are not read: name the first few, count the rest."""
    for path in files[:LOOSE_NAMED]:
        if is_image_file(path):
            say(
                f"warning: {path}: an image outside any class folder is not read; move it into a class folder"
            )
        else:
            say(f"warning: {path}: not read (only images inside {root}/<class>/ are); move it out")
    if len(files) > LOOSE_NAMED:
        say(f"warning: {root}: {len(files) - LOOSE_NAMED} more files outside the class folders are not read")


def refuse_detection_layout(root: Path) -> None:
    """images/ beside labels/ (YOLO detection, or segmentation masks) is not a classification layout: an
    error, with "did you mean ROOT/images?" when images/ holds class folders."""
    by_name = {p.name.lower(): p for p in _folders(root)}
    if "images" not in by_name or "labels" not in by_name:
        return
    images = by_name["images"]
    head = (
        f"{root}: images/ beside labels/ is an object-detection layout (YOLO), but classification needs one "
        "folder per class"
    )
    if any(p.name.lower() not in SPLIT_NAMES and _has_images(p) for p in _folders(images)):
        raise UserError(f"{head}; {images} holds class folders: did you mean {images}?")
    raise UserError(f"{head} ({root}/<class>/<image>) or a CSV manifest with columns path,label")


def wrapper_hint(root: Path) -> str | None:
    """When root's only folder wraps the class folders (root/flowers/<class>/...), the line that says which
    folder to give instead; None otherwise."""
    folders = _folders(root)
    if len(folders) != 1 or _images_directly_in(root):
        return None
    target = folders[0]
    while not _images_directly_in(target):
        inner = _folders(target)
        if len(inner) >= 2 or any(p.name.lower() == "train" for p in inner):
            names = ", ".join(p.name for p in inner[:3]) + (", ..." if len(inner) > 3 else "")
            return (
                f"{root}: its only folder {folders[0].name}/ holds folders ({names}), so it would be one "
                f"class, {folders[0].name!r}; did you mean {target}?"
            )
        if len(inner) != 1:
            return None
        target = inner[0]
    return None


def no_class_folders(root: Path, loose: list[Path]) -> str:
    """The error for a folder without class sub-folders, saying what to do with images lying in it."""
    line = f"{root}: no class sub-folders with images (expected DATA/<class>/<image>)"
    images = [p for p in loose if is_image_file(p)]
    if not images:
        return line
    line += f"; {len(images)} images lie directly in it: sort them into one sub-folder per class"
    others = [p.name for p in loose if not is_image_file(p)]
    if others:
        line += (
            f" (a label file such as {others[0]} is not read: move each image into its class folder, or list "
            "the images in a CSV manifest with columns path,label,split)"
        )
    return line


def csv_missing_file(csv_path: Path, line_no: int, path: str) -> str:
    """A manifest row whose image is not there: where relative paths were looked for, and whether the path
    exists relative to the working folder instead."""
    line = f"{csv_path}:{line_no}: image file not found: {path!r}"
    if not path or Path(path).is_absolute():
        return line
    folder = os.path.abspath(csv_path.parent)
    if Path(path).is_file():
        return (
            f"{line} (not found relative to the CSV's folder {folder}; it exists relative to the working "
            "folder: write paths relative to the CSV, or absolute)"
        )
    return f"{line} (paths are relative to the CSV's folder {folder})"
