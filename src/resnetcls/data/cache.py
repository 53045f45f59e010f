"""Decoded uint8 cache: each image is decoded and resized once, then read memory-mapped by every epoch, every
DataLoader worker and every later run (and every torchrun rank on the machine).

A store is a folder CACHE_DIR/<key>/ with `data.u8` (all images back to back, HWC uint8), `index.npy`
(offset, height, width per image; height 0 = bad image) and `meta.json` (paths, settings, bad reasons).
The key hashes the file list (path, size, mtime, inode, ctime), the decode rules and the stored geometry, so
a changed or replaced file or setting makes a new store. A store is written under a temporary name and renamed
into place only when complete, while holding a lock file: a killed first pass leaves only a `*.partial-*`
folder that the next builder deletes, never a store that looks complete; concurrent builders (torchrun ranks)
wait for one. A store is validated when opened (meta, index and data length agree) and rebuilt with a
warning when not. Before a build the space it needs is estimated from a sample of image headers and compared
with the free space; least-recently-used stores are deleted to keep the folder under data.cache_max_gb.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..atomic import DISK_FULL, free_bytes, write_atomic, write_error, write_text_atomic
from ..errors import UserError
from .decode import DECODE_VERSION, MAX_PIXELS, DecodeError
from .geometry import StoreGeometry, decode_resized
from .scan import CRASHED, parallel_map

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent builders then each build (still atomic)
    fcntl = None

STORE_FORMAT = 2  # 2: the key includes inode and ctime
SPACE_SAMPLE = 256  # image headers read to estimate a store's size before building it


def resolve_cache_dir(configured: str = "") -> Path:
    """data.cache_dir, else $RESNETCLS_CACHE, else ~/.cache/resnetcls."""
    return Path(configured or os.environ.get("RESNETCLS_CACHE") or Path.home() / ".cache" / "resnetcls")


def cache_key(paths: list[str], geometry: StoreGeometry) -> str:
    """Hash of the file list (path, size, mtime, inode, ctime), the decode rules and the stored geometry."""
    digest = hashlib.sha256(json.dumps({"format": STORE_FORMAT, "decode": DECODE_VERSION,
                                        "max_pixels": MAX_PIXELS, **asdict(geometry)}).encode())
    for path in paths:
        try:
            st = os.stat(path)
            # inode and ctime too: a file replaced by another of the same size and mtime (rsync -t, cp -p,
            # a restored backup) is a new file.
            stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(os.fsencode(path) + b"\0" + stamp.encode() + b"\n")
    return digest.hexdigest()[:32]


class InvalidStore(Exception):
    """A store folder whose files do not agree with each other (corrupt, truncated, another version)."""


def _read_store(directory: Path, count: int | None) -> tuple[dict, np.ndarray]:
    """meta.json and index.npy of a store, checked against each other and data.u8; InvalidStore otherwise."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        index = np.load(directory / "index.npy", allow_pickle=False)
        data_bytes = (directory / "data.u8").stat().st_size
    except (OSError, ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise InvalidStore(f"unreadable: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise InvalidStore(f"format {meta.get('format') if isinstance(meta, dict) else None!r}, not {STORE_FORMAT}")
    paths, bad = meta.get("paths"), meta.get("bad")
    if not isinstance(paths, list) or not isinstance(bad, dict) or (count is not None and len(paths) != count):
        raise InvalidStore("meta.json does not list the images")
    if index.dtype != np.int64 or index.shape != (len(paths), 3) or (index < 0).any():
        raise InvalidStore(f"index.npy has shape {index.shape} ({index.dtype}), expected ({len(paths)}, 3) int64")
    if data_bytes != meta.get("bytes"):
        raise InvalidStore(f"data.u8 has {data_bytes} bytes, meta.json says {meta.get('bytes')}")
    ends = index[:, 0] + index[:, 1] * index[:, 2] * 3
    if len(ends) and int(ends.max()) > data_bytes:
        raise InvalidStore("index.npy points past the end of data.u8")
    if not all(str(i).isdigit() and int(i) < len(paths) for i in bad):
        raise InvalidStore("meta.json names bad images that are not in the store")
    return meta, index


class DecodedStore:
    """Read side of a complete store: load(i) -> HWC uint8 array, or DecodeError for a bad image.
    Opening checks that meta.json, index.npy and data.u8 agree (InvalidStore otherwise)."""

    def __init__(self, directory: Path, count: int | None = None) -> None:
        self.directory = Path(directory)
        meta, self.index = _read_store(self.directory, count)
        self.paths: list[str] = [os.fsdecode(p.encode("utf-8", "surrogateescape")) for p in meta["paths"]]
        self.bad: dict[int, str] = {int(i): reason for i, reason in meta["bad"].items()}
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
    return None, CRASHED


def _write_store(tmp: Path, paths: list[str], geometry: StoreGeometry, workers: int) -> None:
    tmp.mkdir(parents=True)
    index = np.zeros((len(paths), 3), dtype=np.int64)
    bad: dict[int, str] = {}
    offset = 0
    with open(tmp / "data.u8", "wb") as data:
        results = parallel_map(_decode_for_store, [(p, geometry) for p in paths], workers,
                               on_crash=_crashed_in_store, desc="cache build")
        for i, (array, reason) in enumerate(results):
            if array is None:
                bad[i] = reason
                continue
            data.write(np.ascontiguousarray(array).tobytes())
            index[i] = (offset, array.shape[0], array.shape[1])
            offset += array.size
        data.flush()
        os.fsync(data.fileno())
    buffer = io.BytesIO()
    np.save(buffer, index)
    write_atomic(tmp / "index.npy", buffer.getvalue())
    meta = {"format": STORE_FORMAT, "geometry": asdict(geometry), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "bytes": offset, "paths": [os.fsencode(p).decode("utf-8", "surrogateescape") for p in paths],
            "bad": {str(i): r for i, r in bad.items()}}
    # meta.json is written last: a store folder is only ever renamed into place after it exists.
    write_text_atomic(tmp / "meta.json", json.dumps(meta, ensure_ascii=True))


LOCK_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


@contextmanager
def _locked(lock_path: Path):
    with open(lock_path, "a") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX)  # released by the OS if this process dies
            except OSError as e:
                if e.errno not in LOCK_UNSUPPORTED:
                    raise
                raise UserError(f"{lock_path.parent}: this file system does not support file locks (e.g. some "
                                f"network mounts), which the decoded cache needs; set data.cache_dir (or "
                                f"RESNETCLS_CACHE) to a folder on a local disk, or data.cache=false") from None
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def _open_valid(final: Path, count: int, log: Callable[[str], None]) -> DecodedStore | None:
    """The store at final if it is complete and valid; an invalid one is deleted with a warning (rebuilt)."""
    if not (final / "meta.json").is_file():
        return None
    try:
        store = DecodedStore(final, count)
    except InvalidStore as e:
        log(f"warning: decoded cache {final} is invalid ({e}); rebuilding it")
        shutil.rmtree(final, ignore_errors=True)
        return None
    try:
        os.utime(final / "meta.json")  # its mtime is the store's last use, for pruning
    except OSError:
        pass  # a read-only shared cache: pruning order is then the build order
    return store


def open_or_build(paths: list[str], geometry: StoreGeometry, cache_dir: str | os.PathLike,
                  workers: int = -1, log: Callable[[str], None] | None = None, max_gb: float = 0.0) -> DecodedStore:
    """The complete store for these files and settings, building it first (all cores) if needed.

    max_gb > 0: the cache folder's size limit; least-recently-used stores are deleted to make room, and a
    store that alone would exceed it is refused."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    cache_dir = Path(cache_dir)
    key = cache_key(paths, geometry)
    store = _open_valid(cache_dir / key, len(paths), log)
    if store is not None:
        return store
    needed = estimate_store_bytes(paths, geometry)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(cache_dir / f"{key}.lock"):
            store = _open_valid(cache_dir / key, len(paths), log)  # another process built it while we waited
            if store is not None:
                return store
            _make_room(cache_dir, key, needed, max_gb, log)
            return _build(paths, geometry, cache_dir, key, workers, log)
    except OSError as e:  # unwritable folder, full disk: the user can point the cache elsewhere or turn it off
        if e.errno in DISK_FULL:
            raise write_error(cache_dir / key, e, needed) from None
        raise UserError(f"{cache_dir}: cannot write the decoded-image cache: {e.strerror or e} "
                        f"(set data.cache_dir or RESNETCLS_CACHE elsewhere, or data.cache=false)") from None


def _stored_bytes(path: str, geometry: StoreGeometry) -> int | None:
    """Bytes one image takes in the store, from its header only (None when it cannot be read)."""
    try:
        with Image.open(path) as image:  # reads the header; nothing is decoded
            width, height = image.size
    except Exception:  # a bad file is counted as bad by the build, not here
        return None
    if geometry.square or not width or not height:
        return geometry.size * geometry.size * 3
    scale = geometry.size / min(width, height)
    return round(width * scale) * round(height * scale) * 3


def estimate_store_bytes(paths: list[str], geometry: StoreGeometry) -> int:
    """The size a store will take: the mean over an evenly spaced sample of headers, times the image count."""
    if not paths:
        return 0
    step = max(1, len(paths) // SPACE_SAMPLE)
    sizes = [b for b in (_stored_bytes(p, geometry) for p in paths[::step][:SPACE_SAMPLE]) if b is not None]
    mean = sum(sizes) / len(sizes) if sizes else geometry.size * geometry.size * 3
    return int(mean * len(paths) * 1.05)  # 5% for the aspect ratios the sample missed


def list_stores(cache_dir: Path) -> list[tuple[float, int, Path]]:
    """(last use, bytes, folder) of every complete store in cache_dir, least recently used first."""
    stores = []
    for meta in cache_dir.glob("*/meta.json"):
        try:
            used = meta.stat().st_mtime
            size = sum(f.stat().st_size for f in meta.parent.iterdir() if f.is_file())
        except OSError:
            continue
        stores.append((used, size, meta.parent))
    return sorted(stores)


def _make_room(cache_dir: Path, key: str, needed: int, max_gb: float, log: Callable[[str], None]) -> None:
    """Refuse a store larger than the limit or the free space; delete least-recently-used stores so that the
    cache with the new store stays under max_gb. Called holding key's lock."""
    limit = int(max_gb * 1e9)
    gb = lambda n: f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n:,} bytes"
    if limit and needed > limit:
        raise UserError(f"{cache_dir}: the decoded cache for these images needs about {gb(needed)}, more than "
                        f"data.cache_max_gb={max_gb:g}; raise it, lower data.cache_size, or set data.cache=false")
    pruned, stores = [], list_stores(cache_dir) if limit else []
    total = sum(size for _, size, _ in stores)
    for _used, size, folder in stores:
        if total + needed <= limit:
            break
        if folder.name != key:
            shutil.rmtree(folder, ignore_errors=True)  # a run still reading it keeps its open mapping (POSIX)
            total -= size
            pruned.append(size)
    if pruned:
        log(f"note: deleted {len(pruned)} least-recently-used decoded cache store(s) ({gb(sum(pruned))}) to stay "
            f"under data.cache_max_gb={max_gb:g}")
    free = free_bytes(cache_dir)
    if free is not None and needed > free:
        raise UserError(f"{cache_dir}: the decoded cache for these images needs about {gb(needed)} but only "
                        f"{gb(free)} are free there; set data.cache_dir (or RESNETCLS_CACHE) elsewhere, lower "
                        f"data.cache_size, or set data.cache=false")


def _build(paths: list[str], geometry: StoreGeometry, cache_dir: Path, key: str, workers: int,
           log: Callable[[str], None]) -> DecodedStore:
    """Write the store under a temporary name and rename it into place. Called holding key's lock."""
    final = cache_dir / key
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
    store = DecodedStore(final, len(paths))
    log(f"cached {len(paths) - len(store.bad)} images ({store.index[:, 1:].prod(1).sum() * 3 / 1e6:.0f} MB, "
        f"{len(store.bad)} bad) in {time.perf_counter() - started:.1f}s")
    return store
