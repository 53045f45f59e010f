"""The pieces of the lifelong strategies that do not depend on the training loop.

- ReplayBuffer: class-balanced reservoir of decoded uint8 images (no decode when replayed).
- Fisher / ewc_penalty: Elastic Weight Consolidation (Kirkpatrick et al. 2017), Fisher in eval mode so the
  BatchNorm running statistics are not disturbed by the extra passes.
- distillation_loss: Learning without Forgetting (Li & Hoiem 2016), temperature-scaled KL to the old model.
"""
from __future__ import annotations

import random

import torch
from torch import Tensor, nn


class ReplayBuffer:
    """At most `capacity` images, shared equally between the classes seen so far.

    Within each class a reservoir sample (Vitter's algorithm R) keeps every image seen so far equally likely
    to be in the buffer; when a new class arrives the per-class quota shrinks and each class drops its
    newest-kept surplus at random. Images are stored as uint8 CHW tensors of one size.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.rng = random.Random(seed)
        self.images: dict[int, list[Tensor]] = {}
        self.seen: dict[int, int] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.images.values())

    def quota(self) -> int:
        return self.capacity // max(1, len(self.images))

    def add(self, image: Tensor, label: int) -> None:
        if image.dtype != torch.uint8:
            raise TypeError("replay images are stored as uint8")
        if label not in self.images:
            self.images[label], self.seen[label] = [], 0
            self._shrink()
        self.seen[label] += 1
        bucket, quota = self.images[label], self.quota()
        if quota == 0:
            return
        if len(bucket) < quota:
            bucket.append(image.clone())
        else:
            slot = self.rng.randrange(self.seen[label])
            if slot < quota:
                bucket[slot] = image.clone()

    def _shrink(self) -> None:
        quota = self.quota()
        for label, bucket in self.images.items():
            while len(bucket) > quota:
                bucket.pop(self.rng.randrange(len(bucket)))

    def sample(self, n: int) -> tuple[Tensor, Tensor] | None:
        """n random (image, label) pairs as a uint8 batch, or None while empty."""
        pool = [(img, label) for label, bucket in self.images.items() for img in bucket]
        if not pool:
            return None
        picks = [pool[self.rng.randrange(len(pool))] for _ in range(n)]
        return torch.stack([p[0] for p in picks]), torch.tensor([p[1] for p in picks])

    def nbytes(self) -> int:
        return sum(img.numel() for bucket in self.images.values() for img in bucket)

    def state_dict(self) -> dict:
        labels = [l for l, b in self.images.items() for _ in b]
        images = [img for b in self.images.values() for img in b]
        return {"images": torch.stack(images) if images else torch.zeros(0, dtype=torch.uint8),
                "labels": torch.tensor(labels, dtype=torch.long),
                "seen": torch.tensor([[l, s] for l, s in self.seen.items()], dtype=torch.long).reshape(-1, 2),
                "rng": self.rng.getstate()}  # ints and tuples: loads with weights_only=True

    def load_state_dict(self, state: dict) -> None:
        if "rng" in state:
            self.rng.setstate(_as_tuple(state["rng"]))
        self.images = {int(l): [] for l, _ in state["seen"].tolist()}
        self.seen = {int(l): int(s) for l, s in state["seen"].tolist()}
        for img, label in zip(state["images"], state["labels"].tolist()):
            self.images[label].append(img.clone())


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def fisher_diagonal(model: nn.Module, batches, loss_fn: nn.Module, max_batches: int = 50) -> dict[str, Tensor]:
    """Empirical Fisher diagonal (mean squared gradient) over up to max_batches (images, labels) batches.

    Computed with the model in eval mode so BatchNorm uses, and does not update, its running statistics.
    """
    was_training = model.training
    model.eval()
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    count = 0
    for images, labels in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        for n, p in model.named_parameters():
            if p.grad is not None and n in fisher:
                fisher[n] += p.grad.detach() ** 2
        count += 1
        if count >= max_batches:
            break
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {n: f / max(count, 1) for n, f in fisher.items()}


def ewc_penalty(model: nn.Module, fisher: dict[str, Tensor], anchor: dict[str, Tensor]) -> Tensor:
    """sum_i F_i (theta_i - theta*_i)^2 over parameters with a Fisher entry of the same shape
    (a grown head's new rows have no anchor and are left free)."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for n, p in model.named_parameters():
        if n in fisher and fisher[n].shape == p.shape:
            total = total + (fisher[n] * (p - anchor[n]) ** 2).sum()
    return total


def distillation_loss(logits: Tensor, old_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """LwF: KL(old || new) of temperature-softened outputs over the old model's classes, scaled by T^2."""
    k = old_logits.shape[1]
    log_new = nn.functional.log_softmax(logits[:, :k].float() / temperature, dim=1)
    old = nn.functional.softmax(old_logits.float() / temperature, dim=1)
    return nn.functional.kl_div(log_new, old, reduction="batchmean") * temperature ** 2
