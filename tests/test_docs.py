"""The documentation site builds with `mkdocs build --strict`, its command-line reference names every command
and flag of the real parser, and the examples of every page (docs/**/*.md and README.md) run and print what
they show.

Runnable examples (docs/contributing.md explains them to writers):
- a ```console block whose first line starts with `$ ` is commands with their shown output: each `$ `
  command runs in order (bash, `resnetcls` and `python` being this interpreter's) and every line shown after
  it must be the next line it prints on stdout or stderr, with numbers, paths and class names as placeholders
  ("..." stands for skipped lines); a trailing `   <- stderr; exit code 2` remark names the exit code it
  must give (0 when none does). A predict table is also checked for its columns.
- a ```bash or ```python block directly preceded by the line `<!-- run -->` runs as it is and must exit 0; a
  python block is a script of its own (it imports what it uses).
- `<!-- skip: why -->` before a ```console block shows a session that cannot run here (a server, a GPU, the
  internet) without running it; `$ ` lines in a ```bash, ```sh or unlabelled block are refused, so a shown
  command is not left unchecked by mistake (a ```text block is plain text, never run).
Each page runs in a fresh working folder of its own holding only photos/ (3 classes, class per folder) and
held-out/ (the same classes, other images), with RESNETCLS_SET making every training tiny and
RESNETCLS_OFFLINE=1.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT

# The page's photos/: the names its examples show. Class names in shown output are placeholders; those of
# README.md's older examples are placeholders too.
PHOTO_CLASSES = {"cat": (200, 120, 40), "dog": (60, 60, 200), "bird": (40, 180, 60)}
CLASS_NAMES = ("ants", "bees", "bird", "blue", "cat", "dog", "green", "red")
# Every training an example starts is tiny, whatever its flags say (--time 10m included); fp32, because
# bf16's one-off kernel set-up costs a tiny run ten times its training.
TINY_SET = (
    "train.epochs=1 train.time_budget=0 model.name=resnet18 model.width=8 data.image_size=32 "
    "train.batch_size=16 data.num_workers=0 train.precision=fp32"
)
ENV_NOTE = "note: RESNETCLS_SET: "  # the tiny settings' note on stderr: the test's, not the example's
COMMAND_TIMEOUT = 600

PLACEHOLDERS = re.compile(
    r"(?P<path>[\w.~-]*(?:/[\w.~-]*)+|[\w.-]+\.(?:jpg|png|json|csv|onnx|pt|yaml|html))"
    r"|(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)"
    rf"|(?P<cls>\b(?:{'|'.join(CLASS_NAMES)})\b)"
    r"|(?P<gap> {2,})"
)
STAND_IN = {"path": r"\S+?", "num": r"\d+(?:\.\d+)?(?:e[+-]?\d+)?", "cls": r"[\w-]+", "gap": " {2,}"}
ANNOTATION = re.compile(r"\s+<- (?P<note>.*)$")  # "   <- stderr; exit code 2": a remark, not output
CELL = re.compile(r"[\w-]+ \(\d\.\d{3}\)")  # one (class, probability) cell of the predict table
TABLE_HEADER = re.compile(r"path {2,}top classes \(probability\)")
ELLIPSIS = "..."
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
RUN, SKIP = "<!-- run -->", re.compile(r"<!-- skip: .+ -->")
CONSOLE_LANGS, SCRIPT_LANGS = ("console", "shell-session"), {"bash": "bash", "sh": "bash", "python": "python"}
SHELL_LANGS = ("", "bash", "sh", "shell", "zsh")  # `$ ` lines there look run but would not be


# ---- reading a page ----------------------------------------------------------------------------------------


@dataclass
class Block:
    """A fenced block: its language, the line of its opening fence (1-based), its lines (indentation of the
    fence removed) and the marker line above it ("" when none)."""

    lang: str
    line: int
    lines: list[str]
    marker: str = ""


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown page, also those indented in tabs and admonitions."""
    blocks, lines, n = [], text.splitlines(), 0
    while n < len(lines):
        m = FENCE.match(lines[n])
        if not m:
            n += 1
            continue
        indent, fence = m.group("indent"), m.group("fence")
        above = next((lines[k].strip() for k in range(n - 1, -1, -1) if lines[k].strip()), "")
        block = Block(m.group("lang").lower(), n + 1, [], above if above.startswith("<!--") else "")
        n += 1
        while n < len(lines) and not re.fullmatch(rf" *{re.escape(fence[0])}{{{len(fence)},}}\s*", lines[n]):
            block.lines.append(lines[n].removeprefix(indent))
            n += 1
        blocks.append(block)
        n += 1
    return blocks


@dataclass
class Command:
    """One `$ ` command of a console block: the shell line, the lines shown after it, its expected exit code
    and the page line it is on."""

    shell: str
    shown: list[str]
    exit_code: int
    line: int


def console_commands(block: Block) -> list[Command]:
    """The `$ ` commands of a console block, a trailing backslash continuing a command on the next line."""
    commands: list[Command] = []
    continuing = False
    for offset, text in enumerate(block.lines, 1):
        if continuing:
            commands[-1].shell += "\n" + text.removeprefix("> ")
        elif text.startswith("$ "):
            commands.append(Command(text[2:], [], 0, block.line + offset))
        elif commands:
            commands[-1].shown.append(text)
        continuing = bool(commands) and text.rstrip().endswith("\\") and not commands[-1].shown
    for command in commands:
        while command.shown and not command.shown[-1].strip():
            command.shown.pop()
        notes = [
            m.group("note") for text in [command.shell, *command.shown] if (m := ANNOTATION.search(text))
        ]
        code = re.search(r"exit code (\d+)", " ".join(notes))
        command.exit_code = int(code.group(1)) if code else 0
        command.shell = ANNOTATION.sub("", command.shell)
        command.shown = [ANNOTATION.sub("", text) for text in command.shown]
    return commands


@dataclass
class Example:
    """A runnable example: a `$ ` command (with shown output) or a whole bash/python block."""

    kind: str  # "command", "bash" or "python"
    line: int
    source: str
    command: Command | None = None


def page_examples(path: Path, root: Path = ROOT) -> list[Example]:
    """The page's runnable examples in page order; a misplaced marker or a `$ ` line outside a console block
    fails, naming the page (relative to root) and the line."""
    where = path.relative_to(root)
    examples = []
    for block in fenced_blocks(path.read_text(encoding="utf-8")):
        first = next((text for text in block.lines if text.strip()), "")
        console = block.lang in CONSOLE_LANGS and first.startswith("$ ")
        if block.marker == RUN:
            assert block.lang in SCRIPT_LANGS, (
                f"{where}:{block.line}: {RUN} marks a ```{block.lang} block; it runs ```bash or ```python "
                "blocks (a ```console block with `$ ` lines runs without it)"
            )
            text = "\n".join(block.lines) + "\n"
            examples.append(Example(SCRIPT_LANGS[block.lang], block.line, text))
        elif console and not SKIP.fullmatch(block.marker):
            examples += [Example("command", c.line, c.shell, c) for c in console_commands(block)]
        elif block.lang in SHELL_LANGS and first.startswith("$ ") and not SKIP.fullmatch(block.marker):
            pytest.fail(
                f"{where}:{block.line}: a ```{block.lang or ' '} block shows `$ ` commands: make it "
                "```console (it is then run and checked) or put <!-- skip: why --> above it"
            )
    return examples


# ---- matching shown output ---------------------------------------------------------------------------------


def pattern(line: str) -> re.Pattern:
    """A shown line as a pattern: its words as written, numbers, paths and class names as placeholders,
    runs of two or more spaces (padding) as any such run; the indentation stays exact."""
    indent = len(line) - len(line.lstrip(" "))
    parts, end = [" " * indent], indent
    for m in PLACEHOLDERS.finditer(line, indent):
        parts += [re.escape(line[end : m.start()]), STAND_IN[m.lastgroup]]
        end = m.end()
    return re.compile("".join(parts) + re.escape(line[end:]))


def mismatch(shown: list[str], stdout: list[str], stderr: list[str]) -> str | None:
    """Why the shown lines are not the command's output (None when they are): each shown line must be the
    next line of stdout or of stderr; after "..." it may be any later line of either, the lines jumped over in
    both streams being the skipped ones (at least one); nothing may be left over except after a final "..."
    (every way to skip is tried)."""
    streams = (stdout, stderr)
    reached = [0]  # the furthest shown line any way of matching got to

    @functools.cache
    def fits(i: int, out: int, err: int, skipping: bool) -> bool:
        reached[0] = max(reached[0], i)
        at = (out, err)
        if i == len(shown):
            return skipping or at == (len(stdout), len(stderr))
        if shown[i] == ELLIPSIS:
            return fits(i + 1, out, err, True)
        regex = pattern(shown[i])
        for s in (0, 1):
            lines, other = streams[s], streams[1 - s]
            hits = range(at[s], len(lines) if skipping else min(at[s] + 1, len(lines)))
            for hit in (n for n in hits if regex.fullmatch(lines[n])):
                for moved in range(at[1 - s], len(other) + 1) if skipping else (at[1 - s],):
                    if skipping and hit == at[s] and moved == at[1 - s]:
                        continue  # "..." stands for at least one line
                    following = (hit + 1, moved) if s == 0 else (moved, hit + 1)
                    if fits(i + 1, *following, False):
                        return True
        return False

    if fits(0, 0, 0, False):
        return None
    if reached[0] < len(shown):
        return f"the line {shown[reached[0]]!r} is not what the command prints next"
    return 'the command prints lines the block does not show (and no "..." stands for them)'


def table_columns(rows: list[str], topk: int, where: str) -> None:
    """A predict table: a header, then per path either k (class, probability) cells or an error; the cells
    start at the same columns in every row, the first where the header's second column starts."""
    header, *body = [row for row in rows if row != ELLIPSIS]
    assert TABLE_HEADER.fullmatch(header), f"{where}: header {header!r}"
    first = header.index("top classes")
    starts = {tuple(m.start() for m in CELL.finditer(row)) for row in body if "ERROR: " not in row}
    assert len(starts) <= 1, (
        f"{where}: the class columns start at different places in different rows: {starts}"
    )
    for columns in starts:  # none when every row is an error
        assert len(columns) == topk and columns[0] == first, (
            f"{where}: cells at {columns}, header column {first}"
        )
    errors = {row.index("ERROR: ") for row in body if "ERROR: " in row}
    assert errors <= {first}, f"{where}: an error row does not start in the class column"


def check_predict_table(words: list[str], shown: list[str], stdout: str, where: str) -> None:
    """A `resnetcls predict` table shown with its header: the shown rows and the printed ones have k aligned
    (class, probability) columns."""
    if words[:2] != ["resnetcls", "predict"] or "--format" in words:
        return
    table = [
        line
        for line in shown
        if TABLE_HEADER.fullmatch(line) or CELL.search(line) or "ERROR: " in line or line == ELLIPSIS
    ]
    if not table or not TABLE_HEADER.fullmatch(table[0]):
        return
    topk = int(words[words.index("--topk") + 1]) if "--topk" in words else 5
    table_columns(table, topk, f"{where} (shown)")
    table_columns(stdout.splitlines(), topk, f"{where} (printed)")


# ---- running a page ----------------------------------------------------------------------------------------


def page_folder(root: Path) -> Path:
    """A page's working folder: photos/ (12 JPEGs of 40-48 x 40 px per class) and held-out/ (4 other images of
    each class), nothing else."""
    work = root / "work"
    textured_class_folders(work / "photos", per_class=12, seed=0)
    textured_class_folders(work / "held-out", per_class=4, seed=1)
    return work


def textured_class_folders(root: Path, per_class: int, seed: int) -> Path:
    """Class-per-folder images with texture (a class colour over smooth random texture, so the
    data check compares them as photographs, not flat images): trivially learnable, none alike."""
    rng = np.random.default_rng(seed)
    for name, colour in PHOTO_CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            texture = rng.integers(0, 256, size=(6, 6, 3)).astype(np.float32)
            pixels = (0.55 * np.asarray(colour, np.float32) + 0.45 * texture).astype(np.uint8)
            image = Image.fromarray(pixels).resize((40 + 2 * (i % 5), 40), Image.BICUBIC)
            image.save(root / name / f"{i}.jpg", quality=90)
    return root


def example_env(root: Path) -> dict[str, str]:
    """The environment of every example: `resnetcls` and `python` are this interpreter's, trainings tiny,
    nothing fetched, caches in the page's temporary folder."""
    shims = root / "bin"
    shims.mkdir()
    for name, run in (("resnetcls", f'"{sys.executable}" -m resnetcls'), ("python", f'"{sys.executable}"')):
        (shims / name).write_text(f'#!/bin/sh\nexec {run} "$@"\n')
        (shims / name).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}",
        "RESNETCLS_SET": TINY_SET,
        "RESNETCLS_OFFLINE": "1",
        "RESNETCLS_CACHE": str(root / "cache"),
        "TORCH_HOME": str(root / "torch"),
    }


EXAMPLE_KEYS = (
    "RESNETCLS_SET",
    "RESNETCLS_OFFLINE",
    "RESNETCLS_CACHE",
    "TORCH_HOME",
)  # what example_env sets


SHELL_SYNTAX = re.compile(r"[|&;<>$`*?(){}~\\]")  # a line with any of these needs the shell


def plain_commands(source: str) -> list[list[str]] | None:
    """The argument lists of source when every line is a plain `resnetcls ...` command (comments and blank
    lines aside), else None: those run in this process, as tests.conftest.run_cli does, saving the seconds
    a fresh interpreter spends importing torch for each."""
    commands = []
    for line in source.splitlines():
        if SHELL_SYNTAX.search(line.split("#")[0]):
            return None
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] != "resnetcls":
            return None
        commands.append(words[1:])
    return commands or None


def run_in_process(commands: list[list[str]], work: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Each command through cli.main in this process, with the example's environment, stopping at the first
    that fails (bash -e)."""
    from tests.runner import run_main

    saved = dict(os.environ)
    os.environ.update({key: env[key] for key in EXAMPLE_KEYS})
    code, out, err = 0, [], []
    try:
        for args in commands:
            code, stdout, stderr = run_main(args, str(work))
            out.append(stdout)
            err.append(stderr)
            if code:
                break
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(commands, code, "".join(out), "".join(err))


def run_example(example: Example, work: Path, env: dict[str, str], where: str) -> None:
    shell = example.command.shell if example.command else example.source
    plain = plain_commands(shell) if example.kind != "python" else None
    if plain:
        result = run_in_process(plain, work, env)
    else:
        if example.kind == "python":
            script = work.parent / f"block-{example.line}.py"
            script.write_text(example.source, encoding="utf-8")
            argv = [sys.executable, str(script)]
        elif example.kind == "bash":
            argv = ["bash", "-e", "-o", "pipefail", "-c", example.source]
        else:
            argv = ["bash", "-c", shell]
        result = subprocess.run(
            argv, cwd=work, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    stderr = [line for line in result.stderr.splitlines() if not line.startswith(ENV_NOTE)]
    expected = example.command.exit_code if example.command else 0
    output = f"\n--- stdout:\n{result.stdout[-4000:]}\n--- stderr:\n{chr(10).join(stderr)[-4000:]}"
    assert result.returncode == expected, (
        f"{where}: exit code {result.returncode}, expected {expected}:\n{example.source}{output}"
    )
    if example.command:
        why = mismatch(example.command.shown, result.stdout.splitlines(), stderr)
        assert why is None, f"{where}: `{example.source}`: {why}{output}"
        words = shlex.split(example.source, comments=True)
        check_predict_table(words, example.command.shown, result.stdout, f"{where}: `{example.source}`")


# ---- the tests ---------------------------------------------------------------------------------------------


def pages() -> list[Path]:
    """Every Markdown page of the site and README.md. README.md joins once tests/test_readme.py, which runs
    its older examples on stand-ins for their paths, is gone."""
    found = sorted(
        p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.relative_to(ROOT / "docs").parts
    )
    if not (ROOT / "tests" / "test_readme.py").exists():
        found.append(ROOT / "README.md")
    return found


class ExampleCounts:
    """Per page, how many examples ran and how long they took, shown at the end of the pytest run."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[int, float]] = {}

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.rows:
            return
        terminalreporter.section("runnable documentation examples")
        for page, (count, seconds) in sorted(self.rows.items()):
            terminalreporter.write_line(f"{page}: {plural(count)} ran in {seconds:.1f} s")
        total = sum(count for count, _ in self.rows.values())
        seconds = sum(s for _, s in self.rows.values())
        pages = f"{len(self.rows)} page" + ("" if len(self.rows) == 1 else "s")
        terminalreporter.write_line(f"{pages}: {plural(total)} in {seconds:.1f} s")


def plural(count: int) -> str:
    return f"{count} example" + ("" if count == 1 else "s")


@pytest.fixture(scope="module")
def example_counts(request) -> ExampleCounts:
    counts = ExampleCounts()
    request.config.pluginmanager.register(counts, "resnetcls-doc-example-counts")
    return counts


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_page_examples_run_and_print_what_they_show(page, tmp_path, example_counts):
    examples = page_examples(page)
    name = str(page.relative_to(ROOT))
    started = time.monotonic()
    if examples:
        work, env = page_folder(tmp_path), example_env(tmp_path)
        for example in examples:
            run_example(example, work, env, f"{name}:{example.line}")
    example_counts.rows[name] = (len(examples), time.monotonic() - started)


def has_mkdocs() -> bool:
    return all(importlib.util.find_spec(name) for name in ("mkdocs", "material", "mkdocstrings_handlers"))


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    if not has_mkdocs():
        pytest.skip(
            "mkdocs, mkdocs-material or mkdocstrings-python is not installed (pip install -e '.[docs]')"
        )
    site = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    return site


def test_the_site_builds_with_strict_checks(built_site):
    assert (built_site / "index.html").is_file() and (
        built_site / "reference" / "api" / "index.html"
    ).is_file()


def parser_commands(parser, name: str = "resnetcls"):
    """(command name, its option strings) for the program and every command and sub-command."""
    import argparse

    shown = [a for a in parser._actions if a.help != argparse.SUPPRESS]  # not hidden old spellings
    options = [s for a in shown for s in a.option_strings if s not in ("-h", "--help")]
    yield name, options
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parser_commands(sub, f"{name} {sub_name}")


def test_the_cli_reference_names_every_command_and_flag_of_the_parser(built_site):
    import html

    from resnetcls.cli import build_parser

    text = (built_site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    by_name = {}
    for section in re.split(r"<h[2-4] id=", text)[1:]:
        heading, _, body = section.partition('<a class="headerlink"')
        by_name[html.unescape(re.sub(r"<[^>]+>|^[^>]*>", "", heading)).strip()] = html.unescape(body)
    for name, options in parser_commands(build_parser()):
        assert name in by_name, f"the CLI reference has no section for `{name}`"
        missing = [option for option in options if option not in by_name[name]]
        assert not missing, f"the CLI reference's `{name}` does not name {missing}"


# ---- the runner's own rules --------------------------------------------------------------------------------


def test_a_line_pattern_keeps_the_words_and_padding_and_frees_numbers_paths_and_classes():
    headline = pattern("900 images (val): top1 0.0156  top5 0.1111")
    assert headline.fullmatch("12 images (val): top1 1.0000  top5 1.0000")
    assert not headline.fullmatch("12 held-out images (val): top1 1.0000  top5 1.0000")
    assert not headline.fullmatch("12 images (val): top1 1.0000 top5 1.0000")  # the double space is kept
    row = pattern("data/blue/0.jpg    blue (0.355)   green (0.329)")
    assert row.fullmatch("/tmp/x/red/11.jpg  red (0.476)  blue (0.284)")
    assert not row.fullmatch("data/blue/0.jpg\tblue 0.355  green 0.329")  # tab-separated, no parentheses
    assert pattern("max |dprob| 8.94e-08 (limit 1e-04)").fullmatch("max |dprob| 0.00e+00 (limit 1e-04)")
    assert pattern("  bad files: 0").fullmatch("  bad files: 12") and not pattern("  bad files: 0").fullmatch(
        "bad files: 0"
    )


def test_a_mismatch_names_the_line_that_drifted_and_the_lines_left_over():
    out, err = ["3 images (all): top1 1.0000"], ["written to runs/x/eval/"]
    assert mismatch(["written to a/b/", "3 images (all): top1 0.5000"], out, err) is None
    assert "'2 held-out images" in mismatch(["2 held-out images (all): top1 0.5000"], out, err)
    assert "lines the block does not show" in mismatch(["3 images (all): top1 0.5000"], out, err)
    assert mismatch(["3 images (all): top1 0.5000", ELLIPSIS], out, []) is None
    assert mismatch(["3 images (all): top1 0.5000", ELLIPSIS], out, err) is None  # a final "..." skips both
    progress, result = ["step 1", "step 2", "step 3"], ["suggested lr 0.004"]
    assert mismatch(["step 1", ELLIPSIS, "suggested lr 0.001"], result, progress) is None  # across streams
    assert "does not show" in mismatch(["step 1", "suggested lr 0.001"], result, progress)  # steps 2, 3
    rows = ["a/1.jpg  red (0.500)", "a/2.jpg  red (0.500)", "a/3.jpg  red (0.500)"]
    assert mismatch([rows[0], ELLIPSIS, rows[2]], rows, []) is None
    assert "is not what the command prints next" in mismatch([rows[0], ELLIPSIS, rows[1]], rows[:2], [])


PAGE = """# A page

<!-- run -->
```bash
resnetcls train photos --time 10m
```

=== "Python"

    <!-- run -->
    ```python
    import resnetcls
    ```

```console
$ resnetcls eval runs/latest held-out/ \\
>     --out ev
12 images: top1 1.0000
$ resnetcls predict runs/latest missing.jpg   <- exit code 2
resnetcls: error: missing.jpg: no such file   <- stderr; exit code 2
```

```text
output only
```

<!-- skip: it serves until stopped -->
```console
$ resnetcls serve runs/latest
```
"""


def test_a_page_gives_its_marked_blocks_and_console_commands_in_order(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text(PAGE)
    examples = page_examples(page, tmp_path)
    assert [(e.kind, e.line) for e in examples] == [
        ("bash", 4),
        ("python", 11),
        ("command", 16),
        ("command", 19),
    ]
    assert examples[1].source == "import resnetcls\n"
    eval_, predict = examples[2].command, examples[3].command
    assert eval_.shell == "resnetcls eval runs/latest held-out/ \\\n    --out ev" and eval_.exit_code == 0
    assert eval_.shown == ["12 images: top1 1.0000"]
    assert predict.shell == "resnetcls predict runs/latest missing.jpg" and predict.exit_code == 2
    assert predict.shown == ["resnetcls: error: missing.jpg: no such file"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("<!-- run -->\n```console\n$ resnetcls env\n```\n", "<!-- run --> marks a ```console block"),
        ("text\n```bash\n$ resnetcls env\n```\n", "a ```bash block shows `$ ` commands: make it ```console"),
    ],
)
def test_a_misplaced_marker_or_a_command_outside_a_console_block_fails_naming_the_line(
    tmp_path, text, message
):
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n" + text)
    with pytest.raises((AssertionError, pytest.fail.Exception), match=re.escape(message)) as caught:
        page_examples(page, tmp_path)
    assert str(caught.value).startswith("page.md:4: ")
