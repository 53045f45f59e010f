"""The parsers: flag values are checked by argparse (exit 2 naming the flag), and `--help` loads no torch."""

import argparse
import os
import subprocess
import sys

from resnetcls.cli.parsers import build_parser
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
    code = (
        "import sys; from resnetcls.cli import build_parser; text = build_parser().format_help(); "
        "print(text); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for command in (
        "train",
        "lr-find",
        "lifelong",
        "eval",
        "predict",
        "rank",
        "export",
        "serve",
        "data",
        "env",
        "demo",
    ):
        assert command in out
    assert out.strip().splitlines()[-1] == "False"


def _actions(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, (*prefix, name))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield " ".join(prefix), action


def test_every_option_says_what_it_does_and_its_default():
    missing, no_default = [], []
    for command, action in _actions(build_parser()):
        name = "/".join(action.option_strings) or action.metavar or action.dest
        if not action.help:
            missing.append(f"{command} {name}")
        elif (
            action.option_strings
            and action.default not in (None, False, [], "")
            and "default" not in action.help
        ):
            no_default.append(f"{command} {name}")
    assert not missing and not no_default, (missing, no_default)
    text = subprocess.run(
        [sys.executable, "-m", "resnetcls", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert "idle or half-sent connections do not count (default 64)" in text  # %(default)s rendered


def test_every_inference_command_offers_every_backend_and_precision_the_predictor_runs():
    from resnetcls.inference.predictor import BACKENDS, PRECISIONS

    options = {}
    for name, action in _actions(build_parser()):
        if {"--backend", "--precision"} & set(action.option_strings):
            options.setdefault(name, []).append(list(action.choices))
    assert set(options) == {
        *("eval", "predict", "rank", "serve", "train", "tune", "lr-find", "lifelong", "embed", "similar")
    }
    for name in ("eval", "predict", "rank", "serve"):
        assert options[name] == [list(BACKENDS), list(PRECISIONS)], name
    for name in ("embed", "similar"):  # features come from the eager model: a precision, no backend
        assert options[name] == [list(PRECISIONS)], name
    for name in ("train", "tune", "lr-find", "lifelong"):  # training's precision: fp16 too
        assert options[name] == [["auto", "bf16", "fp16", "fp32"]], name
