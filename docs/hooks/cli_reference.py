"""MkDocs hook: the command-line reference (docs/reference/cli.md) written from resnetcls's argparse parsers
at build time, so it cannot drift from them: every command and sub-command with its usage, description and
every argument with its help, choices and default. The page's marker line is replaced by that text."""

from __future__ import annotations

import argparse
import html
import os
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

PAGE = "reference/cli.md"
MARKER = "<!-- commands: written from the parsers at build time -->"
USAGE_WIDTH = 100  # argparse wraps usage at $COLUMNS: the same page on every terminal


def on_config(config):
    """Document the checkout being built: its src/ comes before any installed resnetcls."""
    src = str(Path(config.config_file_path).resolve().parent / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    return config


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"{PAGE}: the line {MARKER!r} is missing; the hook writes the commands there")
    from resnetcls.cli import build_parser

    return markdown.replace(MARKER, cli_markdown(build_parser()))


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """The whole reference: the top-level options, then one section per command, sub-commands nested."""
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(USAGE_WIDTH)
    try:
        return "\n".join(command_sections(parser, parser.prog, level=2))
    finally:
        os.environ.pop("COLUMNS") if columns is None else os.environ.update(COLUMNS=columns)


def command_sections(parser: argparse.ArgumentParser, name: str, level: int) -> list[str]:
    lines = [f"{'#' * level} `{name}`", ""]
    sub_help = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub_help.update({choice.dest: choice.help for choice in action._choices_actions})
    if parser.description:
        lines += [text(parser.description), ""]
    lines += ["```text", parser.format_usage().rstrip(), "```", ""]
    arguments = [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]
    arguments = [a for a in arguments if a.help != argparse.SUPPRESS]
    if level > 2:  # -h is said once, for the program
        arguments = [a for a in arguments if not isinstance(a, argparse._HelpAction)]
    if arguments:
        lines += [argument_line(parser, action) for action in arguments] + [""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                sub_lines = command_sections(sub, f"{name} {sub_name}", min(level + 1, 4))
                if sub_help.get(sub_name) and not sub.description:
                    sub_lines[2:2] = [text(sub_help[sub_name]), ""]
                lines += sub_lines
    return lines


def argument_line(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """One argument as a list item: its flags and metavar in code, its help, its choices and its default."""
    if action.option_strings:
        shown = ", ".join(action.option_strings)
        if action.nargs != 0:
            shown += " " + metavar(action, action.dest.upper())
    else:
        shown = metavar(action, action.dest)
    parts = [f"- `{shown}`"]
    if action.help:
        helped = text(expand_help(parser, action))
        parts.append(": " + helped + ("" if helped.endswith((".", ")")) else "."))
    if action.choices and not isinstance(action.choices, dict):
        parts.append(" Choices: " + ", ".join(f"`{choice}`" for choice in action.choices) + ".")
    if action.option_strings and action.default not in (None, False, [], "", argparse.SUPPRESS):
        parts.append(f" Default: `{action.default}`.")
    return "".join(parts)


def metavar(action: argparse.Action, fallback: str) -> str:
    if isinstance(action.metavar, tuple):
        return " ".join(action.metavar)
    if action.metavar:
        return action.metavar
    if action.choices:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return fallback


def expand_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help as `--help` prints it: %(default)s and the like filled in, %% as %."""
    params = {**vars(action), "prog": parser.prog}
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return action.help % params


def text(words: str) -> str:
    """Help text as Markdown: backquoted parts stay code, the rest is escaped so that <, >, &, *, _ and [
    show as written (no emphasis, no link)."""
    pieces = words.split("`")
    for i in range(0, len(pieces), 2):  # outside backquotes
        escaped = html.escape(pieces[i], quote=False)
        pieces[i] = escaped.replace("*", r"\*").replace("_", r"\_").replace("[", r"\[")
    return "`".join(pieces)
