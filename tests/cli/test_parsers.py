"""The parsers: flag values are checked by argparse (exit 2 naming the flag), and `--help` loads no torch."""
import subprocess
import sys

from tests.conftest import run_cli


def test_numbers_and_durations_are_checked_naming_the_flag():
    result = run_cli("predict", "m", "x.jpg", "--topk", "-1")
    assert result.returncode == 2 and "argument --topk: must be at least 1, got -1" in result.stderr
    result = run_cli("train", "d", "--time", "5 parsecs")
    assert result.returncode == 2 and "argument --time" in result.stderr and "'5 parsecs'" in result.stderr
    result = run_cli("rank", "m", "folder", "--out", "r.csv", "--limit", "0")
    assert result.returncode == 2 and "argument --limit: must be at least 1, got 0" in result.stderr
    result = run_cli("train", "d", "--lr", "fast")
    assert result.returncode == 2 and "argument --lr" in result.stderr


def test_help_lists_every_subcommand_without_loading_torch():
    code = ("import sys; from resnetcls.cli import build_parser; text = build_parser().format_help(); "
            "print(text); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for command in ("train", "lr-find", "lifelong", "eval", "predict", "rank", "export", "serve", "data", "env", "demo"):
        assert command in out
    assert out.strip().splitlines()[-1] == "False"
