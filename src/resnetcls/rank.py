"""`resnetcls rank MODEL FOLDER --out rank.csv`: which unlabelled images to label next (active learning).

Every image under FOLDER (recursively, hidden files skipped, as `predict` finds them) is scored by the
model's uncertainty, most uncertain first:
- margin (default): 1 - (p1 - p2), the gap between the two most probable classes turned into an uncertainty
  (1: a coin toss between two classes, 0: certain);
- entropy: -sum_c p_c log p_c in nats (0: certain, log(classes): uniform).
Ties keep the path order.

--diverse: the most uncertain images are often near-duplicates (frames of one video, one hard object), so
labelling all of them teaches the model one thing many times. With --diverse, the 5 x --limit most uncertain
images (all of them without --limit) are the candidates and k-center greedy (Sener & Savarese, "Active
Learning for Convolutional Neural Networks: A Core-Set Approach", 2018) picks from them: first the most
uncertain, then each time the candidate farthest (cosine distance of the model's pooled penultimate
features) from everything picked so far. The rows come in pick order.

The CSV is a DATA manifest (data/sources.py): path (relative to the CSV's folder), label (empty: fill it in),
and the extra columns guess (the model's top-1), guess_prob and uncertainty. Once filled in it trains as
DATA; a row left with an empty label is an error naming its line, so delete the rows you do not label.
Images that cannot be read are named on stderr, counted, and make the exit code 2 (as in `predict`); the
CSV of the others is written all the same.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import csv_text, write_text_atomic
from .errors import UserError
from .hardware import usable_cores
from .predict import Predictor, expand_inputs
from .progress import progress_bar

SCORES = ("margin", "entropy")
DIVERSE_POOL = 5  # candidates per requested pick for --diverse
COLUMNS = ["path", "label", "guess", "guess_prob", "uncertainty"]


@dataclass
class Scored:
    """The model's view of a set of images: good paths with their probabilities and pooled features, and
    the bad files with their reasons."""
    paths: list[str]
    probs: torch.Tensor
    features: torch.Tensor
    bad: list[tuple[str, str]]


def uncertainty(probs: torch.Tensor, by: str) -> torch.Tensor:
    """(N, classes) probabilities -> (N,) uncertainty, higher = label sooner (see the module docstring)."""
    if by not in SCORES:
        raise UserError(f"--by {by!r}: expected one of {', '.join(SCORES)}")
    if by == "entropy":
        return -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
    if probs.shape[1] < 2:
        return torch.zeros(len(probs))
    top2 = probs.topk(2, dim=1).values
    return 1 - (top2[:, 0] - top2[:, 1])


def k_center_greedy(features: torch.Tensor, first: int, count: int) -> list[int]:
    """count row indices of features: first, then each time the row farthest (cosine distance) from all
    picked so far."""
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    picked = [first]
    distance = 1 - unit @ unit[first]
    distance[first] = -1
    while len(picked) < min(count, len(unit)):
        nxt = int(distance.argmax())
        picked.append(nxt)
        distance = torch.minimum(distance, 1 - unit @ unit[nxt])
        distance[picked] = -1
    return picked


def pick_order(score: torch.Tensor, features: torch.Tensor, limit: int | None, diverse: bool) -> list[int]:
    """Row indices in the order to label: most uncertain first, or (diverse) k-center greedy over the
    DIVERSE_POOL x limit most uncertain."""
    # A stable sort on the negated score: ties keep the input (path) order.
    by_score = torch.sort(-score, stable=True).indices.tolist()
    count = len(by_score) if limit is None else min(limit, len(by_score))
    if not diverse:
        return by_score[:count]
    pool = by_score if limit is None else by_score[:DIVERSE_POOL * limit]
    chosen = k_center_greedy(features[pool], 0, count)
    return [pool[i] for i in chosen]


@torch.inference_mode()
def probabilities_and_features(predictor: Predictor, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and pooled penultimate features of a preprocessed batch, in the Predictor's
    precision (one forward gives both)."""
    model = predictor.model
    batch = batch.to(predictor.device, memory_format=predictor.memory_format)
    with torch.autocast(predictor.device.type, dtype=predictor.amp_dtype or torch.bfloat16,
                        enabled=predictor.amp_dtype is not None):
        features = model.forward_head(model.forward_features(batch), pre_logits=True)
        logits = model.get_classifier()(features)
    return logits.float().softmax(dim=1).cpu(), features.float().cpu()


def score_images(predictor: Predictor, paths: list[str], batch_size: int) -> Scored:
    """Decode (a few threads) and score paths in batches; unreadable files go to Scored.bad."""
    good, probs, features, bad = [], [], [], []
    with ThreadPoolExecutor(max(1, min(4, usable_cores()))) as pool, progress_bar(len(paths), "rank") as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            tensors = []
            for path, item in zip(chunk, pool.map(predictor.load, chunk)):
                if isinstance(item, str):
                    bad.append((path, item))
                else:
                    good.append(path)
                    tensors.append(item)
            if tensors:
                p, f = probabilities_and_features(predictor, torch.stack(tensors))
                probs.append(p)
                features.append(f)
            bar.update(len(chunk))
    if not good:
        return Scored([], torch.empty(0, len(predictor.classes)), torch.empty(0, 0), bad)
    return Scored(good, torch.cat(probs), torch.cat(features), bad)


def manifest_rows(scored: Scored, order: list[int], score: torch.Tensor, classes: list[str], csv_dir: Path):
    """The CSV rows (header first): paths relative to the CSV's folder, label empty."""
    rows = [COLUMNS]
    prob, guess = scored.probs.max(dim=1)
    for i in order:
        rel = os.path.relpath(os.path.abspath(scored.paths[i]), os.path.abspath(csv_dir))
        rows.append([Path(rel).as_posix(), "", classes[int(guess[i])], f"{float(prob[i]):.6f}",
                     f"{float(score[i]):.6f}"])
    return rows


def run_rank(model: str, folder: str, out: str, by: str = "margin", diverse: bool = False,
             limit: int | None = None, batch_size: int = 32, precision: str = "auto") -> int:
    """`resnetcls rank`: write the ranked manifest to out; exit 2 when any image could not be read."""
    if by not in SCORES:
        raise UserError(f"--by {by!r}: expected one of {', '.join(SCORES)}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: expected a whole number of at least 1")
    if not Path(folder).is_dir():
        raise UserError(f"{folder}: FOLDER must be a folder of images")
    out_path = Path(out)
    if not out_path.parent.is_dir():
        raise UserError(f"--out {out}: folder {out_path.parent} does not exist")
    predictor = Predictor(model, precision=precision)
    items = expand_inputs([folder])
    paths = [p for p, reason in items if not reason]
    if not paths:
        raise UserError(f"{folder}: no image files found (searched recursively)")
    scored = score_images(predictor, paths, batch_size)
    for path, reason in scored.bad:
        print(f"warning: {path}: {reason} (not ranked)", file=sys.stderr)
    score = uncertainty(scored.probs, by)
    order = pick_order(score, scored.features, limit, diverse) if scored.paths else []
    write_text_atomic(out_path, csv_text(manifest_rows(scored, order, score, predictor.classes, out_path.parent)))
    how = "k-center greedy among the most uncertain" if diverse else "most uncertain first"
    print(f"ranked {len(scored.paths)} images by {by} ({how}); wrote {len(order)} rows to {out_path}"
          + (f"; {len(scored.bad)} of {len(paths)} images could not be read" if scored.bad else ""),
          file=sys.stderr)
    return 2 if scored.bad else 0
