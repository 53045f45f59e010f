"""The command line: usage errors exit 2 without a traceback, --version, and `python -m resnetcls`."""

import subprocess
import sys

from resnetcls import __version__
from tests.conftest import run_cli


def test_a_usage_error_exits_2_naming_the_problem():
    result = run_cli("train")
    assert result.returncode == 2 and "DATA is required" in result.stderr and "Traceback" not in result.stderr
    assert run_cli("no-such-command").returncode == 2


def test_version_and_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "resnetcls", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"resnetcls {__version__}"
