"""Which of eval's images the model was trained on: the run's split.csv (beside the model directory: a model
directory is RUN/best or RUN/final) names every image of the run with its split, and an image of DATA that
resolves (symlinks followed) to one of its train rows is a training image. Eval scores the others by default;
with include_train it scores all and keeps the training images' numbers apart (Routed). The run's val images
were never trained on: they count as held out, and the note says how many there are (the run's own val score
came from them). model.json records nothing about the training set, so without split.csv eval cannot tell
and says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.sources import Samples
from ..records.runsplit import split_rows

SPLIT_CSV = "split.csv"


@dataclass
class Overlap:
    """Where DATA's images stand against the model's run: indices into DATA's samples."""

    images: int  # DATA's images
    split_csv: Path  # the run's split.csv, where it would be
    known: bool  # split.csv is there: train and val are all there is
    train: list[int]  # the run's training images
    val: list[int]  # the run's val images (held out from training)

    @property
    def held_out(self) -> list[int]:
        """Every image that is not a training image, in DATA's order."""
        train = set(self.train)
        return [i for i in range(self.images) if i not in train]

    def record(self, include_train: bool) -> dict:
        """metrics.json's "overlap": what was checked against and how many images were which."""
        return {
            "split_csv": str(self.split_csv) if self.known else None,
            "data_images": self.images,
            "training_images": len(self.train) if self.known else None,
            "val_images": len(self.val) if self.known else None,
            "held_out_images": self.images - len(self.train),
            "include_train": include_train,
        }

    def note(self, data: str, include_train: bool) -> str | None:
        """The one line eval prints about it (None: split.csv holds none of DATA's images)."""
        n, trained, held = self.images, len(self.train), self.images - len(self.train)
        if not self.known:
            return (
                f"note: cannot tell which of the {n} images in {data} trained the model (no "
                f"{self.split_csv}); scoring all {n}"
            )
        are = "is the run's val image" if len(self.val) == 1 else "are the run's val images"
        val = (
            f"; {len(self.val)} of the held-out images {are} (its val score came from them)"
            if self.val
            else ""
        )
        if not trained:
            if not self.val:
                return None
            return (
                f"note: {len(self.val)} of {n} images in {data} {are} ({self.split_csv}): held out from "
                f"training, its val score came from them"
            )
        if include_train:
            action = f"scoring all {n}, the training images' numbers apart"
        else:
            action = f"scoring the other {held} (--include-train to score all)"
        return (
            f"note: {trained} of {n} images in {data} are the model's training images ({self.split_csv}); "
            f"{action}{val}"
        )

    def refusal(self, data: str) -> str:
        """The error when every image is a training image and include_train is not given."""
        return (
            f"all {self.images} images in {data} are the model's training images ({self.split_csv}): their "
            f"score says nothing about new images; evaluate held-out images, or give --include-train to "
            f"score them anyway"
        )


def find_overlap(model_dir: Path, samples: Samples) -> Overlap:
    """samples against RUN/split.csv, RUN being model_dir's parent (by resolved path)."""
    path = model_dir.parent / SPLIT_CSV
    if not path.is_file():
        return Overlap(len(samples), path, False, [], [])
    splits = read_run_split(path)
    resolve = path_resolver()
    train, val = [], []
    for i, image in enumerate(samples.paths):
        which = splits.get(resolve(image))
        if which == "train":
            train.append(i)
        elif which == "val":
            val.append(i)
    return Overlap(len(samples), path, True, train, val)


def read_run_split(path: Path) -> dict[str, str]:
    """The run's split.csv: resolved image path -> "train", "val" or "test" (train wins a repeated path).
    Rows are read as train wrote them; an image gone since does not matter here."""
    resolve, splits = path_resolver(), {}
    for image, split in split_rows(path):
        key = resolve(image)
        if splits.get(key) != "train":
            splits[key] = split
    return splits


def path_resolver():
    """path -> its absolute path with every symlink resolved; each folder is resolved once, the file itself
    only when it is a link."""
    folders: dict[str, str] = {}

    def resolve(path: str) -> str:
        parent, name = os.path.split(os.path.abspath(path))
        if parent not in folders:
            folders[parent] = os.path.realpath(parent)
        full = os.path.join(folders[parent], name)
        return os.path.realpath(full) if os.path.islink(full) else full

    return resolve


def train_summary(trained, classes: list[str]) -> dict:
    """metrics.json's "train_images": the training images' numbers (no matrix, bins or figures: those are
    the held-out images')."""
    numbers = trained.metrics(classes)
    for key in ("confusion_matrix", "confusion_matrix_csv", "ece_bins", "classes"):
        numbers.pop(key)
    return numbers


class Routed:
    """An Accumulator's add() that sends each image to one of two: the held-out images to held, the ones in
    apart (indices into the samples) to trained."""

    def __init__(self, held, trained, apart: list[int], images: int) -> None:
        self.held, self.trained = held, trained
        self.apart = torch.zeros(images, dtype=torch.bool)
        self.apart[apart] = True

    def add(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        mask = self.apart[index.long()]
        for target, rows in ((self.held, ~mask), (self.trained, mask)):
            if rows.any():
                target.add(logits[rows], labels[rows], index[rows])
