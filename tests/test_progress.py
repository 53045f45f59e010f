"""Progress bars: on a terminal (a real pseudo-terminal) cache build, eval and predict show one; piped, in CI,
on TERM=dumb, with --quiet or RESNETCLS_QUIET=1 nothing of a bar appears, and stdout never carries one."""
import contextlib
import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

import resnetcls
from resnetcls.cli import main
from resnetcls.progress import progress_bar, progress_enabled, track
from tests.conftest import TINY

BAR_MARKS = ("\r", "█", "img/s]", "it/s]", "%|")
SRC = str(Path(resnetcls.__file__).parents[1])


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def terminal_env(tmp_path: Path) -> dict:
    """This environment as a person's shell has it: no CI, not quiet, a real TERM; a fresh decoded cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "RESNETCLS_QUIET")}
    return {**env, "TERM": "xterm-256color", "PYTHONPATH": SRC, "RESNETCLS_CACHE": str(tmp_path / "cache")}


def run_on_terminal(args: list, env: dict, piped: bool = False) -> tuple[int, str, str]:
    """`python -m resnetcls ARGS` with stderr on a pseudo-terminal of 100 columns (or a pipe): code, out, err."""
    command = [sys.executable, "-m", "resnetcls", *map(str, args)]
    if piped:
        done = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        return done.returncode, done.stdout, done.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with open(os.devnull) as stdin, subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE,
                                                     stderr=follower, env=env) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        out = proc.stdout.read().decode()
        code = proc.wait()
    os.close(leader)
    return code, out, b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_cache_build_eval_and_predict_show_a_bar_and_piped_nothing(tiny_run, tiny_data, tmp_path):
    env = terminal_env(tmp_path)
    code, out, err = run_on_terminal(["train", tiny_data, *TINY, "--epochs", "1", "--out", tmp_path / "run"], env)
    assert code == 0, err
    assert "cache build: 100%" in err and "33/33" in err  # the decoded cache of the 33 training images
    code, out, err = run_on_terminal(["eval", tiny_run, tiny_data, "--out", tmp_path / "eval"], env)
    assert code == 0, err
    assert "eval: 100%" in err and "\r" in err
    assert not any(mark in out for mark in BAR_MARKS)  # the bar is on stderr only
    images = sorted(str(p) for p in tiny_data.rglob("*.jpg"))[:8]
    code, out, err = run_on_terminal(["predict", tiny_run, *images, "--format", "json"], env)
    assert code == 0, err
    assert "predict" in err and "8/8" in err
    assert out.lstrip().startswith("[") and not any(mark in out for mark in BAR_MARKS)
    code, out, err = run_on_terminal(["predict", tiny_run, *images], env, piped=True)
    assert code == 0 and not any(mark in err + out for mark in BAR_MARKS), err


def test_quiet_flag_and_environment_turn_bars_off(tiny_run, tiny_data, tmp_path, monkeypatch):
    for key in ("CI", "RESNETCLS_QUIET"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    images = [str(p) for p in sorted(tiny_data.rglob("*.jpg"))[:4]]
    runs = {}
    for name, flags in (("shown", []), ("quiet", ["--quiet"])):
        terminal = FakeTerminal()
        with contextlib.redirect_stderr(terminal), contextlib.redirect_stdout(io.StringIO()):
            assert main([*flags, "predict", str(tiny_run), *images]) == 0
        runs[name] = terminal.getvalue()
        monkeypatch.delenv("RESNETCLS_QUIET", raising=False)  # what --quiet set, for the next run
    assert "predict" in runs["shown"] and "4/4" in runs["shown"]
    assert not any(mark in runs["quiet"] for mark in BAR_MARKS), runs["quiet"]


@pytest.mark.parametrize("env", [{"CI": "true"}, {"TERM": "dumb"}, {"RESNETCLS_QUIET": "1"}, {}])
def test_the_helper_is_quiet_in_ci_on_dumb_terminals_and_when_asked(env, monkeypatch):
    for key in ("CI", "RESNETCLS_QUIET"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(track(range(5), "work")) == [0, 1, 2, 3, 4]
    with progress_bar(3, "more") as bar:
        bar.update(3)
    shown = "work" in terminal.getvalue() and "more" in terminal.getvalue()
    assert progress_enabled() is (not env) and shown is (not env)


def test_not_a_terminal_means_no_bar(monkeypatch):
    for key in ("CI", "RESNETCLS_QUIET"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress_enabled()
    assert list(track(["a", "b"], "work")) == ["a", "b"] and sys.stderr.getvalue() == ""
