"""serve's settings and the shapes of its requests and responses (what /docs shows), kept apart from the
endpoints in serve/app.py so each file stays readable."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from ..errors import UserError

MAX_BATCH_FILES = 64


@dataclass
class ServeSettings:
    model: str
    backend: str = "auto"
    max_body_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    max_batch: int = 32
    batch_wait_ms: float = 0.0
    max_decode_mb: float = 1024.0  # decode memory in flight (see serve_runtime.DecodeBudget)
    max_queue: int = 256  # images decoded and waiting for the model thread
    max_batch_pixels: int = 100_000_000  # header pixels of all images of one /predict/batch request
    admission_wait_s: float = 2.0  # how long a decode waits for budget before 503
    stall_s: float = 30.0  # /healthz fails when one model call has run longer than this
    keep_alive_s: float = 5.0  # idle keep-alive connections are closed after this
    header_timeout_s: float = 10.0  # a request head must arrive within this (slow clients)
    body_timeout_s: float = 30.0  # a request body must arrive within this
    max_connections: int = 64  # requests being processed (body received) at once; more get 503
    max_idle_connections: int = 64  # connections idle or still sending; past it the longest-waiting is closed
    max_idle_per_client: int = 16  # the same from one client address
    precision: str = "auto"  # predict's --precision: auto (bf16 where native) | bf16 | fp32
    open_set: str = "auto"  # predict's --open-set: auto (on when the model has a threshold) | on | off
    unknown_accept: float | None = None  # predict's --unknown-accept (None: the model's own share)
    threshold: float | None = None  # predict's --threshold: a multi-label model's one threshold per class

    def check(self) -> None:
        """UserError naming the flag for a setting out of range."""
        for flag, value in (
            ("--max-body-mb", self.max_body_bytes),
            ("--max-pixels", self.max_pixels),
            ("--max-batch", self.max_batch),
            ("--max-decode-mb", self.max_decode_mb),
            ("--max-queue", self.max_queue),
            ("--max-batch-pixels", self.max_batch_pixels),
            ("--stall-s", self.stall_s),
            ("--keep-alive-s", self.keep_alive_s),
            ("--header-timeout-s", self.header_timeout_s),
            ("--body-timeout-s", self.body_timeout_s),
            ("--max-connections", self.max_connections),
            ("--max-idle-connections", self.max_idle_connections),
            ("--max-idle-per-client", self.max_idle_per_client),
        ):
            if not value > 0:
                raise UserError(f"{flag} {value}: must be positive")
        if self.batch_wait_ms < 0 or self.admission_wait_s < 0:
            raise UserError("--batch-wait-ms and --admission-wait-s must not be negative")


class ClassProb(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class", description="class name")
    prob: float = Field(
        description="calibrated probability: softmax(logits / T), T from model.json's calibration; for a "
        "multi-label model the class's own sigmoid(logits)"
    )


class LabelProb(BaseModel):
    label: str = Field(description="a class at or above its threshold (see /info's thresholds)")
    probability: float = Field(description="its sigmoid probability")


class OpenSetAnswer(BaseModel):
    """The answer fields, present only while open-set rejection is on (see /info's open_set), and a
    multi-label model's labels (only for such a model)."""

    label: str | None = Field(
        None, description='the answer: the top class, or "unknown" when open_set_score is below the threshold'
    )
    unknown: bool | None = Field(None, description="true when the image is answered unknown")
    open_set_score: float | None = Field(
        None,
        description="how much the image looks like a known class (higher = more); unknown below "
        "/info's open_set.threshold",
    )

    labels: list[LabelProb] | None = Field(
        None,
        description="a multi-label model's answer: every class at or above its threshold, most probable "
        "first (empty: none reached its threshold)",
    )

    @model_serializer(mode="wrap")
    def _answer_last_and_only_when_on(self, handler):
        data = handler(self)
        answer = {key: data.pop(key) for key in ("label", "unknown", "open_set_score") if key in data}
        labels = data.pop("labels", None)
        if self.open_set_score is not None:
            data.update(answer)
        if self.labels is not None:
            data["labels"] = labels
        return data


class PredictResponse(OpenSetAnswer):
    filename: str = Field(description="the uploaded file's name, or 'body' for a raw request body")
    top: list[ClassProb] = Field(description="the top-k classes, most probable first (also when unknown)")


class BatchItem(OpenSetAnswer):
    filename: str
    status: int = Field(description="200, or the status this file alone would have got (415, 422)")
    top: list[ClassProb] | None = None
    error: str | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem] = Field(description="one entry per uploaded file, in order")


class ErrorResponse(BaseModel):
    detail: str


class HealthResponse(BaseModel):
    status: str
    decode_mb_in_use: float = Field(description="decode memory reserved now, of limits.max_decode_mb")
    queued: int = Field(description="images waiting for the model thread")
    batches_run: int = Field(description="model calls so far")
    images_run: int = Field(description="images classified so far (images_run / batches_run = mean batch)")


class InfoResponse(BaseModel):
    format: str
    arch: str
    arch_args: dict
    classes: list[str]
    preprocess: dict
    metrics: dict
    created: str | None
    calibration: dict | None = Field(
        None, description="the temperature and its fit; absent: T = 1 (raw softmax)"
    )
    backend: str
    precision: str = Field(description="what the model runs in: bf16 or fp32 (see --precision)")
    open_set: dict = Field(
        description="open-set rejection: on (bool), score (the model's score name, null without one), "
        'threshold (an image scoring below it is answered "unknown"; null when off) and accept (the share of '
        "known validation images it accepts; see --unknown-accept)"
    )
    multi_label: bool = Field(
        False, description="true: the model answers every class at or above its threshold (labels)"
    )
    thresholds: dict[str, float] | None = Field(
        None, description="a multi-label model's threshold per class (all the same with --threshold)"
    )
    label_separator: str | None = Field(None, description="what joins a multi-label model's labels in CSVs")
    limits: dict
    batching: dict


def errors(*codes: int) -> dict:
    """OpenAPI `responses` for these error statuses: each a JSON {"detail": ...}."""
    return {code: {"model": ErrorResponse} for code in codes}


BINARY = {"type": "string", "format": "binary"}
ONE_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": BINARY}, "required": ["file"]}
            },
            "image/*": {"schema": BINARY},
            "application/octet-stream": {"schema": BINARY},
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": BINARY, "maxItems": MAX_BATCH_FILES}},
                    "required": ["files"],
                }
            }
        },
    }
}
EXPLAIN_RESPONSE = {
    200: {
        "content": {"image/png": {}},
        "description": (
            "the Grad-CAM overlay on the model's input crop (PNG); headers X-Class and X-Probability name "
            "the class explained and its softmax probability"
        ),
        "headers": {
            "X-Class": {"schema": {"type": "string"}, "description": "the class explained"},
            "X-Probability": {"schema": {"type": "number"}, "description": "its softmax probability"},
        },
    }
}
