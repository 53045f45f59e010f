"""A fresh interpreter that runs `resnetcls` commands one after another, for the tests that compare a run bit for
bit with one in a process of their own (a killed one): `python -m tests.runner`, one JSON line per command on
stdin ({"args": [...], "cwd": ...}), one JSON line per result on stdout ({"code", "stdout", "stderr"}).

Not the pytest process: with pytest imported, the same one-thread training ends with other weights in their last
bits than in a plain interpreter (measured: every tensor differs), so runs compared with a killed subprocess's
must run in a plain one. Runs in sequence here reproduce a fresh interpreter's bit for bit, and each saves the
3-5 s a torch import costs. Nothing here may import pytest."""
import contextlib
import io
import json
import os
import sys


def serve() -> None:
    import torch

    from resnetcls.cli import main
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    for line in sys.stdin:
        request = json.loads(line)
        out, err = io.StringIO(), io.StringIO()
        # What a command may change for the whole process is put back, as tests.conftest.run_cli does.
        environ, threads = dict(os.environ), torch.get_num_threads()
        deterministic = torch.are_deterministic_algorithms_enabled()
        with contextlib.chdir(request.get("cwd") or os.getcwd()), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            try:
                code = main(request["args"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # to the test's stderr: it fails with the traceback
                import traceback
                traceback.print_exc()
                code = 1
            finally:
                os.environ.clear()
                os.environ.update(environ)
                torch.set_num_threads(threads)
                torch.use_deterministic_algorithms(deterministic)
        protocol.write(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}) + "\n")
        protocol.flush()


if __name__ == "__main__":
    serve()
