"""Decode many images on all cores: a process pool that survives a worker killed by one image, and the
bad-file scan that data.on_bad=fail (build_loader) and `data check` both run."""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import sys
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool

from ..errors import UserError
from ..utils.hardware import usable_cores
from ..utils.progress import track
from .decode import DecodeError, decode_image

POOL_MIN_IMAGES = 64  # below this a process pool costs more than it saves
CHUNKS_IN_FLIGHT = 4  # chunks submitted ahead per worker: keeps every core busy, bounds what is held
CRASHED = "decoding this image killed its worker process (out of memory?)"


def default_pool_workers() -> int:
    """Decoding with all cores: one process per CPU this process may run on."""
    return usable_cores()


def _run_chunk(fn: Callable, chunk: list) -> list:
    return [fn(item) for item in chunk]


def _run_isolated(fn: Callable, item, context, on_crash: Callable | None):
    """fn(item) in a process of its own, so a worker that dies names exactly this item."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        try:
            return pool.submit(fn, item).result()
        except BrokenProcessPool:
            if on_crash is None:
                name = item[0] if isinstance(item, tuple) else item
                raise UserError(
                    f"{name}: decoding this image killed its worker process (out of memory?)"
                ) from None
            return on_crash(item)


def parallel_map(
    fn: Callable,
    items: list,
    workers: int = -1,
    chunk_size: int = 16,
    on_crash: Callable | None = None,
    desc: str = "",
) -> Iterable:
    """fn over items in order, in a process pool of all cores (in this process for small inputs).

    desc: a progress bar of that name on a terminal (progress.py), one step per item.

    Streams: at most CHUNKS_IN_FLIGHT x workers chunks are submitted ahead of the one being consumed, so the
    results held at any time do not grow with len(items).

    A worker killed mid-item (the kernel's OOM killer, a crashing codec) breaks the whole pool and fails every
    pending chunk, so the first unfinished chunk is rerun one item per process: the item that kills its
    process again gets on_crash(item) (default: a UserError naming it), and a fresh pool takes the rest."""
    results = _pooled_map(fn, items, workers, chunk_size, on_crash)
    return track(results, desc, total=len(items)) if desc else results


def _pooled_map(
    fn: Callable, items: list, workers: int, chunk_size: int, on_crash: Callable | None
) -> Iterable:
    workers = default_pool_workers() if workers < 0 else workers
    if workers <= 1 or len(items) < POOL_MIN_IMAGES:
        yield from map(fn, items)
        return
    # fork: children inherit the imported modules (fast start); they only run Pillow, never torch ops.
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    done = 0
    while done < len(items):
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            # A window of CHUNKS_IN_FLIGHT chunks per worker: a finished future holds its results until it is
            # dropped, so submitting everything at once would hold every result (a cache build: every decoded
            # image) in this process until the end. Each result is yielded and dropped in order instead.
            window: collections.deque = collections.deque()
            submitted = done
            try:
                while submitted < len(items) or window:
                    while submitted < len(items) and len(window) < CHUNKS_IN_FLIGHT * workers:
                        window.append(pool.submit(_run_chunk, fn, items[submitted : submitted + chunk_size]))
                        submitted += chunk_size
                    results = window.popleft().result()
                    done += len(results)
                    yield from results
                    del results
            except BrokenProcessPool:
                for future in window:
                    future.cancel()
        if done < len(items):
            chunk = items[done : done + chunk_size]
            for item in chunk:
                yield _run_isolated(fn, item, context, on_crash)
            done += len(chunk)


def _bad_only(path: str) -> str:
    try:
        decode_image(path)
        return ""
    except DecodeError as e:
        return e.reason


def find_bad_files(paths: list[str], workers: int = -1) -> dict[str, str]:
    """{path: reason} for every file that does not decode; all cores."""
    reasons = parallel_map(_bad_only, paths, workers, on_crash=lambda _: CRASHED, desc="checking images")
    return {p: reason for p, reason in zip(paths, reasons) if reason}
