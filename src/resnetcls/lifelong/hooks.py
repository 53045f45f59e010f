"""Strategy hooks: what each lifelong strategy adds to the engine's step loop (engine/loop.py's StepHooks:
extra_batch, extra_loss), does around a task (start_task, end_task), and keeps in the checkpoint.

- naive / joint: nothing (joint differs only in what it trains on; see run.py);
- replay: a class-balanced ReplayBuffer of uint8 crops; each step trains on the batch plus as many replayed
  images (from earlier tasks only: the buffer is filled at the end of each task);
- ewc: lambda * sum F (theta - theta*)^2, with F summed over the tasks so far (Fisher in eval mode) and
  theta* the weights after the latest task;
- lwf: alpha * distillation to a frozen copy of the model as it was after the previous task;
- derpp (DER++, Buzzega et al. 2020): replay whose buffer also keeps the logits the model gave each image when
  it was stored (at the end of its task, in eval mode). The step's loss is the mean cross-entropy over the
  joined batch (fresh + replayed, as replay), i.e. (CE_fresh + CE_buffer)/2, and extra_loss adds
  (alpha * MSE(logits, stored logits) + (beta - 1) * CE_buffer)/2, so the whole is DER++'s
  CE_fresh + beta * CE_buffer + alpha * MSE at half scale (one draw of buffer images serves both terms);
- ncm: trains as replay; at the end of each task the class prototypes (lifelong/ncm.py) are recomputed with
  the network as it now is, from the task's training images (at most PROTOTYPE_IMAGES a class) for its
  classes and from the buffer's images for the earlier ones (a class with neither keeps its prototype), and
  every evaluation predicts by the nearest prototype instead of the trained head.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..config import LifelongConfig
from ..engine.loop import StepHooks
from .ncm import PROTOTYPE_IMAGES, class_prototypes, first_per_class, merge_prototypes, pooled_features
from .strategies import ReplayBuffer, derpp_terms, distillation_loss, ewc_penalty, fisher_diagonal


def grow_head(model: nn.Module, num_classes: int) -> bool:
    """Widen model.fc to num_classes outputs, keeping the trained rows (class-incremental). True if grown."""
    old = model.fc
    if old.out_features >= num_classes:
        return False
    new = nn.Linear(old.in_features, num_classes, device=old.weight.device)
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
    model.fc = new
    return True


def _pad_to(t: Tensor, shape: torch.Size) -> Tensor:
    if t.shape == shape:
        return t
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


class StrategyHooks(StepHooks):
    """The state and the per-step / per-task work of one strategy (lifelong.strategy).

    lifelong/run.py calls start_task before a task's first epoch, passes the hooks to every training step
    (extra_batch and extra_loss, see engine.loop.StepHooks), and calls end_task after the task's last epoch.
    """

    def __init__(self, lc: LifelongConfig, seed: int) -> None:
        self.name, self.lc, self.seed = lc.strategy, lc, seed
        replaying = lc.strategy in ("replay", "derpp", "ncm")
        self.buffer = ReplayBuffer(lc.buffer_size, seed) if replaying else None
        self.drawn: tuple | None = None  # DER++: (fresh batch size, stored logits, mask, labels) of this step
        self.fisher: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self.old_model: nn.Module | None = None
        self.model: nn.Module | None = None  # the unwrapped model being trained (EWC reads its parameters)
        self.prototypes: Tensor | None = None  # ncm: (classes, D) means of the normalised pooled features

    def start_task(self, index: int, model: nn.Module) -> None:
        """Reseed the buffer's sampler per task (a resumed run draws the same replay batches) and give a
        grown head's new rows zero Fisher (they are free to learn)."""
        self.model = model
        if self.buffer is not None:
            self.buffer.rng = random.Random(self.seed * 7919 + index)
        params = dict(model.named_parameters())
        for n in list(self.fisher):
            self.fisher[n] = _pad_to(self.fisher[n], params[n].shape)
            self.anchor[n] = _pad_to(self.anchor[n], params[n].shape)

    def extra_batch(self, n: int) -> tuple[Tensor, Tensor] | None:
        """Replay: n uint8 images with labels from earlier tasks, or None (not replay, or nothing stored yet).
        DER++ also keeps the drawn images' stored logits for this step's extra_loss."""
        if self.buffer is None:
            return None
        if self.name != "derpp":
            return self.buffer.sample(n)
        drawn = self.buffer.sample_with_logits(n)
        self.drawn = None if drawn is None else (n, drawn[2], drawn[3], drawn[1])
        return None if drawn is None else drawn[:2]

    def extra_loss(self, images: Tensor, logits: Tensor) -> Tensor | None:
        """EWC's penalty, LwF's distillation or DER++'s buffer terms (inside the step's autocast), else
        None."""
        if self.name == "derpp" and self.drawn is not None:
            n, stored, mask, labels = self.drawn
            self.drawn = None
            mse, ce = derpp_terms(logits[n:], stored, mask, labels)
            return 0.5 * (self.lc.derpp_alpha * mse + (self.lc.derpp_beta - 1.0) * ce)
        if self.name == "ewc" and self.fisher:
            return self.lc.ewc_lambda * ewc_penalty(self.model, self.fisher, self.anchor)
        if self.name == "lwf" and self.old_model is not None:
            with torch.no_grad():
                old_logits = self.old_model(images)
            return self.lc.lwf_alpha * distillation_loss(logits, old_logits, self.lc.lwf_temperature)
        return None

    def end_task(
        self,
        model: nn.Module,
        stored_batches,
        eval_batches,
        loss_fn: nn.Module,
        finish: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """stored_batches(): uint8 (images, labels) of the task's train set (for the buffer);
        eval_batches(): normalised (images, labels) on the device (for the Fisher and the prototypes);
        finish: uint8 images -> normalised on the device (ncm: the buffer's images)."""
        if self.name == "derpp":
            self._store_with_logits(model, stored_batches(), eval_batches())
        elif self.buffer is not None:
            for images, labels in stored_batches():
                for image, label in zip(images, labels.tolist()):
                    self.buffer.add(image.contiguous(), label)
        if self.name == "ewc":
            new = fisher_diagonal(model, eval_batches(), loss_fn)
            self.fisher = {
                n: _pad_to(self.fisher[n], f.shape) + f if n in self.fisher else f for n, f in new.items()
            }
            self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.fisher}
        if self.name == "lwf":
            self.set_old_model(model)
        if self.name == "ncm":
            self.update_prototypes(model, eval_batches(), finish)

    def update_prototypes(self, model: nn.Module, task_batches, finish: Callable[[Tensor], Tensor]) -> None:
        """ncm: every seen class's prototype recomputed with the model as it now is: the task's classes from
        its first PROTOTYPE_IMAGES training images each, the other classes from the buffer's images; a
        class with neither (an empty buffer) keeps its earlier prototype."""
        features, labels = pooled_features(model, task_batches)
        keep = first_per_class(labels, PROTOTYPE_IMAGES)
        features, labels = features[keep], labels[keep]
        if finish is not None and self.buffer is not None:
            old_features, old_labels = pooled_features(
                model, self._earlier_images(set(labels.tolist()), finish)
            )
            if len(old_labels):
                features, labels = torch.cat([features, old_features]), torch.cat([labels, old_labels])
        prototypes, counts = class_prototypes(features, labels, model.fc.out_features)
        self.prototypes = merge_prototypes(self.prototypes, prototypes, counts)

    def _earlier_images(self, current: set[int], finish: Callable[[Tensor], Tensor], size: int = 64):
        """The buffer's images of classes not in current, normalised by finish, as (images, labels)
        batches."""
        stored = [
            (img, label) for label, imgs in self.buffer.images.items() if label not in current for img in imgs
        ]
        for start in range(0, len(stored), size):
            chunk = stored[start : start + size]
            yield finish(torch.stack([img for img, _ in chunk])), torch.tensor([label for _, label in chunk])

    def _store_with_logits(self, model: nn.Module, stored, normalised) -> None:
        """DER++: offer each image to the buffer with the model's logits on it (eval mode, no augmentation;
        stored and normalised iterate the same loader in the same order)."""
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for (images, labels), (x, _) in zip(stored, normalised):
                for image, label, z in zip(images, labels.tolist(), model(x).float().cpu()):
                    self.buffer.add(image.contiguous(), label, z)
        model.train(was_training)

    def set_old_model(self, model: nn.Module, weights: dict[str, Tensor] | None = None) -> None:
        """Freeze a copy of model as LwF's teacher; with weights (a saved teacher), that copy holds them (its
        head as wide as the saved one)."""
        self.old_model = copy.deepcopy(model).eval()
        if weights is not None:
            classes = weights["fc.weight"].shape[0]
            if self.old_model.fc.out_features != classes:
                fc = self.old_model.fc
                self.old_model.fc = nn.Linear(fc.in_features, classes, device=fc.weight.device)
            self.old_model.load_state_dict(weights)
        for p in self.old_model.parameters():
            p.requires_grad_(False)

    def buffer_stats(self) -> dict:
        n = len(self.buffer) if self.buffer is not None else 0
        return {"buffer_images": n, "buffer_mb": round(self.buffer.nbytes() / 1e6, 6) if n else 0.0}

    def state_dict(self) -> dict:
        """Buffer (with its sampler's position), Fisher, anchor and LwF's teacher: a resume inside a task
        continues exactly."""
        return {
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "fisher": self.fisher,
            "anchor": self.anchor,
            "teacher": self.old_model.state_dict() if self.old_model is not None else None,
            "prototypes": self.prototypes,
        }

    def load_state_dict(self, state: dict, model: nn.Module) -> None:
        """Restore after the model's weights are loaded."""
        self.model = model
        if self.buffer is not None and state["buffer"] is not None:
            self.buffer.load_state_dict(state["buffer"])
        self.fisher, self.anchor = dict(state["fisher"]), dict(state["anchor"])
        if self.name == "lwf" and state.get("teacher") is not None:
            self.set_old_model(model, state["teacher"])
        self.prototypes = state.get("prototypes")
