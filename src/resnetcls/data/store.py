"""The on-disk format of a cache store (data/cache.py finds, builds and prunes them): CACHE_DIR/<key>/ with
`data.u8`, `index.npy` and `meta.json` (paths, settings, bad reasons), written last.

- decoded: every image's stored resize back to back as HWC uint8, index rows (offset, height, width; height 0
  = bad image), read memory-mapped with no copy;
- compressed (meta.json's "encoding": "jpeg"): the same resized images as JPEG at JPEG_QUALITY, index rows
  (offset, height, width, bytes), decoded again by whoever loads them (the DataLoader workers): about a tenth
  of the bytes for a JPEG decode per image and epoch, as FFCV's JPEG mode does.

A store is validated when opened (meta, index and data length agree; InvalidStore otherwise). The writer
streams: each image is written to data.u8 as it arrives from the decoding pool and dropped.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from ..utils.atomic import write_atomic, write_text_atomic
from .decode import DecodeError
from .geometry import StoreGeometry, decode_resized
from .scan import CRASHED, parallel_map

STORE_FORMAT = 2  # 2: the key includes inode and ctime
JPEG_QUALITY = (
    90  # of the compressed store (Pillow's scale); its effect on accuracy is measured in the README
)


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
        raise InvalidStore(
            f"format {meta.get('format') if isinstance(meta, dict) else None!r}, not {STORE_FORMAT}"
        )
    paths, bad = meta.get("paths"), meta.get("bad")
    if (
        not isinstance(paths, list)
        or not isinstance(bad, dict)
        or (count is not None and len(paths) != count)
    ):
        raise InvalidStore("meta.json does not list the images")
    columns = 4 if meta.get("encoding") else 3  # compressed: offset, height, width, bytes
    if index.dtype != np.int64 or index.shape != (len(paths), columns) or (index < 0).any():
        raise InvalidStore(
            f"index.npy has shape {index.shape} ({index.dtype}), expected ({len(paths)}, {columns}) int64"
        )
    if data_bytes != meta.get("bytes"):
        raise InvalidStore(f"data.u8 has {data_bytes} bytes, meta.json says {meta.get('bytes')}")
    ends = index[:, 0] + (index[:, 3] if columns == 4 else index[:, 1] * index[:, 2] * 3)
    if len(ends) and int(ends.max()) > data_bytes:
        raise InvalidStore("index.npy points past the end of data.u8")
    if not all(str(i).isdigit() and int(i) < len(paths) for i in bad):
        raise InvalidStore("meta.json names bad images that are not in the store")
    return meta, index


class DecodedStore:
    """Read side of a complete store: load(i) -> HWC uint8 array, or DecodeError for a bad image. Opening
    checks that meta.json, index.npy and data.u8 agree (InvalidStore otherwise). `kind` is "decoded" or
    "compressed" (open_store picks the class), `note` why a compressed store was chosen."""

    kind = "decoded"
    note = ""

    def __init__(
        self,
        directory: Path,
        count: int | None = None,
        meta: dict | None = None,
        index: np.ndarray | None = None,
    ) -> None:
        self.directory = Path(directory)
        if meta is None or index is None:
            meta, index = _read_store(self.directory, count)
        self.index = index
        self.paths: list[str] = [os.fsdecode(p.encode("utf-8", "surrogateescape")) for p in meta["paths"]]
        self.bad: dict[int, str] = {int(i): reason for i, reason in meta["bad"].items()}
        self._data = None  # opened lazily, so the store pickles cheaply into DataLoader workers

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}

    def _mapped(self) -> np.ndarray:
        if self._data is None:
            size = (self.directory / "data.u8").stat().st_size
            # "c" (copy-on-write) gives writable arrays, so torch.from_numpy needs no copy and no warning; the
            # plain ndarray view skips np.memmap's per-slice bookkeeping (a measurable share per image).
            self._data = (
                np.memmap(self.directory / "data.u8", np.uint8, "c").view(np.ndarray)
                if size
                else np.zeros(0, np.uint8)
            )
        return self._data

    def load(self, i: int) -> np.ndarray:
        if i in self.bad:
            raise DecodeError(self.paths[i], self.bad[i])
        offset, height, width = (int(v) for v in self.index[i][:3])
        return self._mapped()[offset : offset + height * width * 3].reshape(height, width, 3)

    @property
    def bad_files(self) -> dict[str, str]:
        return {self.paths[i]: reason for i, reason in sorted(self.bad.items())}


class CompressedStore(DecodedStore):
    """A store of JPEG-encoded resized images: load(i) decodes one (in the DataLoader worker that asks)."""

    kind = "compressed"

    def load(self, i: int) -> np.ndarray:
        if i in self.bad:
            raise DecodeError(self.paths[i], self.bad[i])
        offset, _height, _width, nbytes = (int(v) for v in self.index[i])
        with Image.open(io.BytesIO(self._mapped()[offset : offset + nbytes])) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)  # writable, as the decoded store's


def open_store(directory: Path, count: int | None = None) -> DecodedStore:
    """The complete store in directory, decoded or compressed as its meta.json says (InvalidStore
    otherwise)."""
    meta, index = _read_store(Path(directory), count)
    kind = CompressedStore if meta.get("encoding") else DecodedStore
    return kind(directory, count, meta, index)


def decode_for_store(args: tuple[str, StoreGeometry]) -> tuple[np.ndarray | None, str]:
    try:
        return decode_resized(*args), ""
    except DecodeError as e:
        return None, e.reason
    except MemoryError:  # the resize after the decode; decode_image turns its own into a DecodeError
        return None, "not enough memory to decode and resize this image"


def encode_for_store(args: tuple[str, StoreGeometry]) -> tuple[tuple[bytes, int, int] | None, str]:
    """The compressed store's entry for one image: (JPEG bytes, height, width) of its stored resize."""
    array, reason = decode_for_store(args)
    if array is None:
        return None, reason
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return (buffer.getvalue(), array.shape[0], array.shape[1]), ""


def _crashed_in_store(args: tuple[str, StoreGeometry]) -> tuple[None, str]:
    return None, CRASHED


def write_store(tmp: Path, paths: list[str], geometry: StoreGeometry, workers: int, compressed: bool) -> None:
    """Decode (and encode) on all cores, each image written to data.u8 as it arrives and then dropped."""
    tmp.mkdir(parents=True)
    index = np.zeros((len(paths), 4 if compressed else 3), dtype=np.int64)
    bad: dict[int, str] = {}
    offset = 0
    with open(tmp / "data.u8", "wb") as data:
        results = parallel_map(
            encode_for_store if compressed else decode_for_store,
            [(p, geometry) for p in paths],
            workers,
            on_crash=_crashed_in_store,
            desc="cache build",
        )
        for i, (entry, reason) in enumerate(results):
            if entry is None:
                bad[i] = reason
                continue
            if compressed:
                encoded, height, width = entry
                index[i] = (offset, height, width, len(encoded))
            else:
                encoded = np.ascontiguousarray(entry).tobytes()
                index[i] = (offset, entry.shape[0], entry.shape[1])
            data.write(encoded)
            offset += len(encoded)
        data.flush()
        os.fsync(data.fileno())
    buffer = io.BytesIO()
    np.save(buffer, index)
    write_atomic(tmp / "index.npy", buffer.getvalue())
    meta = {
        "format": STORE_FORMAT,
        "geometry": asdict(geometry),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "bytes": offset,
        "paths": [os.fsencode(p).decode("utf-8", "surrogateescape") for p in paths],
        "bad": {str(i): r for i, r in bad.items()},
        **({"encoding": "jpeg", "quality": JPEG_QUALITY} if compressed else {}),
    }
    # meta.json is written last: a store folder is only ever renamed into place after it exists.
    write_text_atomic(tmp / "meta.json", json.dumps(meta, ensure_ascii=True))
