"""Knowledge distillation (`train DATA --teacher MODEL_DIR`): the student learns from the labels and from a
trained teacher's softened outputs (Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural
Network"):

    loss = (1 - alpha) * task loss + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

with alpha = distill.alpha and T = distill.temperature; T^2 keeps the soft term's gradients on the scale of
the task loss's whatever T is. The task loss is the run's own (loss.*: label smoothing, class weights,
Mixup/CutMix's soft targets).

The teacher (any resnetcls model directory of the same classes in the same order) runs in eval mode without
gradients, inside the student's autocast (bf16 where the student trains in bf16), on the very batch the
student sees after augmentation, Mixup and CutMix, so both answer the same picture. Its logits are computed
on the fly, never cached: with random crops, flips, policies and Mixup/CutMix no two epochs show the same
picture, so logits stored once per image would describe pictures the student never sees.

The teacher's own preprocessing may differ from the student's: the batch is brought to it (TeacherInput):
re-normalised to the teacher's mean and std, and resized (bilinear, antialiased) to its image size.

Its identity (the sha256 of its weights and of model.json's content) is recorded in the run (metrics.jsonl's
"distill" record, every checkpoint's .json) and checked on resume: a run resumes only with the teacher it
started with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from ..config import DistillConfig
from ..errors import UserError
from ..records.modelfile import META, content_sha256, load_model_dir, read_meta, resolve_model_dir
from .loop import NO_HOOKS, StepContext, StepHooks
from .prepare import warn

CHECKPOINT_KEY = "distill"  # the teacher's record in a checkpoint's .json
SHOWN = 5  # class names shown in a refusal


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch, in float32."""
    student = functional.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = functional.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = functional.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def distill_loss(
    task_loss: Tensor, student_logits: Tensor, teacher_logits: Tensor, alpha: float, temperature: float
) -> Tensor:
    """(1 - alpha) * task_loss + alpha * kd_loss(...): the loss a distilled step minimises."""
    return (1 - alpha) * task_loss + alpha * kd_loss(student_logits, teacher_logits, temperature)


@dataclass(frozen=True)
class TeacherIdentity:
    """Which teacher a run distils from: its folder, architecture, classes, preprocessing and the sha256 of
    its weights and of model.json's content (what a resume compares)."""

    path: str
    arch: str
    classes: tuple[str, ...]
    preprocess: dict
    weights_sha256: str
    content_sha256: str

    def record(self, kind: str = "") -> dict:
        """The JSON record kept in every checkpoint's .json and (with its kind) in metrics.jsonl."""
        return {
            **({"kind": kind} if kind else {}),
            "teacher": self.path,
            "arch": self.arch,
            "image_size": self.preprocess["image_size"],
            "weights_sha256": self.weights_sha256,
            "content_sha256": self.content_sha256,
        }

    def same_as(self, record: dict) -> bool:
        return (record.get("weights_sha256"), record.get("content_sha256")) == (
            self.weights_sha256,
            self.content_sha256,
        )


def read_teacher(path: str) -> TeacherIdentity:
    """The teacher's identity from its model.json (fields and the weights' hash checked; nothing built)."""
    try:
        model_dir = resolve_model_dir(path)
        meta = read_meta(model_dir)
    except UserError as e:
        raise UserError(f"--teacher (distill.teacher): {e}") from None
    return TeacherIdentity(
        str(model_dir.absolute()),
        meta["arch"],
        tuple(meta["classes"]),
        dict(meta["preprocess"]),
        meta["sha256"]["model.safetensors"],
        meta["sha256"].get(META) or content_sha256(meta),
    )


def class_difference(teacher: list[str], data: list[str]) -> str:
    """How the teacher's class list differs from the data's, in a few words ("" when they are the same)."""
    if teacher == data:
        return ""
    only_teacher = [name for name in teacher if name not in set(data)]
    only_data = [name for name in data if name not in set(teacher)]
    if not only_teacher and not only_data and len(teacher) == len(data):
        index = next(i for i, (a, b) in enumerate(zip(teacher, data, strict=True)) if a != b)
        return (
            f"the same {len(data)} classes in another order (class {index} is the teacher's "
            f"{teacher[index]!r}, DATA's {data[index]!r})"
        )
    parts = [
        f"only {who} has {', '.join(map(repr, names[:SHOWN]))}{' ...' if len(names) > SHOWN else ''}"
        for who, names in (("the teacher", only_teacher), ("DATA", only_data))
        if names
    ]
    return f"{len(teacher)} classes against DATA's {len(data)}: " + "; ".join(parts or ["repeated names"])


def check_teacher(
    distill_cfg: DistillConfig, classes: list[str], resumed: tuple[dict, dict] | None, force: bool
) -> TeacherIdentity | None:
    """The teacher's identity (None: no distillation), refused when it is missing or broken, when its
    classes are not DATA's in DATA's order, or when a resumed run started with another teacher (--force:
    a warning instead)."""
    if not distill_cfg.teacher:
        return None
    teacher = read_teacher(distill_cfg.teacher)
    difference = class_difference(list(teacher.classes), list(classes))
    if difference:
        raise UserError(
            f"--teacher {teacher.path}: its classes are not DATA's: {difference}; a teacher must be trained "
            "on the same classes (its outputs are matched to the student's by index)"
        )
    saved = (resumed[1].get(CHECKPOINT_KEY) or {}) if resumed else {}
    if saved and not teacher.same_as(saved):
        text = (
            f"--teacher {teacher.path}: not the teacher this run started with ({saved.get('teacher')}, "
            f"weights sha256 {str(saved.get('weights_sha256'))[:12]}, now {teacher.weights_sha256[:12]})"
        )
        if not force:
            raise UserError(f"{text}; resume with that teacher, or --force to resume anyway")
        warn(f"warning: resuming with another teacher (--force): {text}")
    return teacher


def distill_line(teacher: TeacherIdentity, distill_cfg: DistillConfig, student_preprocess: dict) -> str:
    """The opening line that says what the run distils from."""
    changes = input_changes(student_preprocess, teacher.preprocess)
    text = (
        f"distillation: teacher {teacher.arch} {teacher.path} (weights sha256 "
        f"{teacher.weights_sha256[:12]}), alpha {distill_cfg.alpha:g}, temperature "
        f"{distill_cfg.temperature:g}; teacher logits computed on each augmented batch"
    )
    return text + (f"; its input {', '.join(changes)}" if changes else "")


def input_changes(student: dict, teacher: dict) -> list[str]:
    """What TeacherInput does to the student's batch, in words (empty: nothing)."""
    changes = []
    if (student["mean"], student["std"]) != (teacher["mean"], teacher["std"]):
        changes.append("re-normalised to the teacher's mean/std")
    if student["image_size"] != teacher["image_size"]:
        changes.append(f"resized {student['image_size']} -> {teacher['image_size']} px")
    return changes


class TeacherInput(nn.Module):
    """The student's normalised batch as the teacher's preprocessing would have made it: re-normalised to the
    teacher's mean and std (x * s_std / t_std + (s_mean - t_mean) / t_std), then resized to its square
    image size (bilinear, antialiased) when the batch has another size (progressive resizing included)."""

    def __init__(self, student: dict, teacher: dict) -> None:
        super().__init__()
        s_mean, s_std, t_mean, t_std = (
            torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)
            for values in (student["mean"], student["std"], teacher["mean"], teacher["std"])
        )
        self.renormalise = not (torch.equal(s_mean, t_mean) and torch.equal(s_std, t_std))
        self.register_buffer("scale", s_std / t_std)
        self.register_buffer("shift", (s_mean - t_mean) / t_std)
        self.size = int(teacher["image_size"])

    def forward(self, images: Tensor) -> Tensor:
        if self.renormalise:
            images = images.float() * self.scale + self.shift
        if tuple(images.shape[-2:]) != (self.size, self.size):
            images = functional.interpolate(
                images.float(), size=(self.size, self.size), mode="bilinear", antialias=True
            )
        return images


class DistillHooks(StepHooks):
    """The distillation term of every training step: the teacher's logits on the step's batch (no gradients,
    in the student's autocast), alpha * kd_loss against the student's; the task loss is weighted 1 - alpha
    (task_weight, read by loop.forward_batch)."""

    def __init__(self, teacher: nn.Module, view: TeacherInput, alpha: float, temperature: float) -> None:
        self.teacher, self.view = teacher.eval(), view
        self.alpha, self.temperature = alpha, temperature
        self.task_weight = 1.0 - alpha

    def teacher_logits(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.teacher(self.view(images))

    def extra_loss(self, images: Tensor, logits: Tensor) -> Tensor | None:
        if self.alpha == 0:  # the task loss alone: no teacher pass
            return None
        return self.alpha * kd_loss(logits, self.teacher_logits(images), self.temperature)


def build_distill_hooks(
    teacher: TeacherIdentity | None, distill_cfg: DistillConfig, student_preprocess: dict, ctx: StepContext
) -> StepHooks:
    """The run's StepHooks: DistillHooks with the teacher loaded (hash-checked) onto ctx's device in eval
    mode (channels_last as the student), or NO_HOOKS without a teacher."""
    if teacher is None:
        return NO_HOOKS
    model = load_model_dir(teacher.path, ctx.device).model.requires_grad_(False)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    view = TeacherInput(student_preprocess, teacher.preprocess).to(ctx.device)
    return DistillHooks(model, view, distill_cfg.alpha, distill_cfg.temperature)


def checkpoint_record(teacher: TeacherIdentity | None) -> Callable[[], tuple[dict, dict]] | None:
    """The Checkpointer's extra(): the teacher's record in every checkpoint's .json (None: no teacher)."""
    if teacher is None:
        return None
    return lambda: ({}, {CHECKPOINT_KEY: teacher.record()})
