"""Progress bars: on a terminal (a real pseudo-terminal) cache build, eval and predict show one; in a Jupyter
kernel (simulated) the widget bar or, without ipywidgets, plain lines; piped, in CI, on TERM=dumb, with
--quiet or RESNETCLS_QUIET=1 nothing of a bar appears, and stdout never carries one."""

import contextlib
import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import types
from pathlib import Path

import pytest
import tqdm.auto

import resnetcls
from resnetcls.cli import main
from resnetcls.utils import progress
from resnetcls.utils.progress import progress_bar, progress_enabled, track
from tests.conftest import TINY, run_cli

BAR_MARKS = ("\r", "█", "img/s]", "it/s]", "%|")
SRC = str(Path(resnetcls.__file__).parents[1])


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def terminal_env(tmp_path: Path) -> dict:
    """This environment as a person's shell has it: no CI, not quiet, a real TERM; a fresh decoded cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "RESNETCLS_QUIET")}
    return {**env, "TERM": "xterm-256color", "PYTHONPATH": SRC, "RESNETCLS_CACHE": str(tmp_path / "cache")}


# Runs several commands through cli.main in one interpreter (one torch import instead of one per command),
# with a marker line on stdout and stderr before each, and the exit codes as the last stdout line.
SEQUENCE = """
import json, sys
from resnetcls.cli import main
codes = []
for n, args in enumerate(json.loads(sys.argv[1])):
    print(f"@@{n}@@", flush=True)
    print(f"@@{n}@@", file=sys.stderr, flush=True)
    codes.append(main(args))
print(json.dumps(codes), flush=True)
"""


def run_on_terminal(commands: list[list], env: dict) -> list[tuple[int, str, str]]:
    """Each of `commands` (resnetcls ARGS), in turn in one `python` process whose stderr is a pseudo-terminal
    of 200 columns: [(code, stdout, stderr) of each]."""
    command = [sys.executable, "-c", SEQUENCE, json.dumps([[str(a) for a in args] for args in commands])]
    leader, follower = pty.openpty()
    # wide enough that tqdm never cuts the postfix (loss, lr, img/s, data wait), whatever the speed
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    with (
        open(os.devnull) as stdin,
        subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=follower, env=env) as proc,
    ):
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
        assert proc.wait() == 0, out
    os.close(leader)
    outs = _split(out, len(commands))
    codes_line = outs[-1].rstrip().rsplit("\n", 1)[-1]
    outs[-1] = outs[-1].rstrip()[: -len(codes_line)]
    err = b"".join(chunks).decode(errors="replace")
    return list(zip(json.loads(codes_line), outs, _split(err, len(commands))))


def _split(text: str, count: int) -> list[str]:
    """text cut at the markers @@0@@ ... @@count-1@@: what each command wrote."""
    parts = []
    for n in range(count):
        text = text.split(f"@@{n}@@", 1)[1]
        parts.append(text.split(f"@@{n + 1}@@", 1)[0] if n + 1 < count else text)
    return parts


def test_on_a_terminal_training_cache_build_eval_and_predict_show_a_bar_and_piped_nothing(
    tiny_run, tiny_data, tmp_path
):
    """On a terminal: the decoded-cache build's bar and the live step bar of a bf16-autocast training (batch
    4: 9 steps), eval's and predict's bars; the bars on stderr only, and none when stderr is a pipe."""
    images = sorted(str(p) for p in tiny_data.rglob("*.jpg"))[:8]
    (train, _, train_err), (eval_code, eval_out, eval_err), (predict_code, predict_out, predict_err) = (
        run_on_terminal(
            [
                [
                    "train",
                    tiny_data,
                    *TINY,
                    "--batch-size",
                    "4",
                    "--epochs",
                    "1",
                    "--set",
                    "train.precision=bf16",
                    "--out",
                    tmp_path / "run",
                ],
                ["eval", tiny_run, tiny_data, "--out", tmp_path / "eval"],
                ["predict", tiny_run, *images, "--format", "json"],
            ],
            terminal_env(tmp_path),
        )
    )
    assert train == 0, train_err
    assert (
        "cache build: 100%" in train_err and "33/33" in train_err
    )  # the decoded cache of the 33 training images
    assert "cpu bf16 channels_last" in train_err
    bar = [part for part in train_err.split("\r") if "epoch 1/1:" in part and "step" in part]
    assert bar and "img/s" in bar[-1] and "data wait" in bar[-1] and "lr " in bar[-1] and "<" in bar[-1]
    assert eval_code == 0, eval_err
    assert "eval: 100%" in eval_err and "\r" in eval_err
    assert not any(mark in eval_out for mark in BAR_MARKS)  # the bar is on stderr only
    assert predict_code == 0, predict_err
    assert "predict" in predict_err and "8/8" in predict_err
    assert predict_out.lstrip().startswith("[") and not any(mark in predict_out for mark in BAR_MARKS)
    piped = run_cli("predict", tiny_run, *images)  # stderr not a terminal (a pipe, a file): no bar
    assert piped.returncode == 0 and not any(mark in piped.stderr + piped.stdout for mark in BAR_MARKS), (
        piped.stderr
    )


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


@pytest.fixture
def notebook(monkeypatch):
    """This process as a Jupyter kernel looks to the helper: ipykernel imported, IPython's shell has a
    kernel."""
    for key in ("CI", "RESNETCLS_QUIET"):
        monkeypatch.delenv(key, raising=False)
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    return shell


def kernel_stream(monkeypatch) -> io.StringIO:
    """stderr as ipykernel gives it, a stream (set in the test itself: capture resets it at each phase)."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_a_notebook_gets_the_widget_bar_when_ipywidgets_is_there(notebook, monkeypatch):
    drawn = []

    class WidgetBar(_SilentRecorder):
        def __init__(self, **options):
            drawn.append(options)

    stream = kernel_stream(monkeypatch)
    monkeypatch.setattr(progress, "widgets_available", lambda: True)
    monkeypatch.setattr(tqdm.auto, "tqdm", WidgetBar)
    assert progress.display_mode() == "notebook" and progress_enabled()
    with progress_bar(4, "predict") as bar:
        bar.update(4)
    assert drawn == [{"total": 4, "desc": "predict", "unit": "img", "leave": True}]
    assert stream.getvalue() == ""  # the widget draws itself, nothing goes to the stream


def test_a_notebook_without_ipywidgets_gets_plain_lines(notebook, monkeypatch):
    stream = kernel_stream(monkeypatch)
    monkeypatch.setattr(progress, "widgets_available", lambda: False)
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)  # a line at every update
    assert progress.display_mode() == "lines"
    assert list(track(range(3), "data check", unit="file")) == [0, 1, 2]
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        f"data check: {n}/3 file ({100 * n // 3}%)" for n in (1, 2, 3, 3)
    ]
    assert "\r" not in stream.getvalue()


def test_no_kernel_quiet_or_a_pipe_means_no_progress(notebook, monkeypatch):
    stream = kernel_stream(monkeypatch)
    notebook.kernel = None  # a terminal IPython: no kernel, and stderr is not a terminal here
    assert progress.display_mode() == "none" and not progress.in_notebook()
    notebook.kernel = object()
    monkeypatch.setenv("RESNETCLS_QUIET", "1")
    assert progress.display_mode() == "none"
    with progress_bar(2, "eval", enabled=False) as bar:
        bar.update(2)
    monkeypatch.delitem(sys.modules, "ipykernel")
    monkeypatch.delenv("RESNETCLS_QUIET")
    assert progress.display_mode() == "none" and stream.getvalue() == ""


class _SilentRecorder:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass
