"""Predictor: model directory -> top-k class names and probabilities for images."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .data.decode import DecodeError, decode_image
from .data.transforms import build_eval_transform
from .errors import UserError
from .export import onnx_probabilities, onnx_session_for
from .hardware import pick_device, resolve_amp
from .modelfile import load_model_dir

BACKENDS = ("torch", "onnxruntime")


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""

    def to_dict(self) -> dict:
        if self.error:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top": [{"class": c, "prob": round(p, 6)} for c, p in self.top]}


class Predictor:
    """Loads a verified model directory once; predicts batches of images in the model's preprocessing.

    backend "torch" runs the eager model (autocast and channels_last as asked); "onnxruntime" runs the
    model's exported model.onnx (see export.py) on the CPU in fp32, giving the same top-k.
    """

    def __init__(self, model: str | os.PathLike, device: str = "auto", amp: str = "auto",
                 channels_last: bool = True, backend: str = "torch") -> None:
        if backend not in BACKENDS:
            raise UserError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if backend == "onnxruntime":
            device = "cpu"  # the CPU execution provider is the one we ship and check
        self.device = pick_device(device)
        self.loaded = load_model_dir(model, self.device)
        self.classes = self.loaded.classes
        self.transform = build_eval_transform(self.loaded.preprocess)
        self.amp_dtype = resolve_amp(amp, self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.loaded.model.to(memory_format=self.memory_format)
        self.backend = backend
        self.session = onnx_session_for(self.loaded) if backend == "onnxruntime" else None

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) preprocessed images -> (N, classes) softmax probabilities in fp32."""
        if self.session is not None:
            return onnx_probabilities(self.session, batch)
        batch = batch.to(self.device, memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                            enabled=self.amp_dtype is not None):
            logits = self.model(batch)
        return logits.float().softmax(dim=1).cpu()

    def predict(self, paths: list[str], topk: int = 5, batch_size: int = 32) -> list[Prediction]:
        """Top-k for each path, in order; an unreadable image gives a Prediction with `error` set."""
        results: list[Prediction] = []
        k = min(topk, len(self.classes))
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            tensors, slots = [], []
            for path in chunk:
                try:
                    tensors.append(self.transform(decode_image(path)))
                    slots.append(len(results))
                    results.append(Prediction(str(path)))
                except DecodeError as e:
                    results.append(Prediction(str(path), error=e.reason))
            if tensors:
                probs = self.probabilities(torch.stack(tensors))
                values, indices = probs.topk(k, dim=1)
                for slot, vals, idxs in zip(slots, values.tolist(), indices.tolist()):
                    results[slot].top = [(self.classes[i], v) for i, v in zip(idxs, vals)]
        return results
