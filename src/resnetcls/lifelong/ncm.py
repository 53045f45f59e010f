"""Nearest-class-mean (NCM) prediction for the `ncm` lifelong strategy (Rebuffi et al. 2017, iCaRL's
nearest-mean-of-exemplars).

A class's prototype is the mean of the L2-normalised pooled features of its images (the same statistics
open-set recognition and add-class keep, utils/openset.py); an image is predicted as the class whose
prototype is nearest in cosine. Since argmax_c cos(f, p_c) = argmax_c <f, p_c / |p_c|>, the prediction is a
linear head with the unit prototypes as its rows and no bias (prototype_head): the network's own forward
pass, its evaluation and its model directory then predict by nearest prototype with no other code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..utils.openset import feature_statistics, normalise

PROTOTYPE_IMAGES = 100  # at most this many images a class, a task, go into its prototype


def pooled_features(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The pooled penultimate features (N, D, fp32, CPU) and labels of normalised (images, labels) batches,
    in eval mode (BatchNorm's running statistics are used, not updated)."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    with torch.no_grad():
        for images, batch_labels in batches:
            pooled = model.forward_head(model.forward_features(images), pre_logits=True)
            features.append(pooled.float().cpu())
            labels.append(batch_labels.cpu())
    model.train(was_training)
    if not features:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(features), torch.cat(labels)


def first_per_class(labels: Tensor, per_class: int) -> Tensor:
    """A boolean mask keeping the first per_class rows of each label (in the given order)."""
    keep = torch.zeros(len(labels), dtype=torch.bool)
    counts: dict[int, int] = {}
    for i, label in enumerate(labels.tolist()):
        if counts.get(label, 0) < per_class:
            keep[i], counts[label] = True, counts.get(label, 0) + 1
    return keep


def class_prototypes(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(num_classes, D) means of the normalised features per class and their (num_classes,) image counts
    (a class without images: a zero row, count 0)."""
    stats = feature_statistics(normalise(features), labels, num_classes)
    return stats["class_mean"], stats["class_count"]


def merge_prototypes(old: Tensor | None, new: Tensor, counts: Tensor) -> Tensor:
    """new's rows where it counted images, old's (zero-padded to new's size) elsewhere."""
    if old is None:
        return new
    merged = torch.zeros_like(new)
    merged[: old.shape[0]] = old[: new.shape[0]]
    has = counts > 0
    merged[has] = new[has]
    return merged


def nearest_prototype(features: Tensor, prototypes: Tensor) -> Tensor:
    """The index of the prototype nearest (cosine) to each feature row."""
    return (normalise(features) @ normalise(prototypes).T).argmax(dim=1)


def prototype_head(prototypes: Tensor, device: torch.device | None = None) -> nn.Linear:
    """A bias-free linear head whose rows are the unit prototypes: its argmax is nearest_prototype."""
    head = nn.Linear(prototypes.shape[1], prototypes.shape[0], device=device)
    with torch.no_grad():
        head.weight.copy_(normalise(prototypes).to(head.weight.device))
        head.bias.zero_()
    return head


@contextmanager
def prototype_classifier(model: nn.Module, prototypes: Tensor | None) -> Iterator[nn.Module]:
    """Within the block model.fc is the prototype head (model unchanged when prototypes is None); the
    trained head comes back afterwards."""
    if prototypes is None:
        yield model
        return
    trained = model.fc
    model.fc = prototype_head(prototypes, trained.weight.device)
    try:
        yield model
    finally:
        model.fc = trained
