"""The one progress helper for long work other than training (cache build, data check, eval, predict, rank,
export's parity check, tune): a tqdm bar on stderr when a person is watching, nothing at all otherwise.

Where it is drawn (display_mode): on a terminal, tqdm's text bar; in a Jupyter notebook (an IPython kernel is
running in this process), tqdm.auto's widget bar when ipywidgets is installed, else a plain line every few
seconds. Quiet when stderr is not a terminal outside a notebook (logs, pipes, redirected files), in CI
(CI=true or 1), on TERM=dumb, with `resnetcls --quiet` or RESNETCLS_QUIET=1 (what --quiet sets, so worker
processes inherit it). The bar goes to stderr only, so output meant for programs (stdout, --format json) is
never mixed with it.

    with progress_bar(len(paths), "predict", unit="img") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

    for item in track(items, "data check"):
        ...
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import typing

QUIET_ENV = "RESNETCLS_QUIET"
MODES = ("terminal", "notebook", "lines", "none")
LINE_INTERVAL_S = 5.0  # plain-line progress (a notebook without ipywidgets): at most one line this often


def _asks_quiet() -> bool:
    if os.environ.get(QUIET_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel: ipykernel is imported and IPython's running shell has a
    kernel (a terminal IPython has none; nothing is imported to find out)."""
    ipython = sys.modules.get("IPython")
    if sys.modules.get("ipykernel") is None or ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - an IPython that cannot say is not a kernel we can draw into
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def widgets_available() -> bool:
    """Whether ipywidgets (what tqdm's notebook bar draws with) can be imported; found, not imported."""
    return importlib.util.find_spec("ipywidgets") is not None


def display_mode() -> str:
    """How progress is shown now: "terminal" (stderr is a terminal), "notebook" (a Jupyter kernel with
    ipywidgets importable), "lines" (a Jupyter kernel without it), or "none" (quiet, CI, TERM=dumb on a
    terminal, or stderr going to a pipe or a log)."""
    if _asks_quiet():
        return "none"
    if in_notebook():
        return "notebook" if widgets_available() else "lines"
    if os.environ.get("TERM", "") == "dumb" or not _stderr_is_terminal():
        return "none"
    return "terminal"


def progress_enabled() -> bool:
    """Whether a bar would be drawn now (display_mode is not "none"): a person is watching a terminal or a
    notebook and nothing asks for quiet."""
    return display_mode() != "none"


def set_quiet(quiet: bool = True) -> None:
    """`--quiet`: no progress bars in this process and the processes it starts."""
    if quiet:
        os.environ[QUIET_ENV] = "1"


class _Silent:
    """What progress_bar gives when quiet: the same methods, doing nothing."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class _Lines:
    """Progress as plain lines on stderr ("predict: 320/1000 img (32%)"), at most one every LINE_INTERVAL_S
    and one at the end: for a notebook without ipywidgets, where a redrawn bar is not possible."""

    def __init__(self, total: int | None, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.started = self.last = time.monotonic()

    def _line(self) -> str:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        return f"{self.desc}: {done} {self.unit}{share}, {time.monotonic() - self.started:.0f} s"

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= LINE_INTERVAL_S:
            self.last = time.monotonic()
            print(self._line(), file=sys.stderr, flush=True)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        print(self._line(), file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, unit: str = "img", enabled: bool | None = None):
    """A context manager with .update(n): progress as display_mode() says (a tqdm bar on a terminal, a widget
    or plain lines in a notebook), else a silent stand-in. enabled False: silent; True: shown even where
    nobody seems to watch (a terminal bar, or the notebook's kind in a notebook). total None: a count without
    a bar. The bar is left on screen when done, like pip's."""
    mode = display_mode()
    if enabled is not None:
        mode = ("terminal" if mode == "none" else mode) if enabled else "none"
    if mode == "none":
        return _Silent()
    if mode == "lines":
        return _Lines(total, desc, unit)
    if mode == "notebook":
        from tqdm.auto import tqdm as notebook_tqdm  # the widget bar (ipywidgets is importable)

        return notebook_tqdm(total=total, desc=desc, unit=unit, leave=True)
    from tqdm import tqdm  # only when a bar is drawn

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.2,
        leave=True,
        disable=False,
    )


T = typing.TypeVar("T")


def track(
    items: typing.Iterable[T], desc: str, total: int | None = None, unit: str = "img"
) -> typing.Iterator[T]:
    """Iterate over items with a bar of one step each (total from len(items) when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)
