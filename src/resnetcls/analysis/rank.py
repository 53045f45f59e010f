"""`resnetcls rank MODEL FOLDER --out rank.csv`: which unlabelled images to label next (active learning).

Every image under FOLDER (recursively, hidden files skipped, as `predict` finds them) is scored by the
model's uncertainty, most uncertain first:
- margin (default): 1 - (p1 - p2), the gap between the two most probable classes turned into an uncertainty
  (1: a coin toss between two classes, 0: certain);
- entropy: -sum_c p_c log p_c in nats (0: certain, log(classes): uniform).
Ties keep the path order.
For a multi-label model (model.json "multi_label"), whose classes are answered each by its own sigmoid
probability p_c and threshold t_c, an image is uncertain where some class sits near its threshold:
- margin: 1 - min_c |p_c - t_c| (1: a class exactly on its threshold; the closer, the sooner to label);
- entropy: the mean over classes of the binary entropy -(p log p + (1 - p) log(1 - p)) in nats (0: certain,
  log 2: every class at 0.5).
Its guess column lists the labels predict would answer (joined with the model's separator, empty for none)
and guess_prob their probabilities, joined alike.

--diverse: the most uncertain images are often near-duplicates (frames of one video, one hard object), so
labelling all of them teaches the model one thing many times. With --diverse, K = --limit images (1,000
without --limit: DIVERSE_PICKS) are picked by k-center greedy (Sener & Savarese, "Active Learning for
Convolutional Neural Networks: A Core-Set Approach", 2018) among the 5 x K most uncertain (DIVERSE_POOL):
first the most uncertain, then each time the candidate farthest (cosine distance of the model's pooled
penultimate features) from everything picked so far. The picks come first, in pick order; without --limit
every other image follows, most uncertain first, so the manifest still lists every image.
Cost: k-center greedy takes K x 5K distances, whatever the number of images N; the rest is one pass over the
images and one sort, so the time grows with N, not N squared. Memory: per image only its path, top-1 class,
probability and score; pooled features only for the 5 x K candidates (the best ones so far while scoring).

The CSV is a DATA manifest (data/sources.py): path (relative to the CSV's folder), label (empty: fill it in),
and the extra columns guess (the model's top-1), guess_prob and uncertainty. Once filled in it trains as
DATA; a row left with an empty label is an error naming its line, so delete the rows you do not label.
With open-set rejection on (the model has an open-set threshold; --open-set, --unknown-accept as predict's)
two more columns say what predict would: open_set_score and unknown (true below the threshold); the order
stays the uncertainty's.
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

from ..errors import UserError
from ..inference.command import unknown_accept_note
from ..inference.inputs import expand_inputs
from ..inference.predictor import Predictor
from ..utils.atomic import csv_text, write_text_atomic
from ..utils.hardware import usable_cores
from ..utils.progress import progress_bar

SCORES = ("margin", "entropy")
DIVERSE_POOL = 5  # candidates per requested pick for --diverse
DIVERSE_PICKS = 1000  # --diverse picks without --limit (then the rest follow, most uncertain first)
COLUMNS = ["path", "label", "guess", "guess_prob", "uncertainty"]
OPEN_SET_COLUMNS = ["open_set_score", "unknown"]  # with open-set rejection on (the model has a threshold)


@dataclass(frozen=True)
class RankSettings:
    """How rank scores and orders: --by, --diverse, --limit, and the model's --batch-size, --precision and
    --backend (as predict's: an ONNX backend gives the probabilities; --diverse's features come from the eager
    model then)."""

    by: str = "margin"
    diverse: bool = False
    limit: int | None = None
    batch_size: int = 32
    precision: str = "auto"
    backend: str = "auto"
    open_set: str = "auto"
    unknown_accept: float | None = None


@dataclass
class Scored:
    """The model's view of a set of images: the good paths with each one's top-1 class, its probability and
    its uncertainty score, the --diverse candidates (row indices, most uncertain first, and their pooled
    features; empty without --diverse), the bad files with their reasons, and with open-set rejection on,
    each good image's open-set score (None when off), and for a multi-label model each good image's labels and
    their probabilities as CSV cells (None otherwise)."""

    paths: list[str]
    guess: torch.Tensor
    guess_prob: torch.Tensor
    score: torch.Tensor
    pool: tuple[torch.Tensor, torch.Tensor]
    bad: list[tuple[str, str]]
    open_set: torch.Tensor | None = None
    labels: list[tuple[str, str]] | None = None  # a multi-label model's guess and guess_prob cells


class TopPool:
    """The `size` most uncertain rows seen so far with their features, in bounded memory: rows come in
    increasing order, are buffered, and are cut back to `size` whenever the buffer reaches twice that (ties
    keep the earlier row, as the plain ranking does)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.held = 0

    def add(self, rows: torch.Tensor, scores: torch.Tensor, features: torch.Tensor) -> None:
        self.parts.append((rows, scores.float(), features.float()))
        self.held += len(rows)
        if self.held >= 2 * self.size:
            self.parts = [self._best(sort_by_row=True)]
            self.held = len(self.parts[0][0])

    def _best(self, sort_by_row: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, scores, features = (torch.cat(t) for t in zip(*self.parts))
        keep = torch.sort(-scores, stable=True).indices[: self.size]  # parts are in row order: ties keep it
        if sort_by_row:
            keep = keep.sort().values
        return rows[keep], scores[keep], features[keep]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row indices, most uncertain first; their features)."""
        if not self.parts:
            return torch.empty(0, dtype=torch.long), torch.empty(0, 0)
        rows, _, features = self._best(sort_by_row=False)
        return rows, features


def uncertainty(probs: torch.Tensor, by: str, thresholds: list[float] | None = None) -> torch.Tensor:
    """(N, classes) probabilities -> (N,) uncertainty, higher = label sooner (see the module docstring);
    thresholds: a multi-label model's (probs are then its sigmoids)."""
    if by not in SCORES:
        raise UserError(f"--by {by!r}: expected one of {', '.join(SCORES)}")
    if thresholds is not None:
        return multilabel_uncertainty(probs, by, thresholds)
    if by == "entropy":
        return -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
    if probs.shape[1] < 2:
        return torch.zeros(len(probs))
    top2 = probs.topk(2, dim=1).values
    return 1 - (top2[:, 0] - top2[:, 1])


def multilabel_uncertainty(probs: torch.Tensor, by: str, thresholds: list[float]) -> torch.Tensor:
    """A multi-label model's (N, classes) sigmoid probabilities -> (N,) uncertainty: margin 1 - the smallest
    |p - threshold| over the classes, or entropy the mean binary entropy of the classes (nats)."""
    if by == "entropy":
        clamped = probs.double().clamp(1e-12, 1 - 1e-12)
        entropy = -(clamped * clamped.log() + (1 - clamped) * (1 - clamped).log())
        return entropy.mean(dim=1).float()
    distance = (probs.float() - torch.tensor(thresholds, dtype=torch.float32)).abs()
    return 1 - distance.min(dim=1).values


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
        distance = torch.minimum(distance, 1 - unit @ unit[nxt])  # picked rows stay at -1
        distance[nxt] = -1
    return picked


def diverse_picks(limit: int | None) -> int:
    """How many images --diverse picks by k-center greedy: --limit, else DIVERSE_PICKS."""
    return DIVERSE_PICKS if limit is None else limit


def pick_order(
    score: torch.Tensor, limit: int | None, pool: tuple[torch.Tensor, torch.Tensor] | None = None
) -> list[int]:
    """Row indices in the order to label: most uncertain first; or, given the --diverse pool (its rows most
    uncertain first, and their features: TopPool.result), k-center greedy's diverse_picks(limit) picks from
    it, then (without limit) every other row, most uncertain first."""
    # A stable sort on the negated score: ties keep the input (path) order.
    by_score = torch.sort(-score, stable=True).indices
    count = len(by_score) if limit is None else min(limit, len(by_score))
    if pool is None:
        return by_score[:count].tolist()
    rows, features = pool
    chosen = (
        [int(rows[i]) for i in k_center_greedy(features, 0, min(diverse_picks(limit), len(rows)))]
        if len(rows)
        else []
    )
    if limit is not None:
        return chosen
    picked = torch.zeros(len(score), dtype=torch.bool)
    picked[chosen] = True
    return chosen + by_score[~picked[by_score]].tolist()


@torch.inference_mode()
def probabilities_and_features(
    predictor: Predictor, batch: torch.Tensor, features: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Softmax probabilities (raw: the model's own ranking, no temperature), pooled penultimate features and
    open-set scores (None when rejection is off) of a preprocessed batch, in the Predictor's backend and
    precision. On torch one forward gives all three; with an ONNX session the session gives the
    probabilities and the eager model the features and scores, when asked."""
    if predictor.session is None:
        return eager_probabilities_and_features(predictor, batch)
    probs = raw_probabilities(predictor, predictor.logits(batch))
    if not features and predictor.threshold is None:
        return probs, torch.empty(0), None
    _, pooled, scores = eager_probabilities_and_features(predictor, batch)
    return probs, pooled, scores


def eager_probabilities_and_features(
    predictor: Predictor, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Softmax probabilities, pooled penultimate features and open-set scores (None when rejection is off)
    from the eager model, in its autocast."""
    features, logits = predictor.features_and_logits(batch)
    return raw_probabilities(predictor, logits), features, predictor.open_set_scores(features, logits)


def raw_probabilities(predictor: Predictor, logits: torch.Tensor) -> torch.Tensor:
    """The model's own probabilities, without the temperature: softmax over the classes, or a multi-label
    model's sigmoid per class."""
    return logits.float().sigmoid() if predictor.label_rule is not None else logits.softmax(dim=1)


def label_cells(predictor: Predictor, probs: torch.Tensor) -> list[tuple[str, str]]:
    """A multi-label model's guess and guess_prob cells of each image: the labels predict answers and their
    probabilities, each joined with the model's separator ([] for a single-label model)."""
    rule = predictor.label_rule
    if rule is None:
        return []
    join = rule.separator.join
    return [(join(c for c, _ in row), join(f"{p:.6f}" for _, p in row)) for row in rule.answers(probs)]


def score_images(
    predictor: Predictor, paths: list[str], batch_size: int, by: str, pool_size: int | None
) -> Scored:
    """Decode (a few threads) and score paths in batches, keeping the features of the pool_size most uncertain
    (None: none); unreadable files go to Scored.bad."""
    good, guesses, probs, scores, bad, open_set, labels = [], [], [], [], [], [], []
    thresholds = predictor.label_rule.thresholds if predictor.label_rule is not None else None
    top = TopPool(pool_size or 0)
    with (
        ThreadPoolExecutor(max(1, min(4, usable_cores()))) as threads,
        progress_bar(len(paths), "rank") as bar,
    ):
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            tensors = []
            for path, item in zip(chunk, threads.map(predictor.load, chunk)):
                if isinstance(item, str):
                    bad.append((path, item))
                else:
                    good.append(path)
                    tensors.append(item)
            if tensors:
                p, f, o = probabilities_and_features(predictor, torch.stack(tensors), bool(pool_size))
                open_set += [] if o is None else [o]
                score = uncertainty(p, by, thresholds)
                labels += label_cells(predictor, p)
                prob, guess = p.max(dim=1)
                guesses.append(guess)
                probs.append(prob)
                scores.append(score)
                if pool_size:
                    top.add(torch.arange(len(good) - len(tensors), len(good)), score, f)
            bar.update(len(chunk))
    if not good:
        empty = torch.empty(0)
        return Scored([], empty.long(), empty, empty, top.result(), bad)
    return Scored(
        good,
        torch.cat(guesses),
        torch.cat(probs),
        torch.cat(scores),
        top.result(),
        bad,
        torch.cat(open_set) if open_set else None,
        labels if thresholds is not None else None,
    )


def manifest_rows(
    scored: Scored, order: list[int], classes: list[str], csv_dir: Path, threshold: float | None = None
):
    """The CSV rows (header first): paths relative to the CSV's folder, label empty; with open-set scores
    (scored.open_set), also open_set_score and unknown (true below threshold)."""
    open_set = scored.open_set.tolist() if scored.open_set is not None else None
    rows = [COLUMNS + OPEN_SET_COLUMNS * (open_set is not None)]
    guess, prob, score = scored.guess.tolist(), scored.guess_prob.tolist(), scored.score.tolist()
    base = os.path.abspath(csv_dir)
    for i in order:
        rel = os.path.relpath(os.path.abspath(scored.paths[i]), base)
        guessed = scored.labels[i] if scored.labels is not None else (classes[guess[i]], f"{prob[i]:.6f}")
        row = [Path(rel).as_posix(), "", *guessed, f"{score[i]:.6f}"]
        if open_set is not None:
            row += [f"{open_set[i]:.6f}", str(open_set[i] < threshold).lower()]
        rows.append(row)
    return rows


def run_rank(model: str, folder: str, out: str, settings: RankSettings = RankSettings()) -> int:
    """`resnetcls rank`: write the ranked manifest to out; exit 2 when any image could not be read."""
    by, diverse, limit = settings.by, settings.diverse, settings.limit
    if by not in SCORES:
        raise UserError(f"--by {by!r}: expected one of {', '.join(SCORES)}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: expected a whole number of at least 1")
    if not Path(folder).is_dir():
        raise UserError(f"{folder}: FOLDER must be a folder of images")
    out_path = Path(out)
    if not out_path.parent.is_dir():
        raise UserError(f"--out {out}: folder {out_path.parent} does not exist")
    predictor = Predictor(
        model,
        precision=settings.precision,
        backend=settings.backend,
        open_set=settings.open_set,
        unknown_accept=settings.unknown_accept,
    )
    note = unknown_accept_note(predictor)
    if note:
        print(note, file=sys.stderr)
    items = expand_inputs([folder])
    paths = [p for p, reason in items if not reason]
    if not paths:
        raise UserError(f"{folder}: no image files found (searched recursively)")
    pool_size = DIVERSE_POOL * diverse_picks(limit) if diverse else None
    scored = score_images(predictor, paths, settings.batch_size, by, pool_size)
    for path, reason in scored.bad:
        print(f"warning: {path}: {reason} (not ranked)", file=sys.stderr)
    order = pick_order(scored.score, limit, scored.pool if diverse else None)
    rows = manifest_rows(scored, order, predictor.classes, out_path.parent, predictor.threshold)
    write_text_atomic(out_path, csv_text(rows))
    how = "most uncertain first"
    if diverse:
        picks = min(diverse_picks(limit), len(scored.paths))
        how = (
            f"k-center greedy: {picks} picks among the {min(pool_size, len(scored.paths))} most uncertain"
            + ("" if limit is not None else ", then the rest most uncertain first")
        )
    print(
        f"ranked {len(scored.paths)} images by {by} ({how}); wrote {len(order)} rows to {out_path}"
        + (f"; {len(scored.bad)} of {len(paths)} images could not be read" if scored.bad else ""),
        file=sys.stderr,
    )
    return 2 if scored.bad else 0
