"""The packaged recipes: `--config NAME` finds them wherever resnetcls is installed; a path reads as
before."""

import fnmatch
import importlib.resources
import tomllib

import pytest

from resnetcls.config import build_config, config_to_dict
from resnetcls.config.recipes import is_recipe_name, recipe_names, recipes_dir, resolve_config_file
from resnetcls.errors import UserError
from tests.conftest import ROOT

PACKAGED = ROOT / "src" / "resnetcls" / "configs"
NAMES = [
    "default",
    "finetune",
    "lifelong-coil100",
    "lifelong-coil100-classes",
    "lifelong-synth",
    "lifelong-synth-classes",
    "seed",
    "serve",
    "small-data",
]


def test_the_recipes_are_package_resources_and_listed_by_name():
    assert recipe_names() == NAMES
    resources = importlib.resources.files("resnetcls").joinpath("configs")
    assert (
        sorted(r.name.removesuffix(".yaml") for r in resources.iterdir() if r.name.endswith(".yaml")) == NAMES
    )
    assert recipes_dir().samefile(PACKAGED)


def test_pyproject_ships_every_recipe_in_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    patterns = setuptools["package-data"]["resnetcls"]
    for path in PACKAGED.iterdir():
        assert any(fnmatch.fnmatch(f"configs/{path.name}", p) for p in patterns), path.name


@pytest.mark.parametrize("name", NAMES)
def test_a_name_reads_the_same_config_as_the_packaged_files_path(name):
    assert config_to_dict(build_config(name)) == config_to_dict(build_config(PACKAGED / f"{name}.yaml"))


def test_small_data_by_name_is_the_small_data_recipe():
    cfg = build_config("small-data")
    assert (cfg.model.name, cfg.data.image_size, cfg.data.augment) == ("resnet18", 128, "trivialaugment")


def test_names_are_words_without_a_folder_or_yaml_suffix():
    assert is_recipe_name("small-data") and is_recipe_name("nosuch")
    assert not is_recipe_name("small-data.yaml") and not is_recipe_name("r.YML")
    assert not is_recipe_name("configs/small-data") and not is_recipe_name("./default")


def test_an_unknown_name_is_one_line_listing_the_packaged_recipes():
    with pytest.raises(UserError) as caught:
        resolve_config_file("nosuch")
    assert str(caught.value) == (
        "--config nosuch: no such file, and not a packaged recipe; packaged recipes: " + ", ".join(NAMES)
    )


def test_an_existing_file_is_read_as_given_even_with_a_recipes_name(tmp_path, monkeypatch):
    (tmp_path / "seed").write_text("train:\n  epochs: 3\n")
    (tmp_path / "mine.yaml").write_text("train:\n  epochs: 4\n")
    monkeypatch.chdir(tmp_path)
    assert build_config("seed").train.epochs == 3
    assert build_config(tmp_path / "mine.yaml").train.epochs == 4
    assert build_config("mine.yaml").train.epochs == 4


def test_a_missing_configs_path_of_a_packaged_recipe_reads_it_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    cfg = build_config("configs/small-data.yaml")
    assert config_to_dict(cfg) == config_to_dict(build_config("small-data"))
    assert capsys.readouterr().err == (
        "configs/small-data.yaml: not found here; reading the packaged recipe (write --config small-data)\n"
    )


def test_any_other_missing_path_is_still_not_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("configs/nosuch.yaml", "elsewhere/small-data.yaml", "small-data.yaml"):
        with pytest.raises(UserError, match=f"^{path}: config file not found$"):
            build_config(path)
