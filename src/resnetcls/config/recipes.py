"""The recipes that ship inside the package (resnetcls/configs/*.yaml) and what `--config` names.

`--config small-data` (no slash, no .yaml) is a packaged recipe; anything else is a path. A path that does
not exist but ends in configs/NAME.yaml, NAME a packaged recipe (the repository-relative form, typed outside
a source checkout or in one), reads the packaged recipe with a one-line note.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from pathlib import Path

from ..errors import UserError

SUFFIXES = (".yaml", ".yml")


def recipes_dir() -> Path:
    """The folder of the packaged recipes, wherever resnetcls is installed."""
    return Path(str(importlib.resources.files("resnetcls").joinpath("configs")))


def recipe_names() -> list[str]:
    """The packaged recipes' names, sorted: what `--config NAME` accepts."""
    return sorted(path.stem for path in recipes_dir().glob("*.yaml"))


def is_recipe_name(text: str) -> bool:
    """True when --config's value is a name rather than a path: no folder and no .yaml/.yml."""
    return "/" not in text and os.sep not in text and not text.lower().endswith(SUFFIXES)


def recipe_path(name: str) -> Path:
    """The packaged recipe called name; an unknown name is a UserError listing the packaged ones."""
    if name in recipe_names():
        return recipes_dir() / f"{name}.yaml"
    names = ", ".join(recipe_names())
    raise UserError(f"--config {name}: no such file, and not a packaged recipe; packaged recipes: {names}")


def resolve_config_file(config_file: str | os.PathLike) -> Path:
    """The YAML file that --config's value names: an existing file, a packaged recipe's name, or (a missing
    configs/NAME.yaml of a packaged recipe) the packaged recipe, with a note on stderr."""
    path = Path(config_file)
    text = os.fspath(config_file)
    if path.is_file():
        return path
    if is_recipe_name(text):
        return recipe_path(text)
    if path.parent.name == "configs" and path.suffix == ".yaml" and path.stem in recipe_names():
        print(
            f"{text}: not found here; reading the packaged recipe (write --config {path.stem})",
            file=sys.stderr,
        )
        return recipe_path(path.stem)
    return path
