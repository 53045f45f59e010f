"""The pieces of the lifelong strategies that do not depend on the training loop.

- ReplayBuffer: class-balanced reservoir of decoded uint8 images (no decode when replayed), optionally each
  with the logits the model gave it when it was stored (DER++, Buzzega et al. 2020).
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
    newest-kept surplus at random. Images are stored as uint8 CHW tensors of one size; logits (DER++), when
    given, as float32 vectors as wide as the head was when the image was stored.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.rng = random.Random(seed)
        self.images: dict[int, list[Tensor]] = {}
        self.seen: dict[int, int] = {}
        self.logits: dict[int, list[Tensor | None]] = {}  # parallel to images

    def __len__(self) -> int:
        return sum(len(v) for v in self.images.values())

    def quota(self) -> int:
        return self.capacity // max(1, len(self.images))

    def add(self, image: Tensor, label: int, logits: Tensor | None = None) -> None:
        """Offer one image (and, for DER++, the model's logits on it) to its class's reservoir."""
        if image.dtype != torch.uint8:
            raise TypeError("replay images are stored as uint8")
        if label not in self.images:
            self.images[label], self.logits[label], self.seen[label] = [], [], 0
            self._shrink()
        self.seen[label] += 1
        bucket, quota = self.images[label], self.quota()
        kept = logits.detach().float().clone() if logits is not None else None
        if quota == 0:
            return
        if len(bucket) < quota:
            bucket.append(image.clone())
            self.logits[label].append(kept)
        else:
            slot = self.rng.randrange(self.seen[label])
            if slot < quota:
                bucket[slot], self.logits[label][slot] = image.clone(), kept

    def _shrink(self) -> None:
        quota = self.quota()
        for label, bucket in self.images.items():
            while len(bucket) > quota:
                i = self.rng.randrange(len(bucket))
                bucket.pop(i)
                self.logits[label].pop(i)

    def _picks(self, n: int) -> list[tuple[Tensor, int, Tensor | None]] | None:
        pool = [
            (img, label, z)
            for label, bucket in self.images.items()
            for img, z in zip(bucket, self.logits[label])
        ]
        if not pool:
            return None
        return [pool[self.rng.randrange(len(pool))] for _ in range(n)]

    def sample(self, n: int) -> tuple[Tensor, Tensor] | None:
        """n random (image, label) pairs as a uint8 batch, or None while empty."""
        picks = self._picks(n)
        if picks is None:
            return None
        return torch.stack([p[0] for p in picks]), torch.tensor([p[1] for p in picks])

    def sample_with_logits(self, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """Like sample, plus the stored logits as an (n, K) float32 matrix zero-padded to the widest one and
        the (n, K) mask of the entries that were stored (an image stored before the head grew has fewer)."""
        picks = self._picks(n)
        if picks is None:
            return None
        logits, mask = _pad_rows([p[2] for p in picks])
        return torch.stack([p[0] for p in picks]), torch.tensor([p[1] for p in picks]), logits, mask

    def nbytes(self) -> int:
        """Bytes held: the uint8 pixels plus the float32 logits (DER++)."""
        return sum(
            img.numel() + (z.numel() * 4 if z is not None else 0)
            for label, bucket in self.images.items()
            for img, z in zip(bucket, self.logits[label])
        )

    def state_dict(self) -> dict:
        labels = [label for label, bucket in self.images.items() for _ in bucket]
        images = [img for b in self.images.values() for img in b]
        logits, mask = _pad_rows([z for zs in self.logits.values() for z in zs])
        return {
            "images": torch.stack(images) if images else torch.zeros(0, dtype=torch.uint8),
            "labels": torch.tensor(labels, dtype=torch.long),
            "logits": logits,
            "logit_widths": mask.sum(1).long(),
            "seen": torch.tensor([[label, s] for label, s in self.seen.items()], dtype=torch.long).reshape(
                -1, 2
            ),
            "rng": self.rng.getstate(),
        }  # ints and tuples: loads with weights_only=True

    def load_state_dict(self, state: dict) -> None:
        if "rng" in state:
            self.rng.setstate(_as_tuple(state["rng"]))
        self.images = {int(label): [] for label, _ in state["seen"].tolist()}
        self.logits = {int(label): [] for label, _ in state["seen"].tolist()}
        self.seen = {int(label): int(s) for label, s in state["seen"].tolist()}
        widths = state.get("logit_widths", torch.zeros(len(state["labels"]), dtype=torch.long)).tolist()
        logits = state.get("logits")
        for i, (img, label) in enumerate(zip(state["images"], state["labels"].tolist())):
            self.images[label].append(img.clone())
            self.logits[label].append(logits[i, : widths[i]].clone() if widths[i] else None)


def _pad_rows(rows: list[Tensor | None]) -> tuple[Tensor, Tensor]:
    """Vectors of varying length (None = empty) as a zero-padded float32 matrix and its 0/1 mask."""
    width = max([r.numel() for r in rows if r is not None] + [0])
    out, mask = torch.zeros(len(rows), width), torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        if r is not None:
            out[i, : r.numel()], mask[i, : r.numel()] = r, 1.0
    return out, mask


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def fisher_diagonal(
    model: nn.Module, batches, loss_fn: nn.Module, max_batches: int = 50
) -> dict[str, Tensor]:
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
    return nn.functional.kl_div(log_new, old, reduction="batchmean") * temperature**2


def derpp_terms(buffer_logits: Tensor, stored: Tensor, mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """DER++'s two buffer terms: (MSE between the logits now and the stored ones over the stored entries,
    cross-entropy of the buffer images against their labels)."""
    out = buffer_logits.float()
    k = stored.shape[1]
    stored, mask = stored.to(out.device), mask.to(out.device)
    mse = (((out[:, :k] - stored) ** 2) * mask).sum() / mask.sum().clamp(min=1.0)
    return mse, nn.functional.cross_entropy(out, labels.to(out.device))
