"""RESNETCLS_SET: KEY=VALUE pairs from the environment, quoted as in a shell; a malformed one is a one-line
error naming the variable; the note says which settings came from there."""

import pytest

from resnetcls.config.environment import ENV_NAME, environment_note, environment_overrides
from resnetcls.errors import UserError


def test_pairs_are_split_on_white_space_and_quotes_keep_a_value_with_spaces_whole():
    environ = {ENV_NAME: "  train.epochs=1\tmodel.width=8\n 'data.mean=[0.5, 0.5, 0.5]' "}
    assert environment_overrides(environ) == ["train.epochs=1", "model.width=8", "data.mean=[0.5, 0.5, 0.5]"]


def test_unset_or_blank_is_nothing(monkeypatch):
    monkeypatch.delenv(ENV_NAME, raising=False)
    assert environment_overrides() == []
    monkeypatch.setenv(ENV_NAME, "   ")
    assert environment_overrides() == []


def test_the_process_environment_is_read_by_default(monkeypatch):
    monkeypatch.setenv(ENV_NAME, "train.epochs=2")
    assert environment_overrides() == ["train.epochs=2"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("train.epochs=1 width", "RESNETCLS_SET: 'width' is not KEY=VALUE, e.g. RESNETCLS_SET="),
        ("=3", "RESNETCLS_SET: '=3' is not KEY=VALUE"),
        ("train.epochs='1", "RESNETCLS_SET: no closing quotation in"),
    ],
)
def test_a_pair_that_is_not_key_value_is_one_line_naming_the_variable(text, message):
    with pytest.raises(UserError) as caught:
        environment_overrides({ENV_NAME: text})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_the_note_names_every_pair_and_that_they_win_with_passwords_masked():
    note = environment_note(["train.epochs=1", "log.mlflow_uri=https://me:secret@host", "a.b=x y"])
    assert note == (
        "note: RESNETCLS_SET: train.epochs=1 log.mlflow_uri=https://me:***@host 'a.b=x y' "
        "(from the environment, over the command line)"
    )
