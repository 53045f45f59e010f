"""README's example outputs are what the commands print. Each `$ resnetcls ...` block under the sections below
is run on the tiny run and tiny data (the README's paths stand for them), and every line it shows must be the
next line the command prints on stdout or stderr, with numbers, paths and class names as placeholders; the
command may print no line the block leaves out ("..." stands for the lines a block skips). A predict table
is also checked for its columns: every row a path and k (class, probability) cells, each column aligned.
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

# The classes of the data the README's examples ran on and of the tiny data: names, not words of the output.
CLASS_NAMES = ("ants", "bees", "blue", "green", "red")
PLACEHOLDERS = re.compile(
    r"(?P<path>[\w.~-]*(?:/[\w.~-]*)+|[\w.-]+\.(?:jpg|png|json|csv))"
    r"|(?P<num>\d+(?:\.\d+)?)"
    rf"|(?P<cls>\b(?:{'|'.join(CLASS_NAMES)})\b)"
    r"|(?P<gap> {2,})"
)
STAND_IN = {"path": r"\S+?", "num": r"\d+(?:\.\d+)?", "cls": r"[\w-]+", "gap": " {2,}"}
ANNOTATION = re.compile(r"\s+<- (?P<note>.*)$")  # "   <- stderr; exit code 2": the README's remark
CELL = re.compile(r"[\w-]+ \(\d\.\d{3}\)")  # one (class, probability) cell of the predict table
ELLIPSIS = "..."


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


def pattern(line: str) -> re.Pattern:
    """The README line as a pattern: its words as written, numbers, paths and class names as placeholders,
    runs of two or more spaces (padding) as any such run; the indentation stays exact."""
    indent = len(line) - len(line.lstrip(" "))
    parts, end = [" " * indent], indent
    for m in PLACEHOLDERS.finditer(line, indent):
        parts += [re.escape(line[end : m.start()]), STAND_IN[m.lastgroup]]
        end = m.end()
    return re.compile("".join(parts) + re.escape(line[end:]))


def mismatch(shown: list[str], stdout: list[str], stderr: list[str]) -> str | None:
    """Why the README lines are not the command's output (None when they are): each shown line must be the
    next line of stdout or of stderr, or after "..." a later one of the same stream (at least one skipped;
    every way to skip is tried); nothing may be left over except after a final "..."."""
    streams = (stdout, stderr)
    reached = [0]  # the furthest README line any way of matching got to

    def fits(i: int, at: tuple[int, int], last: int, skipping: bool) -> bool:
        reached[0] = max(reached[0], i)
        if i == len(shown):
            ends = [len(streams[last]) if skipping and s == last else at[s] for s in (0, 1)]
            return ends == [len(stdout), len(stderr)]
        if shown[i] == ELLIPSIS:
            return fits(i + 1, at, last, True)
        regex = pattern(shown[i])
        for s in (last, 1 - last):
            lines = streams[s]
            tries = range(at[s] + 1, len(lines)) if skipping else range(at[s], min(at[s] + 1, len(lines)))
            for hit in (n for n in tries if regex.fullmatch(lines[n])):
                following = (hit + 1, at[1]) if s == 0 else (at[0], hit + 1)
                if fits(i + 1, following, s, False):
                    return True
        return False

    if fits(0, (0, 0), 0, False):
        return None
    if reached[0] < len(shown):
        return f"the line {shown[reached[0]]!r} is not what the command prints next"
    return 'the command prints lines the block does not show (and no "..." stands for them)'


def table_columns(rows: list[str], topk: int, where: str) -> None:
    """A predict table: a header, then per path either k (class, probability) cells or an error; the cells
    start at the same columns in every row, the first where the header's second column starts."""
    header, *body = [row for row in rows if row != ELLIPSIS]
    assert re.fullmatch(r"path {2,}top classes \(probability\)", header), f"{where}: header {header!r}"
    first = header.index("top classes")
    starts = {tuple(m.start() for m in CELL.finditer(row)) for row in body if "ERROR: " not in row}
    assert len(starts) == 1, (
        f"{where}: the class columns start at different places in different rows: {starts}"
    )
    (columns,) = starts
    assert len(columns) == topk and columns[0] == first, f"{where}: cells at {columns}, header column {first}"
    errors = {row.index("ERROR: ") for row in body if "ERROR: " in row}
    assert errors <= {first}, f"{where}: an error row does not start in the class column"


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


def test_a_line_pattern_keeps_the_words_and_padding_and_frees_numbers_paths_and_classes():
    headline = pattern("900 images (val): top1 0.0156  top5 0.1111")
    assert headline.fullmatch("12 images (val): top1 1.0000  top5 1.0000")
    assert not headline.fullmatch("12 held-out images (val): top1 1.0000  top5 1.0000")
    assert not headline.fullmatch("12 images (val): top1 1.0000 top5 1.0000")  # the double space is kept
    row = pattern("data/blue/0.jpg    blue (0.355)   green (0.329)")
    assert row.fullmatch("/tmp/x/red/11.jpg  red (0.476)  blue (0.284)")
    assert not row.fullmatch("data/blue/0.jpg\tblue 0.355  green 0.329")  # tab-separated, no parentheses
    assert pattern("  bad files: 0").fullmatch("  bad files: 12") and not pattern("  bad files: 0").fullmatch(
        "bad files: 0"
    )


def test_a_mismatch_names_the_line_that_drifted_and_the_lines_left_over():
    out, err = ["3 images (all): top1 1.0000"], ["written to runs/x/eval/"]
    assert mismatch(["written to a/b/", "3 images (all): top1 0.5000"], out, err) is None
    assert "'2 held-out images" in mismatch(["2 held-out images (all): top1 0.5000"], out, err)
    assert "lines the block does not show" in mismatch(["3 images (all): top1 0.5000"], out, err)
    assert mismatch(["3 images (all): top1 0.5000", ELLIPSIS], out, []) is None
    rows = ["a/1.jpg  red (0.500)", "a/2.jpg  red (0.500)", "a/3.jpg  red (0.500)"]
    assert mismatch([rows[0], ELLIPSIS, rows[2]], rows, []) is None
    assert "is not what the command prints next" in mismatch([rows[0], ELLIPSIS, rows[1]], rows[:2], [])
