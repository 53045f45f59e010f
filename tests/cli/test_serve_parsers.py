"""serve's options one for one with the config's serve: section."""

import dataclasses

from resnetcls.cli.parsers import build_parser
from resnetcls.cli.serve_parsers import SERVE_OPTIONS
from resnetcls.config import ServeConfig
from tests.conftest import run_cli


def test_every_serve_option_is_a_key_of_the_serve_section_with_its_default_in_the_help():
    names = [name for name, _, _ in SERVE_OPTIONS]
    assert names == [field.name for field in dataclasses.fields(ServeConfig)]
    args = build_parser().parse_args(["serve", "m"])
    assert all(getattr(args, name) is None for name in names)  # not given: the config decides
    text = run_cli("serve", "--help").stdout
    assert "serve.max_batch" in text and "--config FILE" in text and "--set KEY=VALUE" in text
    assert "(default 127.0.0.1)" in text and "(default 8000)" in text
    bad = run_cli("serve", "m", "--max-batch", "0")
    assert bad.returncode == 2 and "argument --max-batch: must be between 1 and 4096, got 0" in bad.stderr
