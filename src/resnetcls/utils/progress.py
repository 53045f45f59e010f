"""The one progress helper for long work other than training (cache build, data check, eval, predict, rank,
export's parity check, tune): a tqdm bar on stderr when a person is watching, nothing at all otherwise.

Quiet when stderr is not a terminal (logs, pipes, redirected files), in CI (CI=true or 1), on TERM=dumb, with
`resnetcls --quiet` or RESNETCLS_QUIET=1 (what --quiet sets, so worker processes inherit it). The bar goes to
stderr only, so output meant for programs (stdout, --format json) is never mixed with it.

    with progress_bar(len(paths), "predict", unit="img") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

    for item in track(items, "data check"):
        ...
"""

from __future__ import annotations

import os
import sys
import typing

QUIET_ENV = "RESNETCLS_QUIET"


def progress_enabled() -> bool:
    """Whether a bar would be drawn now: stderr is a terminal and nothing asks for quiet."""
    if os.environ.get(QUIET_ENV, "").strip().lower() in ("1", "true", "yes"):
        return False
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return False
    if os.environ.get("TERM", "") == "dumb":
        return False
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


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


def progress_bar(total: int | None, desc: str, unit: str = "img", enabled: bool | None = None):
    """A context manager with .update(n): a tqdm bar on stderr when progress_enabled() (or `enabled`), else a
    silent stand-in. total None: a count without a bar. The bar is left on screen when done, like pip's."""
    if not (progress_enabled() if enabled is None else enabled):
        return _Silent()
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
