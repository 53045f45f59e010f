"""`resnetcls data check DATA`: decode every image once (all cores) and report what would hurt training.

Reports images and share per class per split, the class-imbalance ratio, every bad file with its reason,
exact duplicates (same file content) and leakage (the same content in train and in val/test), near-duplicate
groups (re-encoded, resized, shifted or re-lit copies, neighbouring video frames: data/neardup.py's perceptual
hash, computed in the same decode) within and across splits with the share of val/test images that have a
near-duplicate in train (for DATA without a split: under the hold-out `train` would make), classes present in
one split but not another, empty classes, the size distribution and the ignored files; for a multi-label
CSV, the label co-occurrence (data/csvlabels.py's label_section).
Human summary on stderr, full JSON to --out; with on_bad="fail" any bad file is an error (exit 2).
--suggest-split writes a split.csv whose near-duplicate groups never cross the train/val boundary
(data/nearsplit.py).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..utils.atomic import write_text_atomic
from .csvlabels import cooccurrence_lines, label_section
from .decode import DecodeError, decode_image
from .neardup import MAX_THRESHOLD, image_signature
from .nearsplit import (
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    SIGNATURE_KEYS,
    find_near_duplicates,
    near_duplicate_section,
    near_summary_lines,
    print_suggestion,
    suggest_split,
)
from .scan import CRASHED, parallel_map
from .sources import DataSet, read_data

SMALL_SIDE = 32  # images with a shorter side below this are listed: they carry little for a classifier


def inspect_image(path: str) -> dict:
    """Read one file once: content hash, then the one decode; {"sha256", "width", "height", "phash"} or
    {"reason"}. phash is the perceptual (layout) hash and chash the colour hash, each as 16 hex digits, None
    for a flat image (data/neardup.py); phash_flipped and chash_flipped are those of the image upside down."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return {"sha256": None, "reason": f"cannot read file: {e.strerror or e}"}
    info: dict = {"sha256": hashlib.sha256(data).hexdigest()}
    try:
        image = decode_image(data, name=path)
        sig = image_signature(image)
        info.update(
            width=image.width,
            height=image.height,
            **{key: None if sig is None else f"{h:016x}" for key, h in zip(SIGNATURE_KEYS, sig or [0] * 4)},
        )
    except DecodeError as e:
        info["reason"] = e.reason
    return info


def _class_table(dataset: DataSet) -> dict:
    table = {}
    for split, samples in dataset.splits.items():
        counts = [0] * len(dataset.classes)
        for labels in samples.label_sets or [(label,) for label in samples.labels]:
            for label in labels:  # a multi-label image counts in each of its classes
                counts[label] += 1
        nonzero = [c for c in counts if c]
        table[split] = {
            "images": len(samples),
            "imbalance_ratio": round(max(nonzero) / min(nonzero), 3) if nonzero else None,
            "per_class": {
                c: {"images": n, "share": round(n / max(len(samples), 1), 4)}
                for c, n in zip(dataset.classes, counts)
            },
        }
    return table


def _content_groups(dataset: DataSet, results: dict[str, dict]) -> tuple[list, list]:
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for split, samples in dataset.splits.items():
        for path in samples.paths:
            digest = results[path]["sha256"]
            if digest:
                by_hash[digest].append((split, path))
    duplicates = [
        {"sha256": h, "paths": [p for _, p in group]} for h, group in by_hash.items() if len(group) > 1
    ]
    leakage = []
    for h, group in by_hash.items():
        splits = {s for s, _ in group}
        if "train" in splits and splits & {"val", "test"}:
            leakage.append({"sha256": h, **{s: [p for t, p in group if t == s] for s in sorted(splits)}})
    return duplicates, leakage


def _size_stats(results: dict[str, dict]) -> dict:
    sizes = [(r["width"], r["height"]) for r in results.values() if "width" in r]
    if not sizes:
        return {}
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    return {
        "width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
        "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)},
        "distinct_sizes": len(set(sizes)),
        f"short_side_below_{SMALL_SIDE}": sorted(
            p for p, r in results.items() if "width" in r and min(r["width"], r["height"]) < SMALL_SIDE
        ),
    }


def build_report(data: str, dataset: DataSet, results: dict[str, dict], near: dict | None = None) -> dict:
    """The full JSON report from the data set and one inspect_image() result per file (near: the
    near_duplicate_section, when computed)."""
    table = _class_table(dataset)
    duplicates, leakage = _content_groups(dataset, results)
    counts = {c: {s: t["per_class"][c]["images"] for s, t in table.items()} for c in dataset.classes}
    missing = {
        c: [s for s, n in per.items() if n == 0]
        for c, per in counts.items()
        if any(per.values()) and not all(per.values())
    }
    bad = [
        {"path": p, "split": s, "reason": results[p]["reason"]}
        for s, samples in dataset.splits.items()
        for p in samples.paths
        if "reason" in results[p]
    ]
    return {
        "data": str(data),
        "layout": dataset.layout,
        "classes": dataset.classes,
        "images": sum(len(s) for s in dataset.splits.values()),
        "splits": table,
        "bad": bad,
        "duplicates": duplicates,
        "leakage": leakage,
        "classes_missing_from_split": missing,
        "empty_classes": [c for c, per in counts.items() if not any(per.values())],
        "sizes": _size_stats(results),
        "ignored": {kind: {"count": len(paths), "paths": paths} for kind, paths in dataset.ignored.items()},
        **({"near_duplicates": near} if near is not None else {}),
        **label_section(dataset),
    }


def format_summary(report: dict) -> str:
    """The human summary printed on stderr."""
    lines = [
        f"{report['data']}: {report['images']} images, {len(report['classes'])} classes "
        f"({report['layout']} layout)"
    ]
    for split, t in report["splits"].items():
        shares = sorted(t["per_class"].items(), key=lambda kv: kv[1]["images"])
        lo, hi = shares[0], shares[-1]
        lines.append(
            f"  {split}: {t['images']} images; smallest class {lo[0]} {lo[1]['images']} "
            f"({lo[1]['share']:.1%}), largest {hi[0]} {hi[1]['images']} ({hi[1]['share']:.1%}); "
            f"imbalance ratio {t['imbalance_ratio']}"
        )
    s = report["sizes"]
    if s:
        lines.append(
            f"  sizes: width {s['width']['min']}-{s['width']['max']} (median {s['width']['median']}), "
            f"height {s['height']['min']}-{s['height']['max']} (median {s['height']['median']}), "
            f"{s['distinct_sizes']} distinct; {len(s[f'short_side_below_{SMALL_SIDE}'])} with a side "
            f"below {SMALL_SIDE} px"
        )
    lines.append(f"  bad files: {len(report['bad'])}")
    lines += [f"    {b['path']}: {b['reason']}" for b in report["bad"]]
    lines.append(
        f"  exact duplicates: {len(report['duplicates'])} groups "
        f"({sum(len(d['paths']) for d in report['duplicates'])} files)"
    )
    lines.append(f"  leakage (same content in train and val/test): {len(report['leakage'])}")
    lines += [
        f"    {', '.join(p for k, v in g.items() if k != 'sha256' for p in v)}"
        for g in report["leakage"][:10]
    ]
    for c, splits in report["classes_missing_from_split"].items():
        lines.append(f"  class {c!r} has no images in: {', '.join(splits)}")
    if report["empty_classes"]:
        lines.append(f"  empty classes: {', '.join(report['empty_classes'])}")
    ignored = ", ".join(
        f"{v['count']} {k.replace('_', ' ')}" for k, v in report["ignored"].items() if v["count"]
    )
    if ignored:
        lines.append(f"  ignored: {ignored}")
    if "near_duplicates" in report:
        lines += near_summary_lines(report["near_duplicates"])
    if "multi_label" in report:
        lines += cooccurrence_lines(report["multi_label"])
    return "\n".join(lines)


@dataclass(frozen=True)
class NearOptions:
    """`data check`'s near-duplicate options (--near-threshold, --suggest-split, --val-fraction, --seed)."""

    threshold: int | None = None  # the layout-hash distance; None: chosen for the data size
    suggest: str | None = None  # write a group-aware split.csv there
    val_fraction: float = HOLDOUT_FRACTION  # of the suggested split's hold-out
    seed: int = HOLDOUT_SEED  # of the suggested split's hold-out


def check_data(
    data: str,
    on_bad: str = "skip",
    out: str | None = None,
    batches: str = "",
    workers: int = -1,
    near: NearOptions | None = None,
) -> dict:
    """Scan DATA once, print the summary on stderr, write the JSON report to `out`; returns the report.

    near: the near-duplicate threshold (None: chosen for the data size, find_near_duplicates) and where to
    write a group-aware split.csv, with its hold-out's val_fraction and seed (default NearOptions()).
    Raises UserError (exit 2) after reporting when on_bad="fail" and any file is bad.
    """
    near = near or NearOptions()
    if on_bad not in ("skip", "fail"):
        raise UserError(f"--on-bad {on_bad!r}: expected skip or fail")
    if near.threshold is not None and not 0 <= near.threshold <= MAX_THRESHOLD:
        raise UserError(
            f"--near-threshold {near.threshold}: expected 0..{MAX_THRESHOLD} (bits of 64 that may "
            "differ; the false-match rate is measured up to there)"
        )
    if not 0 < near.val_fraction < 1:
        raise UserError(f"--val-fraction {near.val_fraction}: must be between 0 and 1 (exclusive)")
    if near.suggest is not None and Path(near.suggest).suffix.lower() != ".csv":
        raise UserError(
            f"--suggest-split {near.suggest}: expected a .csv file name (it is read back as DATA)"
        )
    dataset = read_data(data, batches, strict=False)
    paths = sorted({p for samples in dataset.splits.values() for p in samples.paths})
    crashed = {"sha256": None, "reason": CRASHED}
    results = dict(
        zip(paths, parallel_map(inspect_image, paths, workers, on_crash=lambda _: crashed, desc="data check"))
    )
    nd = find_near_duplicates(dataset, results, near.threshold)
    report = build_report(data, dataset, results, near_duplicate_section(nd, results))
    print(format_summary(report), file=sys.stderr, flush=True)
    if near.suggest is not None:
        Path(near.suggest).parent.mkdir(parents=True, exist_ok=True)
        report["suggested_split"] = {
            "path": str(near.suggest),
            **suggest_split(nd, near.suggest, near.val_fraction, near.seed),
        }
        print_suggestion(near.suggest, report["suggested_split"])
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(report, indent=2) + "\n")
        print(f"report written to {out}", file=sys.stderr)
    if on_bad == "fail" and report["bad"]:
        raise UserError(
            f"{len(report['bad'])} bad image(s) in {data}: "
            + "; ".join(f"{b['path']}: {b['reason']}" for b in report["bad"])
        )
    return report
