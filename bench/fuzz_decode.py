"""Seeded fuzzing of the one decode (data/decode.py): mutated bytes of real JPEG, PNG, GIF, WebP and TIFF
files must give an RGB image or our DecodeError, never any other exception, and never more memory than
decode_peak_bytes() promises for the mutated file's header (what serve's admission budget relies on).

Seeds: COIL-100 PNGs and hymenoptera JPEGs and its imageNotFound.gif from ../shared/data, plus WebP (lossy,
lossless) and TIFF (raw, LZW, JPEG-in-TIFF) re-encodings of one of those photographs. Mutations: bit flips,
truncation, header field overwrites (the first 128 bytes, extreme values included), and chunk splicing
(a slice of another seed file, or of the same one, pasted in). Each file's peak is read as VmHWM after
resetting it (/proc/self/clear_refs), with glibc's mmap threshold fixed so large buffers really come from
and return to the kernel.

    python bench/fuzz_decode.py                 # 10,000 files, seed 0
    python bench/fuzz_decode.py --files 2000 --seed 7
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import platform
import random
import re
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # must be set before the process starts: re-exec once
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import PIL  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from resnetcls.data.decode import PEAK_BYTES_FIXED, DecodeError, decode_image, probe_image  # noqa: E402
from resnetcls.records.envinfo import machine_line  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def load_seeds(per_kind: int) -> dict[str, bytes]:
    """name -> bytes of the real files and their WebP/TIFF re-encodings."""
    coil = sorted(DATA.glob("coil100-a/obj*/*.png"))[::97][:per_kind]
    photos = sorted(DATA.glob("hymenoptera/*/*/*.jpg"))[::41][:per_kind]
    gifs = sorted(DATA.glob("hymenoptera/*/*/*.gif"))
    if not coil or not photos or not gifs:
        raise SystemExit(f"seed images not found under {DATA} (coil100-a PNGs, hymenoptera JPEGs and GIF)")
    seeds = {p.name: p.read_bytes() for p in [*coil, *photos, *gifs]}
    with Image.open(photos[0]) as photo:
        photo = photo.convert("RGB")
    for name, fmt, kwargs in [
        ("photo.webp", "WEBP", {"quality": 80}),
        ("lossless.webp", "WEBP", {"lossless": True}),
        ("photo.tif", "TIFF", {}),
        ("lzw.tif", "TIFF", {"compression": "tiff_lzw"}),
        ("jpeg.tif", "TIFF", {"compression": "jpeg"}),
    ]:
        buffer = io.BytesIO()
        photo.save(buffer, fmt, **kwargs)
        seeds[name] = buffer.getvalue()
    # Large seeds (3 Mpx) in the modes whose conversions cost most, so the per-pixel part of the bound is
    # tested and not just its fixed part.
    big = photo.resize((2048, 1536), Image.BICUBIC)
    gray = big.convert("L")
    alpha = Image.linear_gradient("L").resize(big.size)
    variants = [
        ("big.jpg", big, "JPEG", {}),
        ("big_rgba.png", Image.merge("RGBA", (*big.split(), alpha)), "PNG", {}),
        ("big_palette.png", big.convert("P"), "PNG", {"transparency": 0}),
        ("big_la.png", Image.merge("LA", (gray, alpha)), "PNG", {}),
        ("big_i16.png", gray.convert("I").point(lambda v: v * 257).convert("I;16"), "PNG", {}),
        ("big.webp", big, "WEBP", {"quality": 80}),
        ("big_lzw.tif", big, "TIFF", {"compression": "tiff_lzw"}),
    ]
    for name, image, fmt, kwargs in variants:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        seeds[name] = buffer.getvalue()
    return seeds


EXTREMES = [
    b"\x00\x00",
    b"\xff\xff",
    b"\x7f\xff",
    b"\x00\x01",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x80\x00\x00\x00",
    b"\x00\x00\x10\x00",
]


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> tuple[str, bytes]:
    """One seeded mutation: (kind, mutated bytes)."""
    kind = rng.choice(["bitflip", "truncate", "header", "splice"])
    buf = bytearray(data)
    if kind == "bitflip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        buf = buf[: rng.randrange(len(buf))]
    elif kind == "header":
        for _ in range(rng.randint(1, 3)):
            value = rng.choice(EXTREMES) if rng.random() < 0.5 else rng.randbytes(rng.choice([1, 2, 4]))
            i = rng.randrange(min(128, len(buf)))
            buf[i : i + len(value)] = value
    else:
        donor = rng.choice(others + [data])
        start = rng.randrange(len(donor))
        piece = donor[start : start + rng.randint(1, 4096)]
        at = rng.randrange(len(buf))
        if rng.random() < 0.5:
            buf[at:at] = piece  # insert
        else:
            buf[at : at + len(piece)] = piece  # overwrite
    return kind, bytes(buf)


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) * 1024


def measure(data: bytes, name: str, max_pixels: int) -> tuple[str, int, int]:
    """(outcome, peak bytes above the resident baseline, bound in bytes) of one decode."""
    try:
        width, height, bound = probe_image(data)
    except Exception:  # noqa: BLE001 - a header we do not read: decode refuses it before allocating pixels
        bound = PEAK_BYTES_FIXED
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    try:
        decode_image(data, name=name, max_pixels=max_pixels)
        outcome = "decoded"
    except DecodeError as e:
        words = re.sub(r"\d+", "N", e.reason.split(":")[0].split("(")[0].strip())
        outcome = "DecodeError: " + (words if len(words) < 60 else words[:57] + "...")
    return outcome, _status("VmHWM") - base, bound


@dataclass
class Run:
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    kinds: collections.Counter = field(default_factory=collections.Counter)
    unexpected: list = field(default_factory=list)  # (label, exception text, short traceback)
    over: list = field(default_factory=list)  # (label, peak, bound) above the bound
    worst: tuple = (0.0, 0, 1, "")  # (peak / bound, peak, bound, label)
    wall_s: float = 0.0


def fuzz(files: int, seed: int, max_pixels: int, seeds: dict[str, bytes]) -> Run:
    """Decode `files` mutated files; C libraries' stderr chatter (libtiff, libjpeg) is silenced meanwhile."""
    rng, names, blobs, run = random.Random(seed), list(seeds), list(seeds.values()), Run()
    saved_stderr, started = os.dup(2), time.perf_counter()
    with open(os.devnull, "w") as devnull, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings about odd metadata are not failures
        os.dup2(devnull.fileno(), 2)
        try:
            for n in range(files):
                pick = rng.randrange(len(blobs))
                kind, data = mutate(rng, blobs[pick], blobs)
                run.kinds[kind] += 1
                label = f"#{n} ({kind} of {names[pick]})"
                try:
                    outcome, peak, bound = measure(data, label, max_pixels)
                except Exception as e:  # noqa: BLE001 - exactly what this benchmark looks for
                    run.unexpected.append((label, f"{type(e).__name__}: {e}", traceback.format_exc(limit=3)))
                    run.outcomes[f"UNEXPECTED {type(e).__name__}"] += 1
                    continue
                run.outcomes[outcome] += 1
                run.worst = max(run.worst, (peak / bound, peak, bound, label))
                if peak > bound:
                    run.over.append((label, peak, bound))
        finally:
            os.dup2(saved_stderr, 2)
    run.wall_s = time.perf_counter() - started
    return run


def report(run: Run, files: int) -> None:
    print(
        f"{files} files in {run.wall_s:.0f} s ({files / run.wall_s:.0f} files/s); mutations: "
        + ", ".join(f"{k} {v}" for k, v in sorted(run.kinds.items()))
    )
    print(f"\n{'outcome':<72} {'files':>6}")
    for outcome, count in run.outcomes.most_common():
        print(f"{outcome:<72} {count:>6}")
    ratio, peak, bound, label = run.worst
    print(
        f"\npeak memory above the baseline: worst {peak / 1e6:.1f} MB = {ratio:.2f} x its bound of "
        f"{bound / 1e6:.1f} MB ({label}); files over their bound: {len(run.over)}"
    )
    for label, peak, bound in run.over[:10]:
        print(f"  over: {label}: {peak / 1e6:.1f} MB > {bound / 1e6:.1f} MB")
    print(f"unexpected exceptions (not DecodeError): {len(run.unexpected)}")
    for label, text, trace in run.unexpected[:10]:
        print(f"  {label}: {text}\n{trace}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=4_000_000,
        help="decode_image's limit for the run (small: mutated headers may claim any size)",
    )
    parser.add_argument("--per-kind", type=int, default=8, help="real files taken per data set")
    args = parser.parse_args()
    print(f"machine: {machine_line()}; Python {platform.python_version()}, Pillow {PIL.__version__}")
    seeds = load_seeds(args.per_kind)
    print(f"{len(seeds)} seed files: {', '.join(seeds)}")
    print(f"{args.files} mutated files, seed {args.seed}, max_pixels {args.max_pixels}\n", flush=True)
    run = fuzz(args.files, args.seed, args.max_pixels, seeds)
    report(run, args.files)
    if run.unexpected or run.over:
        raise SystemExit("FAILED: an exception other than DecodeError, or a decode above its memory bound")


if __name__ == "__main__":
    main()
