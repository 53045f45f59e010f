"""The training flags on the command line come from the one table: each command's --help shows exactly its
rows, the values arrive typed and checked, and the parsed flags map to the config as the API's keywords do."""

import argparse

import pytest

from resnetcls.cli.flags import add_config_flags, duration, number, or_auto, table_values
from resnetcls.cli.parsers import build_parser
from resnetcls.config.flags import FLAGS, flag_settings, flags_of
from tests.conftest import run_cli


def subparser(command: str) -> argparse.ArgumentParser:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


@pytest.mark.parametrize("command", ["train", "tune", "lr-find", "lifelong"])
def test_each_training_command_offers_exactly_its_rows_of_the_table(command):
    parser = subparser(command)
    helps = {option: action.help for action in parser._actions for option in action.option_strings}
    text = parser.format_help()
    for flag in FLAGS:
        from_table = helps.get(flag.option) == flag.help  # tune's --time is its own: another help
        assert from_table == (command in flag.commands), (command, flag.option)
        assert not from_table or f"{flag.option} " in text


def test_parsed_flags_map_to_the_same_settings_as_the_apis_keywords():
    args = build_parser().parse_args(
        ["train", "d", "--batch-size", "auto", "--lr", "0.5", "--precision", "fp16", "--epochs", "4"]
    )
    values = table_values(args, "train")
    assert set(values) == {flag.name for flag in flags_of("train")}
    assert (values["batch_size"], values["lr"], values["precision"], values["epochs"]) == (
        "auto",
        0.5,
        "fp16",
        4,
    )
    assert values["model"] is None  # not given: the config decides
    assert flag_settings(values)["train.precision"] == "fp16"
    args = build_parser().parse_args(["lifelong", "a", "b", "--strategy", "replay", "--buffer-size", "0"])
    assert flag_settings(table_values(args, "lifelong"), "lifelong")["lifelong.buffer_size"] == 0


def test_values_are_checked_naming_the_flag():
    result = run_cli("train", "d", "--precision", "fp8")
    assert result.returncode == 2 and "argument --precision: invalid choice: 'fp8'" in result.stderr
    result = run_cli("lifelong", "d", "--epochs", "0")
    assert result.returncode == 2 and "argument --epochs: must be at least 1, got 0" in result.stderr
    result = run_cli("train", "d", "--strategy", "ewc")  # lifelong's flag, not train's
    assert result.returncode == 2 and "unrecognized arguments: --strategy" in result.stderr
    result = run_cli("lr-find", "d", "--batch-size", "auto")
    assert result.returncode == 2 and "--batch-size auto: not in lr-find" in result.stderr


def test_the_argparse_types():
    assert number(int, 1, 10)("3") == 3 and number(float, 0, low_open=True)("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="must be greater than 0, got 0"):
        number(float, 0, low_open=True)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="expected an integer, got 'x'"):
        number(int)("x")
    assert duration("20m") == "20m"
    with pytest.raises(argparse.ArgumentTypeError, match="'soon'"):
        duration("soon")
    assert or_auto(number(int))("auto") == "auto" and or_auto(number(int))("7") == 7


def test_config_and_set_flags(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the help on one line, unwrapped
    parser = argparse.ArgumentParser()
    add_config_flags(parser, "default")
    args = parser.parse_args(["--config", "c.yaml", "--set", "a.b=1", "--set", "c.d=2"])
    assert (args.config, args.overrides) == ("c.yaml", ["a.b=1", "c.d=2"])
    assert "a packaged recipe (default, finetune, " in parser.format_help()
    assert ", small-data) or a YAML file, e.g. default (default: none)" in parser.format_help()


def test_no_auto_recipe_is_one_flag_that_turns_the_recipe_off():
    values = table_values(build_parser().parse_args(["train", "d", "--no-auto-recipe"]), "train")
    assert flag_settings(values)["train.auto_recipe"] is False
    values = table_values(build_parser().parse_args(["train", "d"]), "train")
    assert flag_settings(values)["train.auto_recipe"] is None  # not given: the config decides (on)
    assert flag_settings({"auto_recipe": False})["train.auto_recipe"] is False  # the API's keyword
    assert "--no-auto-recipe" in subparser("train").format_help()
    result = run_cli("tune", "d", "--no-auto-recipe")
    assert result.returncode == 2 and "unrecognized arguments: --no-auto-recipe" in result.stderr
