"""Strategy hooks for the lifelong step loop: what each strategy adds to a training step, does at the end of
a task, and keeps in the checkpoint.

- naive / joint: nothing (joint differs only in what it trains on; see run.py);
- replay: a class-balanced ReplayBuffer of uint8 crops; each step trains on the batch plus as many replayed
  images (from earlier tasks only: the buffer is filled at the end of each task);
- ewc: lambda * sum F (theta - theta*)^2, with F summed over the tasks so far (Fisher in eval mode) and
  theta* the weights after the latest task;
- lwf: alpha * distillation to a frozen copy of the model as it was after the previous task.
"""
from __future__ import annotations

import copy
import random

import torch
from torch import Tensor, nn

from ..config import LifelongConfig
from .strategies import ReplayBuffer, distillation_loss, ewc_penalty, fisher_diagonal

STRATEGIES = ("naive", "replay", "ewc", "lwf", "joint")


def grow_head(model: nn.Module, num_classes: int) -> bool:
    """Widen model.fc to num_classes outputs, keeping the trained rows (class-incremental). True if grown."""
    old = model.fc
    if old.out_features >= num_classes:
        return False
    new = nn.Linear(old.in_features, num_classes, device=old.weight.device)
    with torch.no_grad():
        new.weight[:old.out_features] = old.weight
        new.bias[:old.out_features] = old.bias
    model.fc = new
    return True


def _pad_to(t: Tensor, shape: torch.Size) -> Tensor:
    if t.shape == shape:
        return t
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


class StrategyHooks:
    """The state and the per-step / per-task work of one strategy."""

    def __init__(self, lc: LifelongConfig, seed: int) -> None:
        self.name, self.lc, self.seed = lc.strategy, lc, seed
        self.buffer = ReplayBuffer(lc.buffer_size, seed) if lc.strategy == "replay" else None
        self.fisher: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self.old_model: nn.Module | None = None

    def start_task(self, index: int, model: nn.Module) -> None:
        """Reseed the buffer's sampler per task (a resumed run draws the same replay batches) and give a
        grown head's new rows zero Fisher (they are free to learn)."""
        if self.buffer is not None:
            self.buffer.rng = random.Random(self.seed * 7919 + index)
        params = dict(model.named_parameters())
        for n in list(self.fisher):
            self.fisher[n] = _pad_to(self.fisher[n], params[n].shape)
            self.anchor[n] = _pad_to(self.anchor[n], params[n].shape)

    def replay(self, n: int) -> tuple[Tensor, Tensor] | None:
        """n uint8 images with labels from earlier tasks, or None (not replay, or nothing stored yet)."""
        return self.buffer.sample(n) if self.buffer is not None else None

    def extra_loss(self, model: nn.Module, images: Tensor, logits: Tensor) -> Tensor | None:
        if self.name == "ewc" and self.fisher:
            return self.lc.ewc_lambda * ewc_penalty(model, self.fisher, self.anchor)
        if self.name == "lwf" and self.old_model is not None:
            with torch.no_grad():
                old_logits = self.old_model(images)
            return self.lc.lwf_alpha * distillation_loss(logits, old_logits, self.lc.lwf_temperature)
        return None

    def end_task(self, model: nn.Module, stored_batches, eval_batches, loss_fn: nn.Module) -> None:
        """stored_batches(): uint8 (images, labels) of the task's train set (for the buffer);
        eval_batches(): normalised (images, labels) on the device (for the Fisher)."""
        if self.buffer is not None:
            for images, labels in stored_batches():
                for image, label in zip(images, labels.tolist()):
                    self.buffer.add(image.contiguous(), label)
        if self.name == "ewc":
            new = fisher_diagonal(model, eval_batches(), loss_fn)
            self.fisher = {n: _pad_to(self.fisher[n], f.shape) + f if n in self.fisher else f
                           for n, f in new.items()}
            self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.fisher}
        if self.name == "lwf":
            self.set_old_model(model)

    def set_old_model(self, model: nn.Module) -> None:
        self.old_model = copy.deepcopy(model).eval()
        for p in self.old_model.parameters():
            p.requires_grad_(False)

    def buffer_stats(self) -> dict:
        n = len(self.buffer) if self.buffer is not None else 0
        return {"buffer_images": n, "buffer_mb": round(self.buffer.nbytes() / 1e6, 6) if n else 0.0}

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict() if self.buffer is not None else None,
                "fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, state: dict, model: nn.Module) -> None:
        """Restore after the model's weights are loaded (LwF's teacher is that model)."""
        if self.buffer is not None and state["buffer"] is not None:
            self.buffer.load_state_dict(state["buffer"])
        self.fisher, self.anchor = dict(state["fisher"]), dict(state["anchor"])
        if self.name == "lwf":
            self.set_old_model(model)
