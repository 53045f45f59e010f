"""README's example outputs are what the commands print. Each `$ resnetcls ...` block under the sections below
is run on the tiny run and tiny data (the README's paths stand for them) and checked as tests/test_docs.py
checks the pages' examples: every line it shows must be the next line the command prints on stdout or stderr,
with numbers, paths and class names as placeholders ("..." stands for the lines a block skips), and a predict
table's columns are aligned. Once README's examples run as they are written (tests/test_docs.py's rules),
this file goes and tests/test_docs.py runs README.md like every page.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, make_class_folders, run_cli
from tests.test_docs import ANNOTATION, mismatch, table_columns


def section(heading: str) -> list[str]:
    """The lines of README.md under `heading` (a whole line), up to the next heading of its level or above;
    lines of code blocks that start with # are not headings."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert heading in lines, f"README.md has no section {heading!r}"
    level = len(heading) - len(heading.lstrip("#"))
    body, fenced = [], False
    for line in lines[lines.index(heading) + 1 :]:
        fenced ^= line.startswith("```")
        depth = len(line) - len(line.lstrip("#"))
        if not fenced and 0 < depth <= level and line[depth : depth + 1] == " ":
            break
        body.append(line)
    return body


@dataclass
class Example:
    """One README block that starts with `$ resnetcls ...`: the command's words, the lines shown after it,
    and the exit code its remark names (0 when none does)."""

    words: list[str]
    shown: list[str]
    exit_code: int


def examples(heading: str) -> list[Example]:
    """Every `$ resnetcls` block of the section, in order; the section must have at least one."""
    found, block = [], None
    for line in section(heading):
        if line.startswith("```"):
            if block:
                found.append(block)
            block = [] if block is None else None
        elif block is not None:
            block.append(line)
    found = [b for b in found if b and b[0].startswith("$ resnetcls ")]
    assert found, f"README section {heading!r} shows no `$ resnetcls ...` block"
    result = []
    for first, *rest in found:
        notes = [m.group("note") for line in rest if (m := ANNOTATION.search(line))]
        code = re.search(r"exit code (\d+)", " ".join(notes))
        shown = [ANNOTATION.sub("", line) for line in rest]
        result.append(
            Example(shlex.split(first[2:], comments=True), shown, int(code.group(1)) if code else 0)
        )
    return result


class StandIns:
    """What the README's paths stand for in the test: the tiny run and data, and small things built from
    them on first use (no training: a copy of the run, so that eval's files do not change the shared one)."""

    def __init__(self, tiny_run: Path, tiny_data: Path, tmp: Path) -> None:
        self.tiny_run, self.tiny_data, self.tmp = tiny_run, tiny_data, tmp

    def run_copy(self) -> Path:
        copy = self.tmp / "runs" / "x"
        if not copy.exists():
            shutil.copytree(self.tiny_run, copy)  # split.csv names the tiny data's absolute paths
        return copy

    def bare_model(self) -> Path:
        """The run's best model copied out of it, so no split.csv is beside it."""
        copy = self.tmp / "bare" / "model"
        if not copy.exists():
            shutil.copytree(self.tiny_run / "best", copy)
        return copy

    def new_images(self) -> Path:
        colours = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
        return make_class_folders(self.tmp / "photos-test", colours, per_class=4)

    def split_csv(self) -> Path:
        """The tiny data as a CSV with a split column: every fourth image val, the others train."""
        images = sorted(self.tiny_data.glob("*/*.jpg"))
        rows = [f"{p},{p.parent.name},{'val' if i % 4 == 0 else 'train'}" for i, p in enumerate(images)]
        csv = self.tmp / "split.csv"
        csv.write_text("path,label,split\n" + "\n".join(rows) + "\n")
        return csv

    def split_folders(self) -> Path:
        """train/ and val/ folders of textured (not flat) images and a stray file beside them."""
        rng = np.random.default_rng(0)
        root = self.tmp / "split-folders"
        for split, count in (("train", 8), ("val", 4)):
            for name in ("blue", "red"):
                (root / split / name).mkdir(parents=True)
                for i in range(count):
                    pixels = rng.integers(0, 255, size=(5, 5, 3), dtype=np.uint8)
                    image = Image.fromarray(pixels).resize((40, 40), Image.BICUBIC)
                    image.save(root / split / name / f"{i}.png")
        (root / "SHA256SUMS").write_text("")
        return root

    def for_section(self, heading: str) -> dict[str, object]:
        """README path -> a function giving what stands for it, per section."""
        data = self.tiny_data
        return {
            "### Example": {"runs/x/best": lambda: self.run_copy() / "best", "photos-test/": self.new_images},
            "### `resnetcls eval MODEL DATA [--out DIR]`": {
                "/tmp/m50": self.bare_model,
                "../shared/data/coil100-a/pose-split.csv": self.split_csv,
                "/tmp/ev50": lambda: self.tmp / "ev",
                "runs/x": self.run_copy,
                "photos/": lambda: data,
            },
            "### `resnetcls predict MODEL PATH...`": {
                "run": lambda: self.tiny_run,
                "data": lambda: data,
                "missing.jpg": lambda: "missing.jpg",
            },
            "### Predict": {
                "runs/ants": lambda: self.tiny_run,
                "photos/val/bees/1032546534_06907fe3b3.jpg": lambda: data / "blue" / "0.jpg",
                "photos/val/ants/desert_ant.jpg": lambda: data / "red" / "0.jpg",
            },
            "### Checking a data set": {
                "../shared/data/hymenoptera": self.split_folders,
                "/tmp/hym.json": lambda: self.tmp / "hym.json",
            },
        }[heading]

    def args(self, heading: str, words: list[str]) -> list[str]:
        """The README command's words with its paths replaced by their stand-ins."""
        stand_ins = self.for_section(heading)
        args = []
        for word in words[1:]:
            if word in stand_ins:
                args.append(str(stand_ins[word]()))
                continue
            assert not re.search(r"/|\.\w+$", word), f"{heading}: no stand-in for the README's path {word!r}"
            args.append(word)
        return args


SECTIONS = [
    "### Example",
    "### `resnetcls eval MODEL DATA [--out DIR]`",
    "### `resnetcls predict MODEL PATH...`",
    "### Predict",
    "### Checking a data set",
]


@pytest.mark.parametrize("heading", SECTIONS)
def test_the_readme_example_outputs_are_what_the_commands_print(heading, tiny_run, tiny_data, tmp_path):
    stand_ins = StandIns(tiny_run, tiny_data, tmp_path)
    for example in examples(heading):
        shown = f"README section {heading!r}, `{' '.join(example.words)}`"
        result = run_cli(*stand_ins.args(heading, example.words), cwd=tmp_path)
        assert result.returncode == example.exit_code, (
            f"{shown}: exit code {result.returncode}\n{result.stderr}"
        )
        why = mismatch(example.shown, result.stdout.splitlines(), result.stderr.splitlines())
        assert why is None, f"{shown}: {why}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        if example.words[1] == "predict" and "--format" not in example.words:
            topk = int(example.words[example.words.index("--topk") + 1]) if "--topk" in example.words else 5
            table = [line for line in example.shown if not re.match(r"\d+ of \d+ inputs", line)]  # no stderr
            table_columns(table, topk, f"{shown} (README)")
            table_columns(result.stdout.splitlines(), topk, f"{shown} (real output)")
