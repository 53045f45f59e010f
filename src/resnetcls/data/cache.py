"""Decoded uint8 cache: each image is decoded and resized once, then read memory-mapped by every epoch, every
DataLoader worker and every later run (and every torchrun rank on the machine). data/store.py is the format.

A store is a folder CACHE_DIR/<key>/. The key hashes the file list (path, size, mtime, inode, ctime), the
decode rules, the stored geometry (size, data.resize's mode, interpolation: a store built for crop is never
read for letterbox) and the store's encoding, so a changed or replaced file or setting makes a new store. A
store is written under a temporary name and renamed into place only when complete, while holding a lock file:
a killed first pass leaves only a `*.partial-*` folder that the next builder deletes, never a store that looks
complete; concurrent builders (torchrun ranks of one machine, or of several machines sharing
the cache folder) wait for one. A store is validated when opened and rebuilt with a warning when invalid.
Before a build the space it needs is estimated from a sample of image headers and compared with the free
space; least-recently-used stores are deleted to keep the folder under data.cache_max_gb.

data.cache_format=auto stores the images compressed (data/store.py, JPEG) where the decoded store would not
fit data.cache_max_gb or the free space, and says so in one line; `decoded` and `compressed` force either.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from ..errors import UserError
from ..utils.atomic import DISK_FULL, free_bytes, write_error
from .decode import DECODE_VERSION, MAX_PIXELS
from .geometry import StoreGeometry, stored_shape
from .store import (
    JPEG_QUALITY,
    STORE_FORMAT,
    DecodedStore,
    InvalidStore,
    encode_for_store,
    open_store,
    write_store,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent builders then each build (still atomic)
    fcntl = None

SPACE_SAMPLE = 256  # image headers read to estimate a store's size before building it
ENCODE_SAMPLE = 16  # images encoded to estimate a compressed store's size before building it
CACHE_FORMATS = ("auto", "decoded", "compressed")


def resolve_cache_dir(configured: str = "") -> Path:
    """data.cache_dir, else $RESNETCLS_CACHE, else ~/.cache/resnetcls."""
    return Path(configured or os.environ.get("RESNETCLS_CACHE") or Path.home() / ".cache" / "resnetcls")


def cache_key(paths: list[str], geometry: StoreGeometry, compressed: bool = False) -> str:
    """Hash of the file list (path, size, mtime, inode, ctime), the decode rules, the stored geometry and,
    for a compressed store, its encoding."""
    encoding = {"encoding": f"jpeg-q{JPEG_QUALITY}"} if compressed else {}
    digest = hashlib.sha256(
        json.dumps(
            {
                "format": STORE_FORMAT,
                "decode": DECODE_VERSION,
                "max_pixels": MAX_PIXELS,
                **asdict(geometry),
                **encoding,
            }
        ).encode()
    )
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
                raise UserError(
                    f"{lock_path.parent}: this file system does not support file locks (e.g. some "
                    f"network mounts), which the decoded cache needs; set data.cache_dir (or "
                    f"RESNETCLS_CACHE) to a folder on a local disk, or data.cache=false"
                ) from None
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
        store = open_store(final, count)
    except InvalidStore as e:
        log(f"warning: decoded cache {final} is invalid ({e}); rebuilding it")
        shutil.rmtree(final, ignore_errors=True)
        return None
    try:
        os.utime(final / "meta.json")  # its mtime is the store's last use, for pruning
    except OSError:
        pass  # a read-only shared cache: pruning order is then the build order
    return store


def open_or_build(
    paths: list[str],
    geometry: StoreGeometry,
    cache_dir: str | os.PathLike,
    workers: int = -1,
    log: Callable[[str], None] | None = None,
    max_gb: float = 0.0,
    cache_format: str = "auto",
) -> DecodedStore:
    """The complete store for these files and settings, building it first (all cores) if needed.

    max_gb > 0: the cache folder's size limit; least-recently-used stores are deleted to make room, and a
    store that alone would exceed it is refused. cache_format: decoded, compressed, or auto: the decoded store
    unless it would need more than max_gb or the free space in cache_dir, then the compressed one (said in
    one line, kept as the store's `note`)."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    if cache_format not in CACHE_FORMATS:
        raise UserError(f"data.cache_format={cache_format!r}: expected one of {', '.join(CACHE_FORMATS)}")
    cache_dir = Path(cache_dir)
    if cache_format != "compressed":
        store = _open_valid(cache_dir / cache_key(paths, geometry), len(paths), log)
        if store is not None:
            return store
    needed = estimate_store_bytes(paths, geometry)
    note = _why_compressed(needed, len(paths), cache_dir, max_gb) if cache_format == "auto" else ""
    compressed = cache_format == "compressed" or bool(note)
    if note:
        log(note)
    key = cache_key(paths, geometry, compressed)
    try:
        store = _open_valid(cache_dir / key, len(paths), log) if compressed else None
        if store is None:
            needed = estimate_compressed_bytes(paths, geometry) if compressed else needed
            cache_dir.mkdir(parents=True, exist_ok=True)
            with _locked(cache_dir / f"{key}.lock"):
                store = _open_valid(
                    cache_dir / key, len(paths), log
                )  # another process built it while we waited
                if store is None:
                    _make_room(cache_dir, key, needed, max_gb, log, "compressed" if compressed else "decoded")
                    store = _build(paths, geometry, cache_dir, key, workers, log, compressed)
    except (
        OSError
    ) as e:  # unwritable folder, full disk: the user can point the cache elsewhere or turn it off
        if e.errno in DISK_FULL:
            raise write_error(cache_dir / key, e, needed) from None
        raise UserError(
            f"{cache_dir}: cannot write the decoded-image cache: {e.strerror or e} "
            f"(set data.cache_dir or RESNETCLS_CACHE elsewhere, or data.cache=false)"
        ) from None
    store.note = note
    return store


def _size_text(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n:,} bytes"


def _why_compressed(needed: int, count: int, cache_dir: Path, max_gb: float) -> str:
    """The one line saying why data.cache_format=auto stores these images compressed ("" = it does not)."""
    limit = int(max_gb * 1e9)
    if limit and needed > limit:
        over = f"more than data.cache_max_gb={max_gb:g}"
    else:
        existing = next((p for p in (cache_dir, *cache_dir.parents) if p.exists()), cache_dir)
        free = free_bytes(existing)
        if free is None or needed <= free:
            return ""
        over = f"more than the {_size_text(free)} free in {existing}"
    return (
        f"note: a decoded cache of these {count:,} images would need about {_size_text(needed)}, {over}; "
        f"storing them compressed instead (JPEG quality {JPEG_QUALITY} at the same stored size, decoded in "
        f"the loader workers; data.cache_format=decoded refuses instead)"
    )


def _stored_bytes(path: str, geometry: StoreGeometry) -> int | None:
    """Bytes one image takes in the store, from its header only (None when it cannot be read)."""
    try:
        with Image.open(path) as image:  # reads the header; nothing is decoded
            width, height = image.size
    except Exception:  # a bad file is counted as bad by the build, not here
        return None
    if not width or not height:
        return geometry.size * geometry.size * 3
    height, width = stored_shape(width, height, geometry)
    return height * width * 3


def estimate_store_bytes(paths: list[str], geometry: StoreGeometry) -> int:
    """The size a store will take: the mean over an evenly spaced sample of headers, times the image count."""
    if not paths:
        return 0
    step = max(1, len(paths) // SPACE_SAMPLE)
    sizes = [b for b in (_stored_bytes(p, geometry) for p in paths[::step][:SPACE_SAMPLE]) if b is not None]
    mean = sum(sizes) / len(sizes) if sizes else geometry.size * geometry.size * 3
    return int(mean * len(paths) * 1.05)  # 5% for the aspect ratios the sample missed


def estimate_compressed_bytes(paths: list[str], geometry: StoreGeometry) -> int:
    """The size a compressed store will take: the mean JPEG size of a few evenly spaced images, encoded as the
    store encodes them, times the image count (plus a quarter for the content the sample missed)."""
    if not paths:
        return 0
    step = max(1, len(paths) // ENCODE_SAMPLE)
    entries = [
        entry
        for entry, _ in map(encode_for_store, [(p, geometry) for p in paths[::step][:ENCODE_SAMPLE]])
        if entry is not None
    ]
    mean = (
        sum(len(e[0]) for e in entries) / len(entries) if entries else geometry.size * geometry.size * 3 / 8
    )
    return int(mean * len(paths) * 1.25)


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


def _make_room(
    cache_dir: Path, key: str, needed: int, max_gb: float, log: Callable[[str], None], kind: str = "decoded"
) -> None:
    """Refuse a store larger than the limit or the free space; delete least-recently-used stores so that the
    cache with the new store stays under max_gb. Called holding key's lock."""
    limit = int(max_gb * 1e9)
    if limit and needed > limit:
        raise UserError(
            f"{cache_dir}: the {kind} cache for these images needs about {_size_text(needed)}, more "
            f"than data.cache_max_gb={max_gb:g}; raise it, lower data.cache_size, or set data.cache=false"
        )
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
        log(
            f"note: deleted {len(pruned)} least-recently-used decoded cache store(s) "
            f"({_size_text(sum(pruned))}) to stay under data.cache_max_gb={max_gb:g}"
        )
    free = free_bytes(cache_dir)
    if free is not None and needed > free:
        raise UserError(
            f"{cache_dir}: the {kind} cache for these images needs about {_size_text(needed)} but "
            f"only {_size_text(free)} are free there; set data.cache_dir (or RESNETCLS_CACHE) "
            f"elsewhere, lower data.cache_size, or set data.cache=false"
        )


def _build(
    paths: list[str],
    geometry: StoreGeometry,
    cache_dir: Path,
    key: str,
    workers: int,
    log: Callable[[str], None],
    compressed: bool = False,
) -> DecodedStore:
    """Write the store under a temporary name and rename it into place. Called holding key's lock."""
    final = cache_dir / key
    for stale in cache_dir.glob(f"{key}.partial-*"):  # left by a killed builder; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    # the host too: on a cache_dir shared by several machines two builders' process ids may be the same
    tmp = cache_dir / f"{key}.partial-{socket.gethostname()}-{os.getpid()}"
    started = time.perf_counter()
    log(f"decoding {len(paths)} images once into the {'compressed ' if compressed else ''}cache {final} ...")
    try:
        write_store(tmp, paths, geometry, workers, compressed)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    store = open_store(final, len(paths))
    log(
        f"cached {len(paths) - len(store.bad)} images ({(final / 'data.u8').stat().st_size / 1e6:.0f} MB, "
        f"{len(store.bad)} bad) in {time.perf_counter() - started:.1f}s"
    )
    return store
