"""Teach a trained model a new class from a handful of photos in seconds, without retraining the network; or
remove one (`resnetcls add-class`, `resnetcls remove-class`, Predictor.add_class, resnetcls.add_class).

Adding a class (Qi et al. 2018, "Low-Shot Learning with Imprinted Weights"): the photos and their mirror
images go through the frozen network once (eval preprocessing, fp32); the new head row is their normalised
mean feature scaled to the mean norm of the existing rows, its bias the mean of the existing biases. Then a
bounded number of Adam steps tune the head alone on the new class's features and on features drawn from the
stored per-class Gaussians of the old classes (model.json's open-set statistics: class_mean, class_var,
diagonal), so the old classes are not forgotten; the same seed gives the same model.

The open-set scorer grows by the new class (its feature statistics, its kNN bank rows or its whitened
Mahalanobis mean). The threshold is refitted (refitted_quantiles): no validation images of the new class
exist, so each photo is scored by a scorer grown from the other photos (leave one out: a photo stands in for
an unseen view), and those scores join the known validation scores' quantiles weighted as one class among
all; the threshold then accepts the record's share of that mixture. With one photo, or a max-softmax or
energy score (the head was tuned on every photo), the source's threshold is kept, and the record says which
("refitted"). The calibration temperature is kept, and a multi-label model's thresholds of the classes it
keeps (add-class refuses a multi-label model). The source model directory is never modified: a new one is
written.
"""

from __future__ import annotations

import difflib
import os
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.decode import DecodeError, decode_image
from ..data.transforms import build_eval_transform, stack_images
from ..errors import UserError
from ..models import create_model
from ..records.modelfile import LoadedModel, load_model_dir, save_model_dir, write_calibration, write_open_set
from ..utils.openset import (
    BANK_MAX,
    BANK_PER_CLASS,
    FEATURE_STATS,
    UNKNOWN,
    OpenSetScorer,
    normalise,
    threshold_for,
)
from .inputs import expand_inputs
from .multilabel import refuse_new_class, write_kept_thresholds

DEFAULT_STEPS = 100  # full-batch Adam steps of the head; each takes milliseconds
DEFAULT_SECONDS = 10.0  # the tuning stops early past this (then it is no longer reproducible bit for bit)
LEARNING_RATE = 1e-2
POOL_ROWS = 1024  # features drawn to tune the head on, the same number for every class, the new one too
MIN_DRAWS = 8  # per class, however many classes
NEW_SPREAD = 0.5  # the noise around the new class's views, in units of its stored standard deviation
VARIANCE_PRIOR = 8  # a new class's stored variance: its photos' own, shrunk towards the old classes' pooled
# variance as if it came from this many more images (a few photos underestimate it)
MIN_CLASSES = 2  # remove-class keeps at least this many
MAX_HELD_OUT = 20  # photos held out in turn to refit the open-set threshold
BANK_CLASS = "bank_class"  # the class of each kNN bank row, stored once a class has been added or removed
Photos = str | os.PathLike | typing.Sequence[str | os.PathLike]


@dataclass
class TuneSettings:
    """How the head is tuned after imprinting: Adam steps, a time cap in seconds (None: none), the seed."""

    steps: int = DEFAULT_STEPS
    seconds: float | None = DEFAULT_SECONDS
    seed: int = 0


def _check_out(out: str | os.PathLike, source: Path, force: bool) -> Path:
    out = Path(out)
    if out.resolve() == source.resolve():
        raise UserError(f"{out}: --out is the model directory itself; the source is never modified")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not force:
        raise UserError(f"{out}: already exists and is not empty; choose another --out or pass --force")
    return out


def _stats(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """The per-class statistics of the pooled features the open-set record stores; UserError without."""
    tensors = loaded.scorer.tensors() if loaded.scorer is not None else {}
    if any(name not in tensors for name in FEATURE_STATS):
        raise UserError(
            f"{loaded.path}: the model has no per-class feature statistics (model.json has no open_set "
            f"record): trained by an older resnetcls; retrain it to add classes"
        )
    return tensors


def _check_new_name(loaded: LoadedModel, name: str) -> str:
    name = str(name).strip()
    if not name:
        raise UserError("the new class needs a name")
    if name == UNKNOWN:
        raise UserError(f"{name!r} is reserved: it is the answer for images of no known class")
    if name in loaded.classes:
        raise UserError(f"{loaded.path}: {name!r} is already one of its {len(loaded.classes)} classes")
    refuse_new_class(loaded)
    return name


def _photo_paths(photos: Photos) -> list[str]:
    """PATH arguments as predict takes them (files, folders, globs, CSV lists) -> image paths; one warning
    line on stderr per argument that gives none."""
    given = [photos] if isinstance(photos, (str, os.PathLike)) else list(photos)
    paths = []
    for path, reason in expand_inputs([os.fspath(p) for p in given]):
        if reason:
            print(f"warning: {path}: {reason}; skipped", file=sys.stderr)
        else:
            paths.append(path)
    return paths


@torch.inference_mode()
def photo_features(loaded: LoadedModel, photos: Photos) -> torch.Tensor:
    """The pooled features (fp32, eval preprocessing) of each readable photo and of its mirror image,
    (2 x photos, D); unreadable photos are skipped with a warning line, none readable is a UserError."""
    transform = build_eval_transform(loaded.preprocess)
    images = []
    for path in _photo_paths(photos):
        try:
            images.append(transform(decode_image(path)))
        except DecodeError as e:
            print(f"warning: {e}; skipped", file=sys.stderr)
    if not images:
        raise UserError(f"no readable photos among {', '.join(map(str, _listed(photos)))}")
    batch = stack_images(images)
    batch = torch.cat([batch, batch.flip(-1)])
    model = loaded.model.float().eval()
    return model.forward_head(model.forward_features(batch), pre_logits=True).float().cpu()


def _listed(photos: Photos) -> list:
    given = [photos] if isinstance(photos, (str, os.PathLike)) else list(photos)
    return given[:3] + (["..."] if len(given) > 3 else [])


def imprint(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The head with one more row: the new class's normalised mean feature scaled to the existing rows' mean
    norm, its bias the existing biases' mean."""
    row = normalise(features.mean(dim=0, keepdim=True)) * weight.norm(dim=1).mean()
    return torch.cat([weight, row]), torch.cat([bias, bias.mean().reshape(1)])


def draw_pool(stats: dict, new: torch.Tensor, new_var: torch.Tensor, generator: torch.Generator):
    """The features the head is tuned on, drawn once: the same number for every class (POOL_ROWS in all),
    from each old class's Gaussian (classes without training images left out) and around the new class's
    views (each plus Gaussian noise of the new class's stored variance); clamped at 0, as pooled features
    after a ReLU are. -> (features, labels)."""
    counts = stats["class_count"]
    classes = (counts > 0).nonzero().flatten()
    per_class = max(MIN_DRAWS, POOL_ROWS // (len(classes) + 1))
    labels = classes.repeat_interleave(per_class)
    std = stats["class_var"].clamp_min(0).sqrt()
    noise = torch.randn(len(labels) + per_class, new.shape[1], generator=generator)
    old = stats["class_mean"][labels] + std[labels] * noise[: len(labels)]
    pick = torch.randint(len(new), (per_class,), generator=generator)
    around = new[pick] + new_var.clamp_min(0).sqrt() * NEW_SPREAD * noise[len(labels) :]
    features = torch.cat([old, around]).clamp_min(0)
    return features, torch.cat([labels, torch.full((per_class,), len(counts))])


def tune_head(
    head: tuple[torch.Tensor, torch.Tensor],
    stats: dict,
    new: torch.Tensor,
    new_var: torch.Tensor,
    settings: TuneSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch Adam on the head alone (weight, bias), cross-entropy on the features of draw_pool; stops
    after settings.steps, or sooner past settings.seconds."""
    generator = torch.Generator().manual_seed(settings.seed)
    features, labels = draw_pool(stats, new, new_var, generator)
    weight, bias = (t.detach().clone().requires_grad_(True) for t in head)
    optimizer = torch.optim.Adam([weight, bias], lr=LEARNING_RATE)
    start, threads = time.perf_counter(), torch.get_num_threads()
    # One thread: these matrices are small, and beside other busy processes two threads waiting on each
    # other made the same 100 steps 20 times slower (26 s against 1.3 s on 2 shared cores).
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            for _ in range(settings.steps):
                if settings.seconds is not None and time.perf_counter() - start > settings.seconds:
                    break
                loss = nn.functional.cross_entropy(features @ weight.T + bias, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return weight.detach(), bias.detach()


def _new_class_stats(stats: dict, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """class_mean/var/count of the new class: its views' mean and count, and their variance shrunk towards
    the old classes' pooled variance (VARIANCE_PRIOR)."""
    counts = stats["class_count"]
    pooled = (stats["class_var"] * counts[:, None]).sum(dim=0) / counts.sum().clamp_min(1)
    n = len(features)
    var = (features.var(dim=0, unbiased=False) * n + pooled * VARIANCE_PRIOR) / (n + VARIANCE_PRIOR)
    return {"class_mean": features.mean(dim=0), "class_var": var, "class_count": torch.tensor(float(n))}


def bank_per_class(num_classes: int) -> int:
    """The kNN bank's rows per class, as utils/openset.py's _knn_bank caps them."""
    return max(1, min(BANK_PER_CLASS, BANK_MAX // max(1, num_classes)))


def bank_classes(tensors: dict, num_classes: int) -> torch.Tensor:
    """The class of each kNN bank row: stored (BANK_CLASS) once the model was edited; else laid out as
    utils/openset.py's _knn_bank draws it (each class's rows in class order, at most its count, the same
    per-class cap), or, when the counts do not add up, each row's nearest class mean."""
    if BANK_CLASS in tensors:
        return tensors[BANK_CLASS].long()
    bank, counts = tensors["bank"], tensors["class_count"].long()
    rows = counts.clamp(max=bank_per_class(num_classes))
    if int(rows.sum()) == len(bank):
        return torch.arange(num_classes).repeat_interleave(rows)
    return (bank @ normalise(tensors["class_mean"]).T).argmax(dim=1)


def grown_scorer(scorer: OpenSetScorer, features: torch.Tensor, stats: dict) -> OpenSetScorer:
    """The scorer with the new class appended: its statistics, kNN bank rows (its normalised views up to the
    bank's per-class size, padded with draws from its stored Gaussian to the score's k, so that one photo is
    enough) or whitened Mahalanobis mean (with the stored whitening)."""
    tensors, num_classes = scorer.tensors(), len(stats["class_count"])
    new = _new_class_stats(stats, features)
    for name in FEATURE_STATS:
        tensors[name] = torch.cat([tensors[name], new[name].reshape(1, *tensors[name].shape[1:])])
    unit = normalise(features)
    if "bank" in tensors:
        labels = bank_classes(tensors, num_classes)
        rows = unit[: bank_per_class(num_classes + 1)]
        if len(rows) < scorer.k:
            generator = torch.Generator().manual_seed(0)
            noise = torch.randn(scorer.k - len(rows), unit.shape[1], generator=generator)
            drawn = (new["class_mean"] + new["class_var"].sqrt() * noise).clamp_min(0)
            rows = torch.cat([rows, normalise(drawn)])
        tensors["bank"] = torch.cat([tensors["bank"], rows])
        tensors[BANK_CLASS] = torch.cat([labels, torch.full((len(rows),), num_classes)]).float()
    if "means_whitened" in tensors:
        mean = unit.mean(dim=0, keepdim=True) @ tensors["whiten"]
        tensors["means_whitened"] = torch.cat([tensors["means_whitened"], mean])
    return OpenSetScorer(scorer.score, tensors, scorer.temperature, scorer.k)


def shrunk_scorer(scorer: OpenSetScorer, index: int, num_classes: int) -> OpenSetScorer:
    """The scorer without class `index`: its statistics, kNN bank rows and Mahalanobis mean dropped."""
    tensors = scorer.tensors()
    if "bank" in tensors:
        labels = bank_classes(tensors, num_classes)
        keep = labels != index
        tensors["bank"] = tensors["bank"][keep]
        tensors[BANK_CLASS] = (labels[keep] - (labels[keep] > index).long()).float()
    kept = [c for c in range(num_classes) if c != index]
    for name in (*FEATURE_STATS, "means_whitened"):
        if name in tensors:
            tensors[name] = tensors[name][kept]
    return OpenSetScorer(scorer.score, tensors, scorer.temperature, scorer.k)


def leave_one_out_scores(scorer: OpenSetScorer, features: torch.Tensor, stats: dict) -> torch.Tensor:
    """The open-set score of each of the new class's views (features: photos, then their mirror images) under
    a scorer grown from the other photos; at most MAX_HELD_OUT photos are held out in turn."""
    photos = len(features) // 2
    scores = []
    for i in range(min(photos, MAX_HELD_OUT)):
        keep = [j for j in range(len(features)) if j % photos != i]
        grown = grown_scorer(scorer, features[keep], stats)
        held_out = features[[i, i + photos]]
        scores.append(grown(held_out, torch.zeros(2, len(stats["class_count"]) + 1)))
    return torch.cat(scores)


def refitted_quantiles(record: dict, held_out: torch.Tensor, num_classes: int) -> list[float]:
    """The known scores' quantiles with the new class's held-out scores weighted as one class among
    num_classes + 1 (the old ones' quantiles standing for their validation scores)."""
    old = torch.tensor(record["quantiles"], dtype=torch.float64)
    scores = torch.cat([old, held_out.double()])
    weights = torch.cat(
        [torch.full((len(old),), num_classes / len(old)), torch.full((len(held_out),), 1 / len(held_out))]
    ).double()
    order = scores.argsort()
    scores, cumulative = scores[order], weights[order].cumsum(0)
    positions = (cumulative - weights[order] / 2) / cumulative[-1]  # each sample at its mass's midpoint
    levels = torch.linspace(0, 1, len(old), dtype=torch.float64)
    return [float(v) for v in _interpolate(levels, positions, scores)]


def _interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """numpy.interp for increasing xp: clamped at both ends."""
    index = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    low, high = xp[index - 1], xp[index]
    share = ((x - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    return fp[index - 1] + (fp[index] - fp[index - 1]) * share


def _with_head(loaded: LoadedModel, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A copy of the model with the head (weight, bias) for len(weight) classes."""
    meta = loaded.meta
    model = create_model(meta["arch"], len(weight), **meta["arch_args"])
    state = {k: v for k, v in loaded.model.state_dict().items() if not k.startswith("fc.")}
    model.load_state_dict({**state, "fc.weight": weight, "fc.bias": bias}, strict=True)
    return model.eval()


def _write(loaded: LoadedModel, out: Path, model: nn.Module, classes: list[str], edit: tuple) -> Path:
    """The new model directory (an existing `out` replaced as a whole): weights, classes, the source's
    preprocessing and calibration, and the edited scorer with the source's threshold record (edit: (scorer or
    None, metrics, note))."""
    scorer, metrics, note, refit = edit
    meta = loaded.meta
    save_model_dir(out, model, meta["arch"], meta["arch_args"], classes, meta["preprocess"], metrics)
    if "calibration" in meta:
        write_calibration(out, meta["calibration"])
    write_kept_thresholds(out, meta, classes)  # a multi-label model's, of the classes kept
    if scorer is not None:
        record = {k: v for k, v in loaded.open_set.items() if k not in ("score", "k", "file")}
        write_open_set(out, scorer, {**record, **(refit or {"refitted": False}), "note": note})
    return out


def _refit(loaded: LoadedModel, scorer: OpenSetScorer, features: torch.Tensor, stats: dict) -> dict:
    """The refitted threshold record (refitted_quantiles), or only "refitted": false where the source's is
    kept (one photo, a score of the logits); with its note's words."""
    if len(features) < 4 or scorer.score not in ("knn", "mahalanobis"):
        return {"refitted": False, "how": "the source's threshold kept (one photo, or a score of the logits)"}
    held_out = leave_one_out_scores(loaded.scorer, features, stats)
    classes = len(stats["class_count"])
    quantiles = refitted_quantiles(loaded.open_set, held_out, classes)
    threshold = threshold_for(quantiles, loaded.open_set["accept"])
    how = f"threshold refitted, its photos held out in turn and weighted as one class of {classes + 1}"
    return {"quantiles": quantiles, "threshold": threshold, "refitted": True, "how": how}


def add_class(
    model_dir: str | os.PathLike,
    name: str,
    photos: Photos,
    out: str | os.PathLike,
    *,
    settings: TuneSettings | None = None,
    force: bool = False,
) -> Path:
    """Write to `out` a copy of the model that also knows class `name`, taught from `photos` (files,
    folders, globs or CSV lists, as predict takes them) without retraining the network (see the module
    docstring); returns the new model directory. UserError (nothing written) for a name already a class or
    "unknown", no readable photo, an `out` that exists and is not empty (unless force), or a model without
    the per-class feature statistics (trained by an older resnetcls)."""
    settings = settings or TuneSettings()
    loaded = load_model_dir(model_dir)
    name = _check_new_name(loaded, name)
    stats = _stats(loaded)
    out = _check_out(out, loaded.path, force)
    features = photo_features(loaded, photos)
    fc = loaded.model.fc
    head = imprint(fc.weight.detach().float(), fc.bias.detach().float(), features)
    new_var = _new_class_stats(stats, features)["class_var"]
    weight, bias = tune_head(head, stats, features, new_var, settings)
    photos_used = len(features) // 2
    metrics = {"added_class": name, "added_from_photos": photos_used, "tuning_steps": settings.steps}
    metrics["source_classes"] = len(loaded.classes)
    scorer = grown_scorer(loaded.scorer, features, stats)
    refit = _refit(loaded, scorer, features, stats)
    note = f"class {name!r} added from {photos_used} photos; {refit.pop('how')}"
    edit = (scorer, metrics, note, refit)
    return _write(loaded, out, _with_head(loaded, weight, bias), [*loaded.classes, name], edit)


def remove_class(
    model_dir: str | os.PathLike, name: str, out: str | os.PathLike, *, force: bool = False
) -> Path:
    """Write to `out` a copy of the model without class `name` (its head row and open-set rows dropped);
    returns the new model directory. UserError for a name that is not a class (with the closest one) or
    when fewer than MIN_CLASSES classes would remain."""
    loaded = load_model_dir(model_dir)
    classes = loaded.classes
    if name not in classes:
        close = difflib.get_close_matches(str(name), classes, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"{loaded.path}: {name!r} is not one of its {len(classes)} classes{hint}")
    if len(classes) <= MIN_CLASSES:
        raise UserError(f"{loaded.path}: has {len(classes)} classes; a model keeps at least {MIN_CLASSES}")
    out = _check_out(out, loaded.path, force)
    index = classes.index(name)
    kept = [c for c in range(len(classes)) if c != index]
    fc = loaded.model.fc
    model = _with_head(loaded, fc.weight.detach()[kept], fc.bias.detach()[kept])
    metrics = {"removed_class": name, "source_classes": len(classes)}
    scorer = None if loaded.scorer is None else shrunk_scorer(loaded.scorer, index, len(classes))
    note = f"class {name!r} removed; the threshold is the source model's, not refitted"
    return _write(loaded, out, model, [classes[c] for c in kept], (scorer, metrics, note, None))
