"""Near-duplicate groups across DATA's splits for `data check`: the groups from the hashes the scan computed,
the share of val/test images with a near-duplicate in train (for DATA without a split: under the hold-out
`train` would make), the report's section and summary lines, and a split.csv whose groups never cross the
train/val boundary (--suggest-split).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from .neardup import (
    COLOUR_THRESHOLD,
    PairSearch,
    groups_of,
    leak_check_from_counts,
    near_in_reference,
    near_pairs,
    near_reference,
    threshold_counts,
    threshold_for,
)
from .sources import DataSet, Samples, Splits, stratified_holdout, write_split_csv

LARGEST_SHOWN = 5  # near-duplicate groups printed in the summary (the JSON lists all)
HOLDOUT_FRACTION, HOLDOUT_SEED = 0.1, 0  # `train`'s default hold-out (data.val_fraction, train.seed)
SIGNATURE_KEYS = ("phash", "chash", "phash_flipped", "chash_flipped")  # neardup.image_signature, as hex
GROUP_COLUMN = "neardup_group"  # the column --suggest-split adds, usable as data.split_by


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
        None if parts[0][1].label_sets is None else [t for _, s in parts for t in s.label_sets],
    )
    return rows, [name for name, s in parts for _ in s.paths], False


def find_near_duplicates(dataset: DataSet, results: dict[str, dict], threshold: int | None) -> NearDuplicates:
    """Near-duplicate groups over all rows from the hashes inspect_image() computed (no second decode).
    threshold None: as `train` chooses it (below); a number: that layout threshold, its chance share
    stated."""
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


def near_summary_lines(near: dict) -> list[str]:
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


def suggest_split(nd: NearDuplicates, out: str, val_fraction: float, seed: int) -> dict:
    """Write a split.csv (sources.write_split_csv) from train + val rows (all rows for DATA without a split):
    a stratified, seeded hold-out (sources.stratified_holdout) over near-duplicate groups, so no group
    crosses train and val; test rows stay test. Adds the group column; returns the new split's counts."""
    group_of = {k: f"g{n + 1}" for n, g in enumerate(nd.groups) for k in g}
    column = [group_of.get(k, f"i{k}") for k in range(len(nd.rows))]  # a lone image is a group of its own
    extra = {**nd.rows.extra, GROUP_COLUMN: column}
    rows = Samples(nd.rows.paths, nd.rows.labels, nd.rows.classes, extra, nd.rows.label_sets)
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


def print_suggestion(out: str, result: dict) -> None:
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
