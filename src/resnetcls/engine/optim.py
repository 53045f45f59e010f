"""Optimizers, learning-rate schedules, losses, EMA, and build_optimization(): all of them (plus the gradient
scaler and accumulation) built in one place for plain and lifelong training."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import LossConfig, OptimConfig, SchedConfig, TrainConfig
from ..errors import UserError
from .loop import Optimization, StepContext


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Two groups: weights with decay, and (unless decay_norm_and_bias) BN parameters and biases without."""
    if decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # 1-D tensors are BN gammas/betas and biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# Adam/AdamW run torch's fused kernel (one pass over all parameters) where torch has it for the parameters'
# device and dtype: a ResNet-50 AdamW step on the 2-core Zen 4 took 18-21 ms fused vs 57-85 ms with the
# default per-parameter loop. SGD keeps torch's default: its fused CPU kernel measured no faster there.
FUSED_OPTIMIZERS = ("adam", "adamw")


def make_optimizer(cls: type, groups: list[dict], fused: bool, **kwargs) -> torch.optim.Optimizer:
    """cls(groups, fused=True, ...) when asked and torch supports it for these parameters, else torch's
    default implementation (the same update; torch refuses fused for e.g. unsupported devices or dtypes)."""
    if fused:
        try:
            return cls(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError):
            pass
    return cls(groups, **kwargs)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """optim.name's optimizer over param_groups(); Adam/AdamW fused where torch supports it
    (FUSED_OPTIMIZERS)."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    fused = cfg.name in FUSED_OPTIMIZERS
    if cfg.name == "adamw":
        return make_optimizer(torch.optim.AdamW, groups, fused, lr=cfg.lr)
    if cfg.name == "adam":
        # Adam's weight decay is L2 added to the gradient.
        return make_optimizer(torch.optim.Adam, groups, fused, lr=cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    raise UserError(f"optim.name={cfg.name!r}: expected adamw, adam or sgd")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over warmup_epochs, then cosine (or constant) down to min_lr_ratio.

    It is stepped once per optimizer step either way; with interval=epoch the factor only changes at epoch
    boundaries (the step is rounded down to its epoch's first step), so there is one code path to resume.
    """
    if cfg.name not in ("cosine", "constant"):
        raise UserError(f"sched.name={cfg.name!r}: expected cosine or constant")
    if cfg.interval not in ("step", "epoch"):
        raise UserError(f"sched.interval={cfg.interval!r}: expected step or epoch")
    per_epoch = cfg.interval == "epoch"
    unit = steps_per_epoch if per_epoch else 1
    total = max(1, steps_per_epoch * epochs)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        step = step // unit * unit
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.name == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """torch's softmax cross-entropy, also for soft targets (N, C) (Mixup/CutMix): computed in float32 (the
    target's dtype; logits may be bf16 under autocast) and, class-weighted, normalised by the blended weights
    of the targets, so a one-hot soft target gives exactly the loss of its hard label (torch itself divides
    a soft-target weighted loss by N instead)."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if not target.is_floating_point():
            return super().forward(logits, target)
        target = target.float()
        if self.weight is None:
            return super().forward(logits.float(), target)
        per_sample = nn.functional.cross_entropy(
            logits.float(), target, weight=self.weight, reduction="none", label_smoothing=self.label_smoothing
        )
        return per_sample.sum() / (target @ self.weight).sum()


class SigmoidOneHotLoss(nn.Module):
    """The sigmoid cross-entropy loss of each logit against the one-hot label (or, multi_label, against the
    image's multi-hot row: several classes may be 1, or none; class weights then weigh each class's term)."""

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        weight: Tensor | None = None,
        multi_label: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.multi_label = multi_label
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """target: class indices (N,) or soft targets (N, num_classes), e.g. Mixup/CutMix's blends."""
        soft = target.is_floating_point()
        one_hot = target.float() if soft else nn.functional.one_hot(target, self.num_classes).float()
        if self.label_smoothing:
            one_hot = one_hot * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        per_class = nn.functional.binary_cross_entropy_with_logits(
            logits.float(), one_hot.float(), reduction="none"
        )
        if self.multi_label and self.weight is not None:  # each class's term weighed by its class weight
            per_class = per_class * self.weight
        # Summed over classes, so the scale matches softmax cross-entropy per sample.
        per_sample = per_class.sum(dim=1)
        if self.weight is None or self.multi_label:
            return per_sample.mean()
        # a weighted mean over the batch, like CrossEntropyLoss(weight=); a soft target weighs its classes
        # blended
        w = target.float() @ self.weight if soft else self.weight[target]
        return (per_sample * w).sum() / w.sum()


def class_weights(labels: list[int], num_classes: int, mode: str) -> Tensor | None:
    """'balanced': weight c = n / (num_classes * count_c), so every class contributes equally; 'none':
    None."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise UserError(f"loss.class_weights={mode!r}: expected none or balanced")
    counts = torch.bincount(torch.as_tensor(labels), minlength=num_classes).float().clamp(min=1)
    return len(labels) / (num_classes * counts)


def build_loss(
    cfg: LossConfig,
    num_classes: int,
    train_labels: list[int] | None = None,
    label_sets: list[tuple[int, ...]] | None = None,
) -> nn.Module:
    """ce (softmax, label smoothing) or bce (sigmoid on one-hot labels), optionally class-weighted.

    Both take class indices or soft targets (N, num_classes) with rows summing to 1 (Mixup/CutMix); label
    smoothing then applies to the soft target (torch's CrossEntropyLoss does the same for probabilities).
    label_sets (multi-label training data): bce on multi-hot rows, the class weights counted over every
    label of every image (ce is refused: the plan replaces it, engine/multilabel.py)."""
    if label_sets is not None:
        if cfg.name != "bce":
            raise UserError(f"loss.name={cfg.name!r}: multi-label data trains with bce (a sigmoid per class)")
        labels = [label for labels in label_sets for label in labels]
        weight = class_weights(labels, num_classes, cfg.class_weights)
        return SigmoidOneHotLoss(num_classes, cfg.label_smoothing, weight, multi_label=True)
    weight = class_weights(train_labels or [], num_classes, cfg.class_weights)
    if cfg.name == "ce":
        return CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    if cfg.name == "bce":
        return SigmoidOneHotLoss(num_classes, cfg.label_smoothing, weight)
    raise UserError(f"loss.name={cfg.name!r}: expected ce or bce")


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights and BN buffers (torch's AveragedModel), or None."""
    if decay <= 0:
        return None
    if decay >= 1:
        raise UserError(f"train.ema_decay={decay}: expected 0 (off) or a value below 1, e.g. 0.999")
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
    )


def build_optimization(
    model: nn.Module,
    optim: OptimConfig,
    sched: SchedConfig,
    train: TrainConfig,
    steps_per_epoch: int,
    ctx: StepContext,
) -> Optimization:
    """Optimizer, schedule (over train.epochs of steps_per_epoch optimizer steps), gradient scaler (fp16
    only), EMA (train.ema_decay), accumulation (train.grad_accum_steps) and clipping (train.grad_clip_norm):
    what train_one_epoch steps. Build it after the model is on its device and in its final shape."""
    optimizer = build_optimizer(model, optim)
    return Optimization(
        optimizer,
        build_scheduler(optimizer, sched, steps_per_epoch, train.epochs),
        torch.amp.GradScaler(ctx.device.type, enabled=ctx.amp_dtype == torch.float16),
        build_ema(model, train.ema_decay),
        max(1, train.grad_accum_steps),
        train.grad_clip_norm,
    )
