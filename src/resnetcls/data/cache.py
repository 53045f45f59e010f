"""Decoded uint8 cache: each image is decoded and resized once, then read memory-mapped by every epoch, every
DataLoader worker and every later run (and every torchrun rank on the machine).

A store is a folder CACHE_DIR/<key>/ with `data.u8` (all images back to back, HWC uint8), `index.npy`
(offset, height, width per image; height 0 = bad image) and `meta.json` (paths, settings, bad reasons).
The key hashes the file list (path, size, mtime), the decode rules and the stored geometry, so a changed file
or setting makes a new store. A store is written under a temporary name and renamed into place only when
complete, while holding a lock file: a killed first pass leaves only a `*.partial-*` folder that the next
builder deletes, never a store that looks complete; concurrent builders (torchrun ranks) wait for one.
"""
from __future__ import annotations

import concurrent.futures
from concurrent.futures.process import BrokenProcessPool
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import UserError
from .decode import DECODE_VERSION, MAX_PIXELS, DecodeError, decode_image

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent builders then each build (still atomic)
    fcntl = None

STORE_FORMAT = 1
POOL_MIN_IMAGES = 64  # below this a process pool costs more than it saves


def resolve_cache_dir(configured: str = "") -> Path:
    """data.cache_dir, else $RESNETCLS_CACHE, else ~/.cache/resnetcls."""
    return Path(configured or os.environ.get("RESNETCLS_CACHE") or Path.home() / ".cache" / "resnetcls")


@dataclass(frozen=True)
class StoreGeometry:
    """How images are stored: the short side resized to `size` (or squashed to size x size when `square`),
    with the model's interpolation, exactly as the eval transform's first resize does."""

    size: int
    square: bool = False
    interpolation: str = "bilinear"


def decode_resized(path: str, geometry: StoreGeometry) -> np.ndarray:
    """decode_image + the stored resize -> HWC uint8 array. Raises DecodeError naming the file."""
    from torchvision.transforms.v2 import functional as F  # the same resize the eval transform uses

    from .transforms import INTERPOLATIONS, CropToAspect
    image = decode_image(path)
    if not geometry.square:  # as the eval transform: the resize's output stays bounded by the model's input
        image = CropToAspect()(image)
    size = [geometry.size, geometry.size] if geometry.square else [geometry.size]
    resized = F.resize(image, size, interpolation=INTERPOLATIONS[geometry.interpolation], antialias=True)
    return np.array(resized, dtype=np.uint8)  # writable: torch.from_numpy wants that


def default_pool_workers() -> int:
    """Decoding with all cores: one process per CPU this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
                raise UserError(f"{name}: decoding this image killed its worker process (out of memory?)") from None
            return on_crash(item)


def parallel_map(fn: Callable, items: list, workers: int = -1, chunk_size: int = 16,
                 on_crash: Callable | None = None) -> Iterable:
    """fn over items in order, in a process pool of all cores (in this process for small inputs).

    A worker killed mid-item (the kernel's OOM killer, a crashing codec) breaks the whole pool and fails every
    pending chunk, so the first unfinished chunk is rerun one item per process: the item that kills its
    process again gets on_crash(item) (default: a UserError naming it), and a fresh pool takes the rest."""
    workers = default_pool_workers() if workers < 0 else workers
    if workers <= 1 or len(items) < POOL_MIN_IMAGES:
        yield from map(fn, items)
        return
    # fork: children inherit the imported modules (fast start); they only run Pillow, never torch ops.
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    done = 0
    while done < len(items):
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_run_chunk, fn, items[i:i + chunk_size])
                       for i in range(done, len(items), chunk_size)]
            try:
                for future in futures:
                    results = future.result()
                    done += len(results)
                    yield from results
            except BrokenProcessPool:
                for future in futures:
                    future.cancel()
        if done < len(items):
            chunk = items[done:done + chunk_size]
            for item in chunk:
                yield _run_isolated(fn, item, context, on_crash)
            done += len(chunk)


def cache_key(paths: list[str], geometry: StoreGeometry) -> str:
    """Hash of the file list (path, size, mtime), the decode rules and the stored geometry."""
    digest = hashlib.sha256(json.dumps({"format": STORE_FORMAT, "decode": DECODE_VERSION,
                                        "max_pixels": MAX_PIXELS, **asdict(geometry)}).encode())
    for path in paths:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(os.fsencode(path) + b"\0" + stamp.encode() + b"\n")
    return digest.hexdigest()[:32]


class DecodedStore:
    """Read side of a complete store: load(i) -> HWC uint8 array, or DecodeError for a bad image."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        meta = json.loads((self.directory / "meta.json").read_text(encoding="utf-8"))
        self.paths: list[str] = [os.fsdecode(p.encode("utf-8", "surrogateescape")) for p in meta["paths"]]
        self.bad: dict[int, str] = {int(i): reason for i, reason in meta["bad"].items()}
        self.index = np.load(self.directory / "index.npy")
        self._data = None  # opened lazily, so the store pickles cheaply into DataLoader workers

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}

    def load(self, i: int) -> np.ndarray:
        if i in self.bad:
            raise DecodeError(self.paths[i], self.bad[i])
        if self._data is None:
            size = (self.directory / "data.u8").stat().st_size
            # "c" (copy-on-write) gives writable arrays, so torch.from_numpy needs no copy and no warning; the
            # plain ndarray view skips np.memmap's per-slice bookkeeping (a measurable share per image).
            self._data = (np.memmap(self.directory / "data.u8", np.uint8, "c").view(np.ndarray) if size
                          else np.zeros(0, np.uint8))
        offset, height, width = (int(v) for v in self.index[i])
        return self._data[offset:offset + height * width * 3].reshape(height, width, 3)

    @property
    def bad_files(self) -> dict[str, str]:
        return {self.paths[i]: reason for i, reason in sorted(self.bad.items())}


def _decode_for_store(args: tuple[str, StoreGeometry]) -> tuple[np.ndarray | None, str]:
    try:
        return decode_resized(*args), ""
    except DecodeError as e:
        return None, e.reason
    except MemoryError:  # the resize after the decode; decode_image turns its own into a DecodeError
        return None, "not enough memory to decode and resize this image"


def _crashed_in_store(args: tuple[str, StoreGeometry]) -> tuple[None, str]:
    return None, "decoding this image killed its worker process (out of memory?)"


def _write_store(tmp: Path, paths: list[str], geometry: StoreGeometry, workers: int) -> None:
    tmp.mkdir(parents=True)
    index = np.zeros((len(paths), 3), dtype=np.int64)
    bad: dict[int, str] = {}
    offset = 0
    with open(tmp / "data.u8", "wb") as data:
        results = parallel_map(_decode_for_store, [(p, geometry) for p in paths], workers,
                               on_crash=_crashed_in_store)
        for i, (array, reason) in enumerate(results):
            if array is None:
                bad[i] = reason
                continue
            data.write(np.ascontiguousarray(array).tobytes())
            index[i] = (offset, array.shape[0], array.shape[1])
            offset += array.size
        data.flush()
        os.fsync(data.fileno())
    np.save(tmp / "index.npy", index)
    meta = {"format": STORE_FORMAT, "geometry": asdict(geometry), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "bytes": offset, "paths": [os.fsencode(p).decode("utf-8", "surrogateescape") for p in paths],
            "bad": {str(i): r for i, r in bad.items()}}
    # meta.json is written last: a store folder is only ever renamed into place after it exists.
    (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=True), encoding="utf-8")


@contextmanager
def _locked(lock_path: Path):
    with open(lock_path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)  # released by the OS if this process dies
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def open_or_build(paths: list[str], geometry: StoreGeometry, cache_dir: str | os.PathLike,
                  workers: int = -1, log: Callable[[str], None] | None = None) -> DecodedStore:
    """The complete store for these files and settings, building it first (all cores) if needed."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    cache_dir = Path(cache_dir)
    key = cache_key(paths, geometry)
    final = cache_dir / key
    if (final / "meta.json").is_file():
        return DecodedStore(final)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        return _build_locked(paths, geometry, cache_dir, key, workers, log)
    except OSError as e:  # unwritable folder, full disk: the user can point the cache elsewhere or turn it off
        raise UserError(f"{cache_dir}: cannot write the decoded-image cache: {e.strerror or e} "
                        f"(set data.cache_dir or RESNETCLS_CACHE elsewhere, or data.cache=false)") from None


def _build_locked(paths: list[str], geometry: StoreGeometry, cache_dir: Path, key: str, workers: int,
                  log: Callable[[str], None]) -> DecodedStore:
    final = cache_dir / key
    with _locked(cache_dir / f"{key}.lock"):
        if (final / "meta.json").is_file():  # another process (torchrun rank) built it while we waited
            return DecodedStore(final)
        for stale in cache_dir.glob(f"{key}.partial-*"):  # left by a killed builder; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache_dir / f"{key}.partial-{os.getpid()}"
        started = time.perf_counter()
        log(f"decoding {len(paths)} images once into the cache {final} ...")
        try:
            _write_store(tmp, paths, geometry, workers)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        store = DecodedStore(final)
        log(f"cached {len(paths) - len(store.bad)} images ({store.index[:, 1:].prod(1).sum() * 3 / 1e6:.0f} MB, "
            f"{len(store.bad)} bad) in {time.perf_counter() - started:.1f}s")
        return store
