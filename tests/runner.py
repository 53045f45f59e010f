"""A fresh interpreter that runs `resnetcls` commands one after another, for the tests that compare a run bit
for bit with one in a process of their own (a killed one): `python -m tests.runner`, one JSON line per command
on stdin ({"args": [...], "cwd": ...}), one JSON line per result on stdout ({"code", "stdout", "stderr"}).

Not the pytest process: with pytest imported, the same one-thread training ends with other weights in their
last bits than in a plain interpreter (measured: every tensor differs), so runs compared with a killed
subprocess's must run in a plain one. Runs in sequence here reproduce a fresh interpreter's bit for bit, and
each saves the 3-5 s a torch import costs. Nothing here may import pytest."""

import contextlib
import io
import json
import os
import sys


def run_main(args: list[str], cwd: str | None = None, catch: bool = False) -> tuple[int, str, str]:
    """cli.main(args) in this process, in cwd: (exit code, stdout, stderr). What a command may change for the
    whole process (environment, thread count, deterministic algorithms) is put back afterwards, so the
    commands of one process stay independent. An unexpected exception propagates, or with catch=True its
    traceback goes to the returned stderr with exit code 1. tests.conftest.run_cli and serve() below both run
    commands with it."""
    import torch

    from resnetcls.cli import main

    out, err = io.StringIO(), io.StringIO()
    environ, threads = dict(os.environ), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with (
        contextlib.chdir(cwd or os.getcwd()),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            if not catch:
                raise
            import traceback

            traceback.print_exc()  # to the test's stderr: it fails with the traceback
            code = 1
        finally:
            os.environ.clear()
            os.environ.update(environ)
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
    return code, out.getvalue(), err.getvalue()


def serve() -> None:
    """Commands from stdin, results to stdout, one JSON line each (module docstring)."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    for line in sys.stdin:
        request = json.loads(line)
        code, out, err = run_main(request["args"], request.get("cwd"), catch=True)
        protocol.write(json.dumps({"code": code, "stdout": out, "stderr": err}) + "\n")
        protocol.flush()


if __name__ == "__main__":
    serve()
