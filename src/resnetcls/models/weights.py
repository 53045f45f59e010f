"""torchvision's ImageNet ResNet weights in the torch hub cache: what `resnetcls weights` lists, downloads and
installs, and what a recipe asks before it starts from ImageNet weights.

IMAGENET_WEIGHTS maps each depth to torchvision's IMAGENET1K_V1 file: (url, sha256 prefix). torchvision's file
names carry the first hex digits of the file's sha256; every download and every `--from FILE` is checked
against them before it lands in the cache. The cache is torch.hub.get_dir()/checkpoints
($TORCH_HOME/hub/checkpoints, by default ~/.cache/torch/hub/checkpoints), the folder torchvision itself reads,
so a file put there by either tool serves both. Only can_download() and download() touch the network, each
bounded by a timeout.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..utils.atomic import sha256_file, write_atomic
from ..utils.progress import progress_bar

DOWNLOAD_HOST = "download.pytorch.org"
BASE_URL = f"https://{DOWNLOAD_HOST}/models/"
# depth -> (torchvision's IMAGENET1K_V1 url, the sha256 prefix its file name carries). Tests point an entry at
# a small file of their own; tests/models/test_weights.py checks the table against torchvision's.
IMAGENET_WEIGHTS: dict[str, tuple[str, str]] = {
    "resnet18": (BASE_URL + "resnet18-f37072fd.pth", "f37072fd"),
    "resnet34": (BASE_URL + "resnet34-b627a593.pth", "b627a593"),
    "resnet50": (BASE_URL + "resnet50-0676ba61.pth", "0676ba61"),
    "resnet101": (BASE_URL + "resnet101-63fe2227.pth", "63fe2227"),
    "resnet152": (BASE_URL + "resnet152-394f9c45.pth", "394f9c45"),
}
CONNECT_TIMEOUT_S = 3.0  # can_download()'s default: the longest an offline machine waits before being told
READ_TIMEOUT_S = 60.0  # a download that stalls this long on one read fails instead of hanging
CHUNK = 1 << 20


@dataclass(frozen=True)
class CacheEntry:
    """One row of `resnetcls weights list`: a depth, its file in the cache and its size (0 when absent)."""

    arch: str
    path: Path
    size: int

    @property
    def present(self) -> bool:
        return self.size > 0


def cache_dir() -> Path:
    """The folder torchvision's weights live in: torch.hub.get_dir()/checkpoints (follows $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _entry(arch: str) -> tuple[str, str]:
    if arch not in IMAGENET_WEIGHTS:
        raise UserError(f"no ImageNet weights for {arch!r}; choose one of: {', '.join(IMAGENET_WEIGHTS)}")
    return IMAGENET_WEIGHTS[arch]


def cached_path(arch: str) -> Path:
    """Where arch's ImageNet file is (or would be) in the cache: torchvision's own file name."""
    url, _ = _entry(arch)
    return cache_dir() / Path(urllib.parse.urlsplit(url).path).name


def imagenet_weights_available(arch: str) -> Path | None:
    """The cached ImageNet file of arch, or None (also for a depth torchvision has no weights for).

    Looks at the local cache only and never touches the network, so a recipe may ask on every run. Presence
    only: `resnetcls weights download` checked the file's sha256 prefix when it put it there (and checks it
    again when run once more); loading a damaged file fails with a one-line error naming it.
    """
    if arch not in IMAGENET_WEIGHTS:
        return None
    path = cached_path(arch)
    return path if path.is_file() and path.stat().st_size > 0 else None


def cache_entries() -> list[CacheEntry]:
    """Every depth with its cache path and size (0 when the file is not there), in depth order."""
    rows = []
    for arch in IMAGENET_WEIGHTS:
        found = imagenet_weights_available(arch)
        rows.append(CacheEntry(arch, cached_path(arch), found.stat().st_size if found else 0))
    return rows


def _connect_target() -> tuple[str, int]:
    """download.pytorch.org:443, or the https proxy urllib would go through ($https_proxy, not $no_proxy)."""
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(DOWNLOAD_HOST):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if parts.hostname:
            return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    return DOWNLOAD_HOST, 443


def reach_error(timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection to download.pytorch.org (or the https proxy) opens within timeout_s, else
    why not. Never blocks longer than timeout_s: name lookup and connect run in a daemon thread that is left
    behind when it has not answered in time."""
    answer: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection(_connect_target(), timeout=timeout_s).close()
            answer.append(None)
        except Exception as e:  # OSError mostly; whatever it is, it is an answer: not reachable
            answer.append(str(e) or type(e).__name__)

    worker = threading.Thread(target=connect, name="resnetcls-can-download", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return answer[0] if answer else f"no answer within {timeout_s:g} s"


def can_download(timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether download.pytorch.org (or the https proxy) accepts a connection within timeout_s (default 3 s).

    A bounded connect check, no download: it never blocks longer than timeout_s, even when name lookup hangs,
    so an offline machine learns at once that it is offline.
    """
    return reach_error(timeout_s) is None


def how_to_fetch(arch: str) -> str:
    """What to do without network: where to get arch's file and how to install it here."""
    url, _ = _entry(arch)
    return (
        f"on a machine that is online download {url}, then run `resnetcls weights download {arch} --from "
        f"FILE` here (or copy it to {cached_path(arch)}, or pass --pretrained FILE)"
    )


def _hash_matches(path: Path, prefix: str) -> bool:
    try:
        return sha256_file(path).startswith(prefix)
    except OSError:  # unreadable: download it again (writing it then names the problem)
        return False


def _mismatch(arch: str, source: str | os.PathLike, actual: str) -> UserError:
    url, prefix = _entry(arch)
    other = next((a for a, (_, p) in IMAGENET_WEIGHTS.items() if a != arch and actual.startswith(p)), None)
    hint = f" (it is {other}'s file)" if other else ""
    return UserError(
        f"{source}: sha256 starts with {actual[: len(prefix)]}, expected {prefix} for {arch}'s ImageNet "
        f"weights ({Path(url).name}){hint}; refused"
    )


def _make_cache_dir() -> Path:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"{folder}: cannot create the weights cache ({e.strerror or e}); set TORCH_HOME"
        ) from None
    return folder


def install(arch: str, source: str | os.PathLike) -> Path:
    """Copy a file fetched by hand into the cache once its sha256 starts with arch's prefix; returns the
    cached path. A file with another hash is refused (UserError naming the expected and actual prefix)."""
    _, prefix = _entry(arch)
    source = Path(source)
    if not source.is_file():
        raise UserError(f"--from {source}: no such file")
    try:
        actual = sha256_file(source)
    except OSError as e:
        raise UserError(f"--from {source}: cannot read ({e.strerror or e})") from None
    if not actual.startswith(prefix):
        raise _mismatch(arch, source, actual)
    target = cached_path(arch)
    if target.is_file() and target.samefile(source):
        return target
    _make_cache_dir()
    with open(source, "rb") as f:
        write_atomic(target, lambda out: _copy(f, out), size_hint=source.stat().st_size)
    return target


def _copy(src, out) -> None:
    while chunk := src.read(CHUNK):
        out.write(chunk)


def _stream(response, out, arch: str, total: int | None) -> None:
    """Response body -> out, hashing as it goes; a network error or a wrong hash is a UserError (the caller's
    write_atomic then leaves nothing behind)."""
    url, prefix = _entry(arch)
    digest = hashlib.sha256()
    with progress_bar(total / 2**20 if total else None, f"download {arch}", unit="MiB") as bar:
        while True:
            try:
                chunk = response.read(CHUNK)
            except OSError as e:  # a dropped connection, or no data for READ_TIMEOUT_S
                raise UserError(
                    f"ImageNet weights for {arch}: download of {url} failed ({e}); {how_to_fetch(arch)}"
                ) from None
            if not chunk:
                break
            digest.update(chunk)
            out.write(chunk)
            bar.update(len(chunk) / 2**20)
    if not digest.hexdigest().startswith(prefix):
        raise _mismatch(arch, url, digest.hexdigest())


def download(arch: str, timeout_s: float = CONNECT_TIMEOUT_S) -> tuple[Path, bool]:
    """arch's ImageNet file in the cache: (path, whether it was downloaded now).

    A cached file whose sha256 prefix checks out is kept; otherwise the file is downloaded to a temporary
    name, checked and renamed into place. Offline (no connection within timeout_s, default 3 s, which it
    never waits past) it fails at once with a UserError saying where to get the file and how to install it.
    """
    url, prefix = _entry(arch)
    found = imagenet_weights_available(arch)
    if found and _hash_matches(found, prefix):
        return found, False
    reason = reach_error(timeout_s)
    if reason is not None:
        raise UserError(
            f"ImageNet weights for {arch}: cannot reach {DOWNLOAD_HOST} ({reason}); {how_to_fetch(arch)}"
        )
    _make_cache_dir()
    try:
        response = urllib.request.urlopen(url, timeout=READ_TIMEOUT_S)
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
        raise UserError(
            f"ImageNet weights for {arch}: download of {url} failed ({e}); {how_to_fetch(arch)}"
        ) from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        write_atomic(cached_path(arch), lambda out: _stream(response, out, arch, total), size_hint=total)
    return cached_path(arch), True


def fetch_weights(
    target: str, source: str | os.PathLike | None = None, timeout_s: float = CONNECT_TIMEOUT_S
) -> Iterator[tuple[str, Path, str]]:
    """`resnetcls weights download TARGET [--from SOURCE]`: target is a depth or "all"; yields (depth, cached
    path, "downloaded" | "already in the cache" | "installed") as each depth is done, in depth order."""
    if source is not None and target == "all":
        raise UserError(
            "--from FILE installs one file: name its depth, e.g. `resnetcls weights download resnet50 --from "
            "FILE`"
        )
    for arch in IMAGENET_WEIGHTS if target == "all" else [target]:
        if source is not None:
            yield arch, install(arch, source), "installed"
        else:
            path, fetched = download(arch, timeout_s)
            yield arch, path, "downloaded" if fetched else "already in the cache"


def cache_table() -> str:
    """`resnetcls weights list`: one row per depth, its size and cache path, or "missing" and the path the
    file would have."""
    lines = [
        f"ImageNet weights (torchvision IMAGENET1K_V1) in {cache_dir()}",
        f"{'depth':<10} {'size':>10}  file",
    ]
    for row in cache_entries():
        size = f"{row.size / 2**20:.1f} MiB" if row.present else "missing"
        lines.append(f"{row.arch:<10} {size:>10}  {row.path}")
    return "\n".join(lines) + "\n"
