"""The open-set numbers of `resnetcls eval`: how well the model's open-set score tells DATA's images (known:
of its classes) from images of objects that are none of its classes (`--unknown FOLDER`), and what its
threshold costs on the known images.

The known images' scores are taken in eval's own pass over DATA (ScoringPass stands in for the predictor and
the accumulator there: one model call a batch); the unknown images get a second, short pass. A model with an
open-set record is scored by its scorer (utils/openset.py) at its threshold (moved by --unknown-accept); a
model without one, with --unknown, by the largest calibrated softmax probability, with the threshold that
accepts 95% (--unknown-accept) of the known images: said in one line on stderr. metrics.json's "open_set"
holds the numbers; open_set_scores.png the histogram of both kinds of score with the threshold.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.loader import build_loader
from ..data.sources import Samples
from ..errors import UserError
from ..inference.inputs import expand_inputs
from ..inference.predictor import Predictor
from ..utils.calibration import calibrated_probabilities
from ..utils.openset import DEFAULT_ACCEPT, open_set_metrics

FIGURE = "open_set_scores.png"
BAD_LISTED = 20  # unreadable unknown images listed in metrics.json (all are counted)
MSP = "msp"


@dataclass
class OpenSetOptions:
    """eval's --unknown FOLDER, --open-set auto|on|off and --unknown-accept SHARE; paths and unusable: the
    unknown images found and the (path, reason) of what could not be used (filled by find_unknown)."""

    unknown: str | None = None
    mode: str = "auto"
    accept: float | None = None
    paths: list[str] = field(default_factory=list)
    unusable: list[tuple[str, str]] = field(default_factory=list)


def find_unknown(options: OpenSetOptions | None) -> OpenSetOptions:
    """The options with --unknown's images listed (a folder searched recursively, or anything predict's PATH
    takes); UserError for a missing or empty one, or --unknown with --open-set off."""
    options = options or OpenSetOptions()
    if options.unknown is None:
        return options
    if options.mode == "off":
        raise UserError(f"--unknown {options.unknown}: needs open-set scores; drop --open-set off")
    found = expand_inputs([str(options.unknown)])
    options.paths = [path for path, reason in found if not reason]
    options.unusable = [(path, reason) for path, reason in found if reason]
    if not options.paths:
        reason = options.unusable[0][1] if options.unusable else "no images"
        raise UserError(f"--unknown {options.unknown}: {reason}")
    return options


def eval_predictor(
    model, precision: str, backend: str, options: OpenSetOptions | None
) -> tuple[Predictor, OpenSetOptions]:
    """eval's Predictor, its open-set threshold per --open-set and --unknown-accept (checked first, with
    --unknown's folder, before any image is read)."""
    options = find_unknown(options)
    predictor = Predictor(
        model, precision=precision, backend=backend, open_set=options.mode, unknown_accept=options.accept
    )
    return predictor, options


class ScoringPass:
    """Stands in for the predictor (transform, logits) and for the accumulator (add) in eval's pass over
    DATA: each batch's raw logits go on to the accumulator, its open-set scores are kept with the images'
    indices. scorer None: the largest calibrated softmax probability."""

    def __init__(self, predictor: Predictor, sink, options: OpenSetOptions, scorer=None) -> None:
        self.predictor, self.sink, self.options = predictor, sink, options
        self.scorer = None if scorer is None else scorer.to("cpu")
        self.transform = predictor.transform
        self.pending: torch.Tensor | None = None
        self.scores: list[torch.Tensor] = []
        self.index: list[torch.Tensor] = []

    @property
    def score(self) -> str:
        return MSP if self.scorer is None else self.scorer.score

    @torch.inference_mode()
    def batch_scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw logits (N, C) as the predictor gives them, open-set scores (N,)) of preprocessed images."""
        predictor = self.predictor
        if self.scorer is None:
            logits = predictor.logits(batch)
            return logits, calibrated_probabilities(logits, predictor.temperature).amax(dim=1)
        features, eager_logits = predictor.features_and_logits(batch)
        logits = eager_logits if predictor.session is None else predictor.logits(batch)
        return logits, self.scorer(features, eager_logits).float()

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        logits, self.pending = self.batch_scores(batch)
        return logits

    def add(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        self.scores.append(self.pending)
        self.index.append(index.long())
        self.sink.add(logits, labels, index)

    def scores_of(self, index: torch.Tensor) -> torch.Tensor:
        """The scores of the images with these sample indices, in that order."""
        seen, scores = torch.cat(self.index), torch.cat(self.scores)
        order = seen.argsort()
        return scores[order][torch.searchsorted(seen[order], index.long())]

    def operating_point(self, known: torch.Tensor) -> tuple[float, float | None]:
        """(threshold, accepted share of known validation images it was set for): the model's, or, scoring
        by the softmax, the quantile of these known scores that accepts --unknown-accept (95%) of them."""
        if self.scorer is not None:
            record = self.predictor.loaded.open_set or {}
            return float(self.predictor.threshold), self.options.accept or record.get("accept")
        accept = self.options.accept or DEFAULT_ACCEPT
        return float(torch.quantile(known.double(), 1 - accept)), accept


def scoring_for(predictor: Predictor, sink, options: OpenSetOptions | None) -> ScoringPass | None:
    """The ScoringPass of an evaluation, or None when eval reports no open-set numbers (--open-set off, or a
    model without a threshold and no --unknown). A model without a scorer eval can run is scored by the
    softmax with --unknown, said in one line on stderr."""
    options = options or OpenSetOptions()
    scorer = getattr(predictor.loaded, "scorer", None)
    usable = scorer is not None and predictor.threshold is not None and predictor.model is not None
    if usable:
        return ScoringPass(predictor, sink, options, scorer)
    if options.mode == "off" or options.unknown is None:
        return None
    why = (
        "has no open-set record"
        if scorer is None
        else "is an exported file without the model its score needs"
    )
    share = options.accept or DEFAULT_ACCEPT
    print(
        f"note: {predictor.loaded.path} {why}: scoring by the largest calibrated softmax probability, the "
        f"threshold accepting {share:.0%} of DATA's images",
        file=sys.stderr,
    )
    return ScoringPass(predictor, sink, options)


def score_unknown(scoring: ScoringPass, batch_size: int, num_workers: int) -> tuple[torch.Tensor, list]:
    """The --unknown images' scores and the (path, reason) of those that could not be used."""
    options, predictor = scoring.options, scoring.predictor
    samples = Samples(list(options.paths), [0] * len(options.paths), predictor.classes)
    loader = build_loader(samples, predictor.transform, batch_size, shuffle=False, num_workers=num_workers)
    scores, bad = [], list(options.unusable)
    for batch in loader:
        bad += batch["bad"]
        if batch["images"] is not None:
            scores.append(scoring.batch_scores(batch["images"])[1])
    for path, reason in bad:
        print(f"warning: skipped unknown image {path}: {reason}", file=sys.stderr)
    if not scores:
        raise UserError(f"--unknown {options.unknown}: none of the {len(bad)} images could be read")
    return torch.cat(scores), bad


def known_block(known: torch.Tensor, correct: torch.Tensor, threshold: float) -> dict:
    """What the threshold does to DATA's images: the shares accepted and rejected, the accuracy with
    rejection (right only when accepted and top-1 right) and the accepted images' top-1."""
    accepted = known >= threshold
    kept = int(accepted.sum())
    return {
        "known_images": len(known),
        "known_accepted": float(accepted.double().mean()),
        "known_rejected": float((~accepted).double().mean()),
        "accuracy_with_rejection": float((accepted & correct).double().mean()),
        "accepted_top1": float((accepted & correct).sum()) / kept if kept else None,
    }


def open_set_summary(scoring: ScoringPass, acc, out: Path, loader: tuple[int, int]) -> dict:
    """metrics.json's "open_set" of the images in acc (eval's headline images), with --unknown's images
    scored too; draws FIGURE into out."""
    columns = acc.columns()
    known = scoring.scores_of(columns["index"])
    threshold, accept = scoring.operating_point(known)
    block = {
        "score": scoring.score,
        "fallback": scoring.scorer is None,
        "threshold": threshold,
        "accept": accept,
        **known_block(known, columns["pred"] == columns["labels"], threshold),
    }
    unknown = None
    if scoring.options.unknown is not None:
        unknown, bad = score_unknown(scoring, *loader)
        measured = open_set_metrics(known, unknown, threshold)
        block.update(
            unknown=str(scoring.options.unknown),
            unknown_images=len(unknown),
            unknown_skipped=len(bad),
            unknown_bad_images=[{"path": str(p), "reason": r} for p, r in bad[:BAD_LISTED]],
            auroc=measured["auroc"],
            fpr_at_95_tpr=measured["fpr_at_95_tpr"],
            unknown_rejected=measured["unknown_rejected"],
        )
    from ..records.figures import open_set_histogram  # matplotlib: only here

    open_set_histogram(
        known.numpy(), None if unknown is None else unknown.numpy(), threshold, out / FIGURE, block["score"]
    )
    block["figure"] = FIGURE
    return block


def open_set_lines(block: dict) -> list[str]:
    """The short block `resnetcls eval` prints after its usual lines."""
    accept = f", set to accept {block['accept']:.0%} of known images" if block.get("accept") else ""
    score = "msp (the largest calibrated softmax probability)" if block["fallback"] else block["score"]
    top1 = block["accepted_top1"]
    lines = [
        f"open set: score {score}, threshold {block['threshold']:.4g}{accept}",
        f"  known images: {block['known_accepted']:.2%} accepted, {block['known_rejected']:.2%} rejected; "
        f"accuracy with rejection {block['accuracy_with_rejection']:.4f}, accepted top1 "
        + ("-" if top1 is None else f"{top1:.4f}"),
    ]
    if "unknown_images" in block:
        skipped = f", {block['unknown_skipped']} skipped" if block["unknown_skipped"] else ""
        lines.append(
            f"  unknown images ({block['unknown_images']}{skipped}): {block['unknown_rejected']:.2%} "
            f"rejected; AUROC {block['auroc']:.4f}  FPR at 95% TPR {block['fpr_at_95_tpr']:.4f}"
        )
    return lines
