"""RESNETCLS_SET: config settings from the environment, KEY=VALUE pairs separated by white space, read like
--set's and applied after the command line's flags and --set (build_config), by train, tune, lr-find,
lifelong, serve and the Python API's train. A script or a documentation test can so shrink every training it
starts (RESNETCLS_SET="train.epochs=1 model.width=8") without editing its commands; a note on stderr says so
each time, so it is never a silent surprise. A value with spaces is quoted as in a shell:
RESNETCLS_SET="'data.mean=[0.5, 0.5, 0.5]'"."""

from __future__ import annotations

import os
import shlex
import typing

from ..errors import UserError
from ..utils.redact import mask_secrets

ENV_NAME = "RESNETCLS_SET"


def environment_overrides(environ: typing.Mapping[str, str] | None = None) -> list[str]:
    """The KEY=VALUE pairs of RESNETCLS_SET (os.environ's unless `environ` is given), [] when it is unset or
    blank; a pair without "=" or an unclosed quote is a UserError naming the variable. The keys and values
    are checked where they are applied, as --set's are (build_config)."""
    text = (os.environ if environ is None else environ).get(ENV_NAME, "")
    try:
        pairs = shlex.split(text)
    except ValueError as e:  # "No closing quotation"
        raise UserError(f"{ENV_NAME}: {str(e).lower()} in {mask_secrets(repr(text))}") from None
    for pair in pairs:
        if "=" not in pair or pair.startswith("="):
            raise UserError(
                f"{ENV_NAME}: {mask_secrets(repr(pair))} is not KEY=VALUE, e.g. "
                f'{ENV_NAME}="train.epochs=1 model.width=8"'
            )
    return pairs


def environment_note(pairs: typing.Sequence[str]) -> str:
    """The stderr line that says which settings came from RESNETCLS_SET and that they win."""
    shown = mask_secrets(shlex.join(pairs))
    return f"note: {ENV_NAME}: {shown} (from the environment, over the command line)"
