"""The one exception type for bad usage or bad input: the CLI turns it into one line and exit code 2."""


class UserError(Exception):
    """Bad usage or bad input. The message names the file, line or key and what is wrong."""
