"""UserError is what a user sees: one line naming what is wrong, exit code 2, no traceback."""

from resnetcls.cli import COMMANDS, main
from resnetcls.errors import UserError


def test_a_user_error_becomes_one_line_and_exit_2(monkeypatch, capsys):
    def failing(args):
        raise UserError("photos/x.csv:3: empty label")

    monkeypatch.setitem(COMMANDS, "models", failing)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "resnetcls: error: photos/x.csv:3: empty label\n"
