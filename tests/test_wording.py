"""The repository speaks of the product only: no tracked file (README, docs, src, tests, bench, configs,
pyproject.toml, CHANGELOG.md) tells how or when resnetcls was made — no work-item numbers, no defaults
described as then and now, no absolute paths of a build machine — and product code never looks into
the shared test data. History belongs in CHANGELOG.md by version and in git log."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

# (what it is, the pattern); matched case-insensitively. Each word is split by a character class, and the
# planted lines below are joined from pieces, so this file passes the check it makes, like any other.
MAKING = (
    ("a work-item number", r"\biss[u]es? #?\d+|\(iss[u]e\b"),
    ("an account of the work", r"\b(?:previous|last|next|this|earlier|later) sess[i]on\b"),
    (
        "an account of the work",
        r"\b(?:earlier|later|previous) r[o]und\b|\br[o]und of work\b|\bwork it[e]ms?\b",
    ),
    ("a borrowed machine", r"\bl[e]nt\b"),
    ("then and now", r"\btoday[']s\b|\bprevious(?:ly)? def[a]ult\b|\bold def[a]ult\b"),
    ("a build machine's path", r"(?<![\w.])/(?:w[o]rk|r[o]ot)/|\.\./shared/DES[I]GN"),
)
PRODUCT_DIRS = ("src/",)  # product code and its packaged configs never reach for the shared test data
SHARED_DATA = re.compile(r"shared/data")
BINARY = (".png", ".jpg", ".jpeg", ".ico", ".gif", ".onnx", ".safetensors")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [ROOT / name for name in names if not name.endswith(BINARY) and (ROOT / name).is_file()]


def making_words(path: Path, text: str) -> list[str]:
    """'path:line: what it is: the words' for each line of text that speaks of the making."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in MAKING:
            match = re.search(pattern, line, re.IGNORECASE)
            if match:
                found.append(f"{path}:{number}: {what}: {match.group(0)!r}")
    return found


def test_the_checker_finds_each_kind_of_making_word():
    planted = [
        "fixed in " + "iss" + "ue 19",
        "see (" + "iss" + "ue 7)",
        "measured in the previous " + "sess" + "ion",
        "on the " + "le" + "nt GPU",
        "to" + "day's default is bf16",
        "the venv in /" + "work/venv",
        "an earlier " + "rou" + "nd of work",
    ]
    for line in planted:
        assert making_words(Path("x.md"), line), line
    clean = (
        "the ONNX session; the previous epoch; a default of 32; ../shared/data for tests; /home/ana/photos"
    )
    assert making_words(Path("x.md"), clean) == []


def test_no_tracked_file_speaks_of_the_making():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    found = []
    for path in tracked_text_files():
        found += making_words(path.relative_to(ROOT), path.read_text(encoding="utf-8", errors="replace"))
    assert not found, "\n".join(found)


def test_product_code_never_looks_into_the_shared_test_data():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    found = [
        str(path.relative_to(ROOT))
        for path in tracked_text_files()
        if str(path.relative_to(ROOT)).startswith(PRODUCT_DIRS) and SHARED_DATA.search(path.read_text())
    ]
    assert not found, found
