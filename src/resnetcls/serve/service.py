"""What serve's endpoints do with a request's images (the HTTP surface, limits and batching policy are in
serve/app.py's docstring): probe the header against the pixel limit, decode and preprocess within the decode
budget, predict through the Batcher, explain on a private copy of the weights, and describe the model and
limits for /info.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from starlette.exceptions import HTTPException

from ..data.decode import NOT_OUR_FORMAT, DecodeError, DecodeMemoryError, decode_image, probe_image
from ..inference.command import unknown_accept_note
from ..inference.explain import Explainer, png_bytes
from ..inference.predictor import Predictor
from ..utils.openset import UNKNOWN
from .admission import Batcher, DecodeBudget, overloaded
from .schema import MAX_BATCH_FILES, BatchItem, ClassProb, LabelProb, ServeSettings

log = logging.getLogger("resnetcls.serve")


class ImageService:
    """Request bytes -> preprocessed tensor with the status-code contract and admission control, and
    tensor -> top-k via the Batcher."""

    def __init__(self, settings: ServeSettings) -> None:
        settings.check()
        self.settings = settings
        # Every torch computation of this process runs on the model thread, the model's loading included: each
        # thread that runs a parallel torch op gets its own OpenMP team, and with two teams on 2 cores libgomp
        # stops spinning between ops (its "throttled" wait), which took a batch-1 bf16 call from 27 to 47 ms
        # (Xeon-AMX). Decoding and preprocessing (PIL and numpy) stay in the request threads.
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.predictor = self.model_thread.submit(
            Predictor,
            settings.model,
            backend=settings.backend,
            precision=settings.precision,
            open_set=settings.open_set,
            unknown_accept=settings.unknown_accept,
            label_threshold=settings.threshold,
        ).result()
        note = unknown_accept_note(self.predictor)
        if note:
            print(note, file=sys.stderr)
        self.batcher = Batcher(
            self.scored_batch if self.predictor.threshold is not None else self.predictor.probabilities,
            settings.max_batch,
            settings.batch_wait_ms,
            settings.max_queue,
            executor=self.model_thread,
        )
        self.budget = DecodeBudget(int(settings.max_decode_mb * 1e6), settings.admission_wait_s)
        self.explainer: Explainer | None = None  # made at the first /explain (a copy of the weights)
        self.explain_lock, self.explains_waiting = asyncio.Lock(), 0

    def scored_batch(self, batch: torch.Tensor) -> list[tuple[torch.Tensor, float | None]]:
        """With open-set rejection on: each image's probabilities and open-set score (None where the backend
        gives none)."""
        probs, scores = self.predictor.scored_probabilities(batch)
        return list(zip(probs, [None] * len(probs) if scores is None else scores.tolist()))

    def probe(self, data: bytes, name: str) -> tuple[int, int]:
        """(pixels, decode peak bytes) from the header alone; 415 for what we do not read, 422 for too many
        pixels."""
        if not data:
            raise HTTPException(400, f"{name}: empty file")
        try:
            width, height, peak = probe_image(data)
        except Image.DecompressionBombError as e:
            raise HTTPException(422, f"{name}: {e}") from None
        except Exception:  # noqa: BLE001 - Pillow raises many types for non-images
            raise HTTPException(415, f"{name}: {NOT_OUR_FORMAT}") from None
        if width * height > self.settings.max_pixels:
            raise HTTPException(
                422,
                f"{name}: image is {width}x{height} = {width * height} pixels, above the "
                f"limit of {self.settings.max_pixels} (possible decompression bomb)",
            )
        return width * height, peak

    def prepare(self, data: bytes, name: str) -> torch.Tensor:
        """Decode and preprocess (after probe and admission); every failure is this file's own status."""
        try:
            image = decode_image(data, name=name, max_pixels=self.settings.max_pixels)
        except DecodeMemoryError as e:
            raise overloaded(str(e)) from None
        except DecodeError as e:
            raise HTTPException(415, str(e)) from None
        try:
            return self.predictor.transform(image)
        except MemoryError:
            raise overloaded(f"{name}: not enough memory to preprocess this image now") from None
        except Exception as e:  # noqa: BLE001 - a decoder that accepts the header but fails later
            log.warning("%s: preprocessing failed: %r", name, e)
            raise HTTPException(422, f"{name}: cannot preprocess this image ({type(e).__name__})") from None

    async def top(self, data: bytes, name: str, topk: int, header: tuple[int, int] | None = None) -> dict:
        """The response fields of one image: top (the top-k ClassProb), with open-set rejection on, label,
        unknown and open_set_score, and for a multi-label model, labels (LabelProb at or above their
        thresholds)."""
        if self.batcher.queue.full():  # shed before spending a decode on it
            raise overloaded(
                f"{self.batcher.queue.maxsize} images are already waiting for the model; retry shortly"
            )
        _, peak = header or await run_in_threadpool(self.probe, data, name)
        await self.budget.reserve(peak, name)
        try:
            tensor = await run_in_threadpool(self.prepare, data, name)  # not abandoned when the client leaves
        finally:
            await self.budget.release(peak)
        probs, score = await self.batcher.submit(tensor), None
        if self.predictor.threshold is not None:
            probs, score = probs
        values, indices = probs.topk(min(topk, len(self.predictor.classes)))
        top = [
            ClassProb(class_=self.predictor.classes[i], prob=round(v, 6))
            for v, i in zip(values.tolist(), indices.tolist())
        ]
        rule = self.predictor.label_rule
        if rule is not None:
            (answer,) = rule.answers(probs[None])
            return {"top": top, "labels": [LabelProb(label=c, probability=round(p, 6)) for c, p in answer]}
        if score is None:
            return {"top": top}
        unknown = score < self.predictor.threshold
        label = UNKNOWN if unknown else top[0].class_
        return {"top": top, "label": label, "unknown": unknown, "open_set_score": round(score, 6)}

    async def explain(self, data: bytes, name: str, class_name: str | None) -> tuple[bytes, str, float]:
        """(Grad-CAM overlay PNG, class, probability) of one image for class_name (None: the top-1).

        Whatever the backend, on the eager model in fp32 (every Predictor loads it; ONNX files have no
        gradients), so the probability can differ from /predict's by that backend's rounding."""
        classes = self.predictor.classes
        if self.predictor.model is None:  # a bare model.onnx: no eager weights to take gradients of
            raise HTTPException(501, "this server runs a bare ONNX file; /explain needs the model directory")
        if class_name is not None and class_name not in classes:
            raise HTTPException(
                422, f"class {class_name!r}: not one of the model's {len(classes)} classes (see /info)"
            )
        if self.explains_waiting >= self.settings.max_queue:
            raise overloaded(f"{self.explains_waiting} explanations are already waiting; retry shortly")
        _, peak = await run_in_threadpool(self.probe, data, name)
        await self.budget.reserve(peak, name)
        try:
            tensor = await run_in_threadpool(self.prepare, data, name)
        finally:
            await self.budget.release(peak)
        self.explains_waiting += 1
        try:
            async with self.explain_lock:  # one backward at a time, waiting here rather than in a thread
                loop = asyncio.get_running_loop()
                if self.explainer is None:
                    p = self.predictor
                    self.explainer = await loop.run_in_executor(
                        self.model_thread,
                        functools.partial(
                            Explainer,
                            p.model,
                            p.loaded.preprocess,
                            p.device,
                            private_copy=True,
                            temperature=p.temperature,
                            sigmoid=p.label_rule is not None,
                        ),
                    )
                index = None if class_name is None else classes.index(class_name)
                explanation = await loop.run_in_executor(
                    self.model_thread, self.explainer.explain, tensor, index
                )
        finally:
            self.explains_waiting -= 1
        return png_bytes(explanation.overlay()), classes[explanation.class_index], explanation.prob

    async def top_of_batch(self, uploads: list[tuple[str, bytes]], topk: int) -> list[BatchItem]:
        """One BatchItem per file; 413 for the whole request over --max-batch-pixels."""
        headers = await asyncio.gather(
            *(run_in_threadpool(self.probe, data, name) for name, data in uploads), return_exceptions=True
        )
        total = sum(h[0] for h in headers if isinstance(h, tuple))
        if total > self.settings.max_batch_pixels:
            raise HTTPException(
                413,
                f"the {len(uploads)} images total {total} pixels, above the per-request limit "
                f"of {self.settings.max_batch_pixels}; send fewer or smaller images",
            )

        async def one(name: str, data: bytes, header) -> dict:
            if isinstance(header, BaseException):
                raise header
            return await self.top(data, name, topk, header)

        outcomes = await asyncio.gather(
            *(one(n, d, h) for (n, d), h in zip(uploads, headers)), return_exceptions=True
        )
        results = []
        for (name, _), outcome in zip(uploads, outcomes):
            if isinstance(outcome, HTTPException):
                results.append(
                    BatchItem(filename=name, status=outcome.status_code, error=str(outcome.detail))
                )
            elif isinstance(outcome, Exception):
                log.error("%s: internal error", name, exc_info=outcome)
                results.append(BatchItem(filename=name, status=500, error=f"{name}: internal error"))
            elif isinstance(outcome, BaseException):
                raise outcome  # cancellation
            else:
                results.append(BatchItem(filename=name, status=200, **outcome))
        return results

    def info(self) -> dict:
        meta = {k: v for k, v in self.predictor.loaded.meta.items() if k != "sha256"}  # internals stay inside
        meta.setdefault("metrics", {})
        meta.setdefault("created", None)
        s = self.settings
        return {
            **meta,
            "backend": self.predictor.backend,
            "precision": self.predictor.precision,
            "open_set": self.predictor.open_set_info(),  # the record's quantiles stay inside
            **(rule.info() if (rule := self.predictor.label_rule) is not None else {}),
            "limits": {
                "max_body_bytes": s.max_body_bytes,
                "max_pixels": s.max_pixels,
                "max_batch_files": MAX_BATCH_FILES,
                "max_batch_pixels": s.max_batch_pixels,
                "max_decode_mb": s.max_decode_mb,
                "max_queue": s.max_queue,
                "admission_wait_s": s.admission_wait_s,
                "stall_s": s.stall_s,
                "keep_alive_s": s.keep_alive_s,
                "header_timeout_s": s.header_timeout_s,
                "body_timeout_s": s.body_timeout_s,
                "max_connections": s.max_connections,
                "max_idle_connections": s.max_idle_connections,
                "max_idle_per_client": s.max_idle_per_client,
            },
            "batching": {"max_batch": s.max_batch, "batch_wait_ms": s.batch_wait_ms},
        }
