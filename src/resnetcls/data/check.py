"""`resnetcls data check DATA`: decode every image once (all cores) and report what would hurt training.

Reports images and share per class per split, the class-imbalance ratio, every bad file with its reason,
exact duplicates (same file content) and leakage (the same content in train and in val/test), near-duplicate
groups (re-encoded, resized, shifted or re-lit copies, neighbouring video frames: data/neardup.py's perceptual
hash, computed in the same decode) within and across splits with the share of val/test images that have a
near-duplicate in train (for DATA without a split: under the hold-out `train` would make), classes present in
one split but not another, empty classes, the size distribution and the ignored files.
Human summary on stderr, full JSON to --out; with on_bad="fail" any bad file is an error (exit 2).
suggest_split writes a split.csv whose near-duplicate groups never cross the train/val boundary.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..utils.atomic import write_text_atomic
from .decode import DecodeError, decode_image
from .neardup import (
    COLOUR_THRESHOLD,
    MAX_THRESHOLD,
    PairSearch,
    groups_of,
    image_signature,
    leak_check_from_counts,
    near_in_reference,
    near_pairs,
    near_reference,
    threshold_counts,
    threshold_for,
)
from .scan import CRASHED, parallel_map
from .sources import DataSet, Samples, Splits, read_data, stratified_holdout, write_split_csv

SMALL_SIDE = 32  # images with a shorter side below this are listed: they carry little for a classifier
LARGEST_SHOWN = 5  # near-duplicate groups printed in the summary (the JSON lists all)
HOLDOUT_FRACTION, HOLDOUT_SEED = 0.1, 0  # `train`'s default hold-out (data.val_fraction, train.seed)
SIGNATURE_KEYS = ("phash", "chash", "phash_flipped", "chash_flipped")  # neardup.image_signature, as hex
GROUP_COLUMN = "neardup_group"  # the column --suggest-split adds, usable as data.split_by


def inspect_image(path: str) -> dict:
    """Read one file once: content hash, then the one decode; {"sha256", "width", "height", "phash"} or
    {"reason"}. phash is the perceptual (layout) hash and chash the colour hash, each as 16 hex digits, None for
    a flat image (data/neardup.py); phash_flipped and chash_flipped are those of the image upside down."""
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
        for label in samples.labels:
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


@dataclass
class NearDuplicates:
    """Every row of DATA (all splits) with the split it is in -- for DATA without a split, the one `train`'s
    default hold-out would make (simulated) -- and its near-duplicate groups (row indices)."""

    rows: Samples
    split_of: list[str]
    simulated: bool
    hashed: list[int]  # rows with a perceptual hash (decoded and not flat), in search order
    search: PairSearch
    groups: list[list[int]]  # row indices, largest group first
    threshold: int
    chance: float  # chance matches to expect per image (neardup.LeakCheck.chance)


def _all_rows(dataset: DataSet) -> tuple[Samples, list[str], bool]:
    """(every row as one Samples, the split of each, whether the split is simulated)."""
    if "all" in dataset.splits:
        rows = dataset.splits["all"]
        split_of = ["train"] * len(rows)
        for i in stratified_holdout(rows, HOLDOUT_FRACTION, HOLDOUT_SEED)[1]:
            split_of[i] = "val"
        return rows, split_of, True
    parts = list(dataset.splits.items())
    extra_cols = list(parts[0][1].extra)
    rows = Samples(
        [p for _, s in parts for p in s.paths],
        [label for _, s in parts for label in s.labels],
        dataset.classes,
        {c: [v for _, s in parts for v in s.extra.get(c, [""] * len(s))] for c in extra_cols},
    )
    return rows, [name for name, s in parts for _ in s.paths], False


def find_near_duplicates(dataset: DataSet, results: dict[str, dict], threshold: int | None) -> NearDuplicates:
    """Near-duplicate groups over all rows from the hashes inspect_image() computed (no second decode).
    threshold None: as `train` chooses it (below); a number: that layout threshold, its chance share stated."""
    rows, split_of, simulated = _all_rows(dataset)
    hashed = [k for k, p in enumerate(rows.paths) if results[p].get("phash")]
    sigs = [
        np.array([int(results[rows.paths[k]][key], 16) for k in hashed], dtype=np.uint64)
        for key in SIGNATURE_KEYS
    ]
    # As `train` chooses it: the table's threshold for the data size, tightened until under 1% of the val/test
    # rows turned upside down match train (neardup.leak_check_from_counts).
    is_train = np.array([split_of[k] == "train" for k in hashed], dtype=bool)
    start = threshold_for(len(hashed)) if threshold is None else threshold
    val, flipped, train = (
        (sigs[a][rows_of], sigs[b][rows_of])
        for a, b, rows_of in ((0, 1, ~is_train), (2, 3, ~is_train), (0, 1, is_train))
    )
    check = leak_check_from_counts(
        threshold_counts(near_reference(val, train, start), near_reference(flipped, train, start)),
        int((~is_train).sum()),
        len(hashed),
        tighten=threshold is None,
    )
    search = near_pairs(sigs[0], check.threshold, sigs[1])
    groups = [[hashed[i] for i in g] for g in groups_of(search)]
    return NearDuplicates(rows, split_of, simulated, hashed, search, groups, check.threshold, check.chance)


def leak_counts(nd: NearDuplicates, split_of: list[str] | None = None) -> dict:
    """{val/test: {images, with_near_duplicate_in_train, share}}: rows with a near-duplicate (within the
    threshold, directly) among the train rows of split_of (default: nd's own split)."""
    split_of = split_of or nd.split_of
    flagged = near_in_reference(nd.search, np.array([split_of[k] == "train" for k in nd.hashed], dtype=bool))
    leaks = {}
    for split in ("val", "test"):
        total = sum(1 for s in split_of if s == split)
        if total:
            n = int(sum(1 for k, f in zip(nd.hashed, flagged) if f and split_of[k] == split))
            leaks[split] = {"images": total, "with_near_duplicate_in_train": n, "share": round(n / total, 4)}
    return leaks


def near_duplicate_section(nd: NearDuplicates, results: dict[str, dict]) -> dict:
    """The report's "near_duplicates" entry: method, groups (with each file's split) and the leak shares."""
    groups = []
    for g in nd.groups:
        splits = [nd.split_of[k] for k in g]
        groups.append(
            {
                "size": len(g),
                "splits": {s: splits.count(s) for s in sorted(set(splits))},
                "files": [{"path": nd.rows.paths[k], "split": nd.split_of[k]} for k in g],
            }
        )
    chance = nd.chance  # per image, against all the others
    return {
        "method": f"64-bit DCT perceptual hash within {nd.threshold} bits and 64-bit colour hash within "
        f"{COLOUR_THRESHOLD} (data/neardup.py); by chance about {chance:.2%} of images would match "
        f"one of the {len(nd.hashed):,} others",
        "threshold": nd.threshold,
        "colour_threshold": COLOUR_THRESHOLD,
        "expected_false_matches_per_image": float(f"{chance:.3g}"),
        "group_count": len(groups),
        "files": sum(g["size"] for g in groups),
        "within_one_split": sum(1 for g in groups if len(g["splits"]) == 1),
        "across_splits": sum(1 for g in groups if len(g["splits"]) > 1),
        "flat_images_not_compared": sum(1 for r in results.values() if "phash" in r and r["phash"] is None),
        "comparisons": nd.search.comparisons,
        "split": (
            f"simulated: train's default hold-out (data.val_fraction={HOLDOUT_FRACTION}, seed {HOLDOUT_SEED})"
            if nd.simulated
            else "as DATA gives it"
        ),
        "leak": leak_counts(nd),
        "groups": groups,
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
    }


def _near_lines(near: dict) -> list[str]:
    """The summary lines for the near-duplicate section."""
    lines = [
        f"  near-duplicates ({near['method']}): {near['group_count']} groups ({near['files']} files); "
        f"{near['within_one_split']} within one split, {near['across_splits']} across splits"
        + (
            f"; {near['flat_images_not_compared']} flat images not compared"
            if near["flat_images_not_compared"]
            else ""
        )
    ]
    for g in near["groups"][:LARGEST_SHOWN]:
        names = ", ".join(f["path"] for f in g["files"][:4]) + (", ..." if g["size"] > 4 else "")
        lines.append(
            f"    {g['size']} files ({', '.join(f'{s} {n}' for s, n in g['splits'].items())}): {names}"
        )
    for split, leak in near["leak"].items():
        lines.append(
            f"  {leak['with_near_duplicate_in_train']} of {leak['images']} {split} images "
            f"({leak['share']:.1%}) have a near-duplicate in train"
            + (f" ({near['split']})" if near["split"].startswith("simulated") else "")
        )
    return lines


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
        lines += _near_lines(report["near_duplicates"])
    return "\n".join(lines)


def suggest_split(nd: NearDuplicates, out: str, val_fraction: float, seed: int) -> dict:
    """Write a split.csv (sources.write_split_csv) from train + val rows (all rows for DATA without a split):
    a stratified, seeded hold-out (sources.stratified_holdout) over near-duplicate groups, so no group
    crosses train and val; test rows stay test. Adds the group column; returns the new split's counts."""
    group_of = {k: f"g{n + 1}" for n, g in enumerate(nd.groups) for k in g}
    column = [group_of.get(k, f"i{k}") for k in range(len(nd.rows))]  # a lone image is a group of its own
    rows = Samples(nd.rows.paths, nd.rows.labels, nd.rows.classes, {**nd.rows.extra, GROUP_COLUMN: column})
    pool = [k for k, s in enumerate(nd.split_of) if s != "test"]
    test = [k for k, s in enumerate(nd.split_of) if s == "test"]
    train, val = stratified_holdout(rows.subset(pool), val_fraction, seed, GROUP_COLUMN)
    train, val = [pool[i] for i in train], [pool[i] for i in val]
    # stratified_holdout keeps a group together within one class; a group spanning classes (a mislabelled
    # copy) could still straddle, so such groups go to train whole.
    in_train = {column[k] for k in train}
    moved = [k for k in val if column[k] in in_train]
    train, val = sorted(train + moved), [k for k in val if column[k] not in in_train]
    write_split_csv(
        Splits(rows.classes, rows.subset(train), rows.subset(val), rows.subset(test) if test else None), out
    )
    split_of = ["test"] * len(rows)
    for k in train:
        split_of[k] = "train"
    for k in val:
        split_of[k] = "val"
    classes_without_val = sorted(
        {rows.classes[rows.labels[k]] for k in pool} - {rows.classes[rows.labels[k]] for k in val}
    )
    return {
        "train": len(train),
        "val": len(val),
        "test": len(test),
        "leak": leak_counts(nd, split_of),
        "classes_without_val": classes_without_val,
    }


def _print_suggestion(out: str, result: dict) -> None:
    test = f" / {result['test']} test (kept as given)" if result["test"] else ""
    print(
        f"suggested split written to {out}: {result['train']} train / {result['val']} val images{test}; "
        f"no near-duplicate group crosses train and val",
        file=sys.stderr,
    )
    if "test" in result["leak"]:
        t = result["leak"]["test"]
        print(
            f"  note: {t['with_near_duplicate_in_train']} of {t['images']} test images still have a "
            f"near-duplicate in train (the test split is kept as given)",
            file=sys.stderr,
        )
    if result["classes_without_val"]:
        print(
            f"  note: {len(result['classes_without_val'])} classes have no val images (each is one "
            f"near-duplicate group): {', '.join(result['classes_without_val'][:10])}",
            file=sys.stderr,
        )
    print(
        f"  train on it: resnetcls train {out}  (its {GROUP_COLUMN} column also works as "
        f"--set data.split_by={GROUP_COLUMN})",
        file=sys.stderr,
    )


def check_data(
    data: str,
    on_bad: str = "skip",
    out: str | None = None,
    batches: str = "",
    workers: int = -1,
    threshold: int | None = None,
    suggest: str | None = None,
    val_fraction: float = HOLDOUT_FRACTION,
    seed: int = HOLDOUT_SEED,
) -> dict:
    """Scan DATA once, print the summary on stderr, write the JSON report to `out`; returns the report.

    threshold: the near-duplicate layout-hash distance (None: chosen for the data size, find_near_duplicates);
    suggest: write a group-aware split.csv there (val_fraction and seed of its hold-out). Raises UserError (exit 2) after reporting when on_bad="fail" and any file is bad.
    """
    if on_bad not in ("skip", "fail"):
        raise UserError(f"--on-bad {on_bad!r}: expected skip or fail")
    if threshold is not None and not 0 <= threshold <= MAX_THRESHOLD:
        raise UserError(
            f"--near-threshold {threshold}: expected 0..{MAX_THRESHOLD} (bits of 64 that may differ; "
            "the false-match rate is measured up to there)"
        )
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction}: must be between 0 and 1 (exclusive)")
    if suggest is not None and Path(suggest).suffix.lower() != ".csv":
        raise UserError(f"--suggest-split {suggest}: expected a .csv file name (it is read back as DATA)")
    dataset = read_data(data, batches, strict=False)
    paths = sorted({p for samples in dataset.splits.values() for p in samples.paths})
    crashed = {"sha256": None, "reason": CRASHED}
    results = dict(
        zip(paths, parallel_map(inspect_image, paths, workers, on_crash=lambda _: crashed, desc="data check"))
    )
    nd = find_near_duplicates(dataset, results, threshold)
    report = build_report(data, dataset, results, near_duplicate_section(nd, results))
    print(format_summary(report), file=sys.stderr, flush=True)
    if suggest is not None:
        Path(suggest).parent.mkdir(parents=True, exist_ok=True)
        report["suggested_split"] = {"path": str(suggest), **suggest_split(nd, suggest, val_fraction, seed)}
        _print_suggestion(suggest, report["suggested_split"])
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
