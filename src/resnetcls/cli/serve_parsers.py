"""The parser of `serve`, whose options are also the config's serve: section, and the help texts that the
commands using a trained model (deploy_parsers.py) share with it."""

from __future__ import annotations

from ..config import ServeConfig
from ..config.checks import BACKENDS, INFERENCE_PRECISIONS
from .flags import POSITIVE, add_config_flags, number

MODEL_HELP = "a model directory, or a run directory (its best/ model)"
PRECISION_HELP = (
    "auto: bf16 + channels_last where this CPU/GPU computes bf16 natively, else fp32 (default); "
    "fp32: bit-stable outputs on every machine; bf16: forced"
)
BACKEND_HELP = (
    "auto: the fastest verified fp path here (with a checked, current model.onnx: OpenVINO on AMX CPUs, "
    "torch where bf16 is otherwise native, else ONNX Runtime; without one, torch); torch; onnxruntime "
    "(model.onnx, fp32); openvino (model.onnx, bf16 where native unless --precision fp32); "
    "onnxruntime-int8, openvino-int8 (model.int8.onnx, see export --int8)"
)
# --open-set of predict, rank and serve (utils/openset.py's OPEN_SET_MODES; repeated so that --help
# loads no torch, as config/checks.py's BACKENDS are)
OPEN_SET_MODES = ("auto", "on", "off")
# serve's options: (name, argparse type, help). Each is also serve.NAME in the config (config/schema.py
# ServeConfig, which holds the defaults); a flag given on the command line wins over --config and --set.
SERVE_OPTIONS = (
    ("host", str, "address to listen on (0.0.0.0: every interface)"),
    ("port", number(int, 1, 65535), "port to listen on"),
    ("workers", number(int, 1, 256), "server processes, each with its own model copy"),
    ("backend", str, BACKEND_HELP),
    ("precision", str, PRECISION_HELP.replace(" (default)", "")),
    ("max_body_mb", number(float, 0, low_open=True), "larger request bodies get 413"),
    ("max_pixels", POSITIVE, "larger images get 422"),
    ("max_batch", number(int, 1, 4096), "most images per model call across requests"),
    (
        "batch_wait_ms",
        number(float, 0, 60_000),
        "how long a model call waits for more requests to join its batch",
    ),
    (
        "max_decode_mb",
        float,
        "decode memory in flight (from each image's header); beyond it 503 + Retry-After",
    ),
    ("max_queue", int, "images waiting for the model; beyond it 503"),
    ("max_batch_pixels", int, "pixels of all images in one /predict/batch request; beyond it 413"),
    ("admission_wait_s", float, "how long a decode waits for budget"),
    ("stall_s", float, "/healthz answers 503 once one model call has run longer than this"),
    ("keep_alive_s", float, "idle keep-alive connections are closed"),
    ("header_timeout_s", float, "time allowed for a request's head"),
    ("body_timeout_s", float, "time allowed for a request's body (408)"),
    (
        "max_connections",
        int,
        "requests being processed at once (body received; /healthz and /info never count), beyond it 503 "
        "+ Retry-After; idle or half-sent connections do not count",
    ),
    (
        "max_idle_connections",
        int,
        "connections idle or still sending their request; past it the one waiting longest is closed, so "
        "slow clients cannot hold the server's slots",
    ),
    (
        "max_idle_per_client",
        int,
        "the same, from one client address (behind a reverse proxy, which is one address, raise it to "
        "--max-idle-connections)",
    ),
    (
        "open_set",
        str,
        "answer \"unknown\" below the model's open-set threshold: auto | on | off, as predict's",
    ),
    (
        "unknown_accept",
        number(float, 0, 1),
        "the share of known validation images the threshold accepts, as predict's --unknown-accept "
        "(0: the model's own)",
    ),
    (
        "threshold",
        number(float, -1, 1),
        "a multi-label model's one threshold for every class, as predict's --threshold "
        "(-1: each class's own)",
    ),
)
SERVE_CHOICES = {"backend": BACKENDS, "precision": INFERENCE_PRECISIONS, "open_set": OPEN_SET_MODES}


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP service: POST /predict, /predict/batch, /explain; GET /healthz, /info, /docs",
        description="Every option is also a key of the config's serve: section (--max-batch is "
        "serve.max_batch), read from --config FILE or --set; an option given here wins over both.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    defaults = ServeConfig()
    for name, parse, text in SERVE_OPTIONS:
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=parse,
            choices=SERVE_CHOICES.get(name),
            help=f"{text} (default {getattr(defaults, name)})",
        )
    add_config_flags(p, "serve, or deploy.yaml with a serve: section")
