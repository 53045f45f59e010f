"""`resnetcls data synth`: a procedural stand-in for an OpenLORIS-Object-like data set.

Each class is one distinct object (shape x pattern x colour). Every image shows it from a random viewpoint
(rotation, position, perspective) under the four OpenLORIS factors, each at three levels drawn per image:
illumination (1 normal, 2 dim with a colour cast, 3 dark with a strong directional gradient), occlusion
(0/25/50% of the object covered), pixel_size (object large/medium/small) and clutter (plain background,
textured background, textured with distractor shapes). Deterministic by seed.

Two layouts: `manifest` (OUT/<class>/<n>.jpg + manifest.csv, each image's factor levels drawn at random) and
`openloris` (the OpenLORIS-Object challenge's folders, with the paper's protocol: 12 batches, each one factor
at one level, see synthesize_openloris).
"""

from __future__ import annotations

import io
import itertools
import math
import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import UserError
from ..utils.atomic import csv_text, write_atomic, write_text_atomic

SHAPES = ["circle", "square", "triangle", "star", "cross", "hexagon", "diamond", "ring"]
PATTERNS = ["solid", "striped", "dotted", "checked"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "magenta": (210, 50, 200),
    "cyan": (40, 200, 210),
    "orange": (245, 140, 30),
    "white": (235, 235, 235),
}
FACTORS = ("illumination", "occlusion", "pixel_size", "clutter")
SPLIT_SHARES = (("train", 0.7), ("val", 0.15), ("test", 0.15))


def class_designs(num_classes: int) -> list[tuple[str, str, str]]:
    """Distinct (colour, pattern, shape) objects: greedily pick designs that differ in >= 2 attributes."""
    if not 1 <= num_classes <= len(SHAPES) * len(PATTERNS) * len(COLOURS):
        raise UserError(f"--classes {num_classes}: must be between 1 and 256")
    combos = list(itertools.product(COLOURS, PATTERNS, SHAPES))
    random.Random(1234).shuffle(combos)  # fixed: class identities do not depend on the data seed
    chosen: list[tuple[str, str, str]] = []
    for min_diff in (3, 2, 1):
        for combo in combos:
            if combo not in chosen and all(sum(a != b for a, b in zip(combo, c)) >= min_diff for c in chosen):
                chosen.append(combo)
            if len(chosen) == num_classes:
                return chosen
    return chosen


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring_points(n: int, radii: list[float]) -> list[tuple[float, float]]:
        pts = []
        for i in range(n):
            a = angle + 2 * math.pi * i / n
            rad = r * radii[i % len(radii)]
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts

    if shape == "square":
        return ring_points(4, [1.0])
    if shape == "triangle":
        return ring_points(3, [1.0])
    if shape == "hexagon":
        return ring_points(6, [1.0])
    if shape == "diamond":
        return ring_points(4, [1.0, 0.55])
    if shape == "star":
        return ring_points(10, [1.0, 0.45])
    if shape == "cross":
        return ring_points(12, [1.0, 1.0, 0.45])
    raise ValueError(shape)


def _object_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "ring":
            draw.ellipse([cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5], fill=0)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, angle), fill=255)
    return mask


def _pattern_layer(pattern: str, colour: tuple, size: int, angle: float, period: int) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    if pattern == "solid":
        on = np.ones_like(u, dtype=bool)
    elif pattern == "striped":
        on = (u // period) % 2 == 0
    elif pattern == "checked":
        on = ((u // period) + (v // period)) % 2 == 0
    else:  # dotted
        on = ((u % period - period / 2) ** 2 + (v % period - period / 2) ** 2) > (period * 0.3) ** 2
    base = np.array(colour, np.float32)
    dark = base * 0.25
    pixels = np.where(on[..., None], base, dark)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def _background(rng: random.Random, size: int, clutter: int) -> Image.Image:
    tone = rng.randint(70, 170)
    arr = np.full((size, size, 3), tone, np.float32)
    if clutter >= 2:
        nprng = np.random.default_rng(rng.randrange(2**32))
        noise = nprng.normal(0, 1, (size // 8, size // 8, 3)).astype(np.float32)
        noise = (
            np.array(
                Image.fromarray(((noise * 30) + 128).clip(0, 255).astype(np.uint8)).resize(
                    (size, size), Image.BICUBIC
                ),
                np.float32,
            )
            - 128
        )
        arr += noise
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
    if clutter >= 3:
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(2, 4)):  # distractor shapes: grey-ish, so they never look like a class
            r = rng.uniform(0.06, 0.14) * size
            cx, cy = rng.uniform(0, size), rng.uniform(0, size)
            g = rng.randint(30, 220)
            draw.polygon(
                _shape_polygon(rng.choice(SHAPES[1:7]), cx, cy, r, rng.uniform(0, 6.3)),
                fill=(g, g + rng.randint(-20, 20), g),
            )
    return img


def _perspective(img: Image.Image, mask: Image.Image, rng: random.Random, amount: float):
    size = img.width
    src = [(0, 0), (size, 0), (size, size), (0, size)]
    dst = [(x + rng.uniform(-amount, amount) * size, y + rng.uniform(-amount, amount) * size) for x, y in src]
    # Solve the 8 perspective coefficients mapping output (dst) coordinates back to input (src).
    a = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coeffs = np.linalg.solve(np.array(a, float), np.array([c for p in src for c in p], float))
    return (
        img.transform(img.size, Image.PERSPECTIVE, tuple(coeffs), Image.BILINEAR),
        mask.transform(mask.size, Image.PERSPECTIVE, tuple(coeffs), Image.BILINEAR),
    )


def render(design: tuple[str, str, str], levels: dict[str, int], image_size: int, seed: int) -> Image.Image:
    """One image of the object `design` under the factor levels, drawn at 2x and downsampled."""
    rng = random.Random(seed)
    colour, pattern, shape = design
    size = image_size * 2
    img = _background(rng, size, levels["clutter"])
    radius = size * {1: 0.36, 2: 0.27, 3: 0.19}[levels["pixel_size"]] * rng.uniform(0.9, 1.1)
    cx = size / 2 + rng.uniform(-0.5, 0.5) * (size / 2 - radius)
    cy = size / 2 + rng.uniform(-0.5, 0.5) * (size / 2 - radius)
    angle = rng.uniform(0, 2 * math.pi)
    mask = _object_mask(shape, size, cx, cy, radius, angle)
    layer = _pattern_layer(pattern, COLOURS[colour], size, angle, max(4, int(radius / 3)))
    layer, mask = _perspective(layer, mask, rng, 0.08)
    img.paste(layer, (0, 0), mask)
    occluded = {1: 0.0, 2: 0.25, 3: 0.5}[levels["occlusion"]]
    if occluded:
        draw = ImageDraw.Draw(img)
        side = 2 * radius
        g = rng.randint(40, 200)
        if rng.random() < 0.5:  # a vertical or horizontal band covering that share of the object's box
            x0 = cx - radius + (0 if rng.random() < 0.5 else side * (1 - occluded))
            draw.rectangle([x0, cy - radius - 2, x0 + side * occluded, cy + radius + 2], fill=(g, g, g))
        else:
            y0 = cy - radius + (0 if rng.random() < 0.5 else side * (1 - occluded))
            draw.rectangle([cx - radius - 2, y0, cx + radius + 2, y0 + side * occluded], fill=(g, g, g))
    arr = np.asarray(img, np.float32)
    illum = levels["illumination"]
    if illum >= 2:
        cast = np.array([rng.uniform(0.85, 1.15) for _ in range(3)], np.float32)
        arr = arr * rng.uniform(0.55, 0.75) * cast
    if illum == 3:
        theta = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
        ramp = 1 + 0.8 * (xx * math.cos(theta) + yy * math.sin(theta))
        arr = arr * ramp[..., None]
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(0.6))
    return img.resize((image_size, image_size), Image.LANCZOS)


def _render_job(job: tuple) -> None:
    design, levels, image_size, seed, path = job
    buffer = io.BytesIO()
    render(design, levels, image_size, seed).save(buffer, format="JPEG", quality=90)
    write_atomic(path, buffer.getvalue())


def _split_counts(n: int) -> tuple[int, int, int]:
    """(train, val, test) of n >= 3 images: the 70/15/15 shares, but at least one image in every split (a
    naive rounding gives 0 val/test images to a class with few images, and the class would go unmeasured)."""
    val = max(1, round(n * SPLIT_SHARES[1][1]))
    test = max(1, round(n * SPLIT_SHARES[2][1]))
    return n - val - test, val, test


def openloris_protocol() -> list[tuple[int, str, int]]:
    """(batch number, factor, level) of the 12 batches: each factor in turn (the paper's order: illumination,
    occlusion, object pixel size, clutter) at levels 1, 2, 3; the other factors stay at level 1 (normal)."""
    return [(3 * f + level, factor, level) for f, factor in enumerate(FACTORS) for level in (1, 2, 3)]


def synthesize_openloris(
    out_dir: str | os.PathLike,
    classes: int = 10,
    per_class: int = 100,
    image_size: int = 64,
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """Write the OpenLORIS-Object challenge layout: OUT/{train,validation,test}/batchK/label.csv
    (`file name,label`, integer labels) with the images next to it, per_class images of every object in every
    batch, split so that every object is in each batch's validation and test; OUT/classes.csv (label ->
    object) and OUT/batches.csv (batch -> factor, level) say what the numbers mean. Returns OUT."""
    if per_class < 3:
        raise UserError(f"--per-class {per_class}: need at least 3 per batch (train, validation and test)")
    out, designs, rng = Path(out_dir), class_designs(classes), random.Random(seed)
    jobs, tables = [], {}
    for batch, factor, level in openloris_protocol():
        levels = {f: level if f == factor else 1 for f in FACTORS}
        for label, design in enumerate(designs):
            split_of = [
                s for s, n in zip(("train", "validation", "test"), _split_counts(per_class)) for _ in range(n)
            ]
            rng.shuffle(split_of)
            for i, split in enumerate(split_of):
                folder = out / split / f"batch{batch}"
                name = f"{label:03d}_{i:04d}.jpg"
                jobs.append((design, levels, image_size, rng.randrange(2**31), str(folder / name)))
                tables.setdefault(folder, []).append([name, label])
    for folder in tables:
        folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        list(pool.map(_render_job, jobs, chunksize=32))
    for folder, rows in tables.items():
        write_text_atomic(folder / "label.csv", csv_text([["file name", "label"], *rows]))
    write_text_atomic(
        out / "classes.csv",
        csv_text([["label", "object"], *([i, "_".join(d)] for i, d in enumerate(designs))]),
    )
    write_text_atomic(out / "batches.csv", csv_text([["batch", "factor", "level"], *openloris_protocol()]))
    return out


def synthesize(
    out_dir: str | os.PathLike,
    classes: int = 10,
    per_class: int = 100,
    image_size: int = 64,
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """Write OUT_DIR/<class>/<n>.jpg and OUT_DIR/manifest.csv; returns the manifest path."""
    if per_class < 3:
        raise UserError(f"--per-class {per_class}: need at least 3 (train, val and test)")
    if image_size < 16:
        raise UserError(f"--image-size {image_size}: must be at least 16")
    out = Path(out_dir)
    designs = class_designs(classes)
    rng = random.Random(seed)
    jobs, rows = [], []
    for design in designs:
        name = "_".join(design)
        (out / name).mkdir(parents=True, exist_ok=True)
        split_of = [s for s, share in SPLIT_SHARES for _ in range(round(per_class * share))]
        split_of = (split_of + ["train"] * per_class)[:per_class]
        rng.shuffle(split_of)
        for i in range(per_class):
            levels = {f: rng.randint(1, 3) for f in FACTORS}
            rel = f"{name}/{i:04d}.jpg"
            jobs.append((design, levels, image_size, rng.randrange(2**31), str(out / rel)))
            rows.append([rel, name, split_of[i]] + [levels[f] for f in FACTORS])
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        list(pool.map(_render_job, jobs, chunksize=32))
    manifest = out / "manifest.csv"
    write_text_atomic(manifest, csv_text([["path", "label", "split", *FACTORS], *rows]))
    return manifest


PATCH_COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (30, 50, 220),
    "yellow": (230, 210, 30),
}


def synthesize_multilabel(
    out_dir: str | os.PathLike,
    images: int = 96,
    image_size: int = 32,
    seed: int = 0,
    columns: bool = False,
    val_share: float = 0.25,
) -> Path:
    """A multi-label data set with a known answer: each image holds 1 to 3 square patches of distinct colours
    (PATCH_COLOURS), each in its own quarter of the image at a random place within it (so none hides another),
    on a grey, noisy background, and its labels are exactly those colours. Writes OUT_DIR/<n>.png and
    OUT_DIR/manifest.csv (path,label,split with labels joined by ';', or with columns=True one 0/1 column
    per colour); the last val_share of the images are val. Deterministic by seed."""
    if image_size < 16:
        raise UserError(f"image size {image_size}: must be at least 16")
    out, rng = Path(out_dir), random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    names, half = sorted(PATCH_COLOURS), image_size // 2
    side = half * 3 // 4
    rows = []
    for n in range(images):
        chosen = sorted(rng.sample(names, rng.randint(1, 3)))
        noise = np.random.default_rng(rng.randrange(2**31)).integers(-12, 13, (image_size, image_size, 3))
        pixels = np.clip(128 + noise, 0, 255).astype(np.uint8)
        for name, quarter in zip(chosen, rng.sample(range(4), len(chosen))):
            y = quarter // 2 * half + rng.randrange(half - side + 1)
            x = quarter % 2 * half + rng.randrange(half - side + 1)
            pixels[y : y + side, x : x + side] = PATCH_COLOURS[name]
        Image.fromarray(pixels).save(out / f"{n:04d}.png")
        split = "val" if n >= images * (1 - val_share) else "train"
        labels = [int(name in chosen) for name in names] if columns else [";".join(chosen)]
        rows.append([f"{n:04d}.png", *labels, split])
    header = ["path", *(names if columns else ["label"]), "split"]
    manifest = out / "manifest.csv"
    write_text_atomic(manifest, csv_text([header, *rows]))
    return manifest
