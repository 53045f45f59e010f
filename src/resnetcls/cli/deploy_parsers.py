"""The parsers of the commands that use a trained model: eval, predict and rank (one --backend, --precision
and --batch-size vocabulary), embed and similar (the model's features), export, benchmark, serve
(serve_parsers.py), add-class and remove-class."""

from __future__ import annotations

import argparse

from ..config.checks import BACKENDS, INFERENCE_PRECISIONS
from .flags import BATCH, POSITIVE, number
from .serve_parsers import BACKEND_HELP, MODEL_HELP, OPEN_SET_MODES, PRECISION_HELP, add_serve

INFERENCE_BATCH = 32  # --batch-size of eval, predict and rank
EXPORT_FORMATS = ("onnx", "torchscript")


def add_model_flags(p: argparse.ArgumentParser, batch_help: str = "images per model call") -> None:
    """--batch-size, --backend and --precision: the same names, choices and defaults on eval, predict and
    rank."""
    p.add_argument("--batch-size", type=BATCH, default=INFERENCE_BATCH, help=batch_help)
    p.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto", help=PRECISION_HELP)


def add_open_set_flags(p: argparse.ArgumentParser) -> None:
    """--open-set and --unknown-accept (eval, predict and rank): whether an image below the model's open-set
    threshold is answered "unknown", and where that threshold lies."""
    p.add_argument(
        "--open-set",
        choices=OPEN_SET_MODES,
        default="auto",
        help='answer "unknown" for images below the model\'s open-set threshold (objects of none of its '
        "classes): auto: when the model has one (default); on: required (exit 2 for a model without one); "
        "off: never",
    )
    p.add_argument(
        "--unknown-accept",
        type=number(float, 0, 1, low_open=True),
        default=None,
        metavar="SHARE",
        help="move the threshold so that this share of the model's known validation images is accepted, "
        "e.g. 0.99 answers unknown less often, 0.8 more often (default: the model's own, usually 0.95)",
    )


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model on DATA")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "data",
        metavar="DATA",
        help="the images to evaluate on: its test split, else its val split, else all of it",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where metrics, tables and figures go (default MODEL's run directory's eval/, else MODEL/eval)",
    )
    p.add_argument(
        "--include-train",
        action="store_true",
        help="also score the images of DATA the model was trained on (by its run's split.csv; left out by "
        "default), their numbers apart from the held-out images'",
    )
    p.add_argument(
        "--unknown",
        metavar="FOLDER",
        default=None,
        help="images of objects that are none of the model's classes (a folder, searched recursively): also "
        "report how well the open-set score tells them from DATA's (AUROC, FPR at 95%% TPR, shares "
        "rejected); a model without an open-set record is scored by its largest softmax probability",
    )
    add_open_set_flags(p)
    add_model_flags(p)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes for images")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "paths",
        metavar="PATH",
        nargs="+",
        help="image files, folders (recursive), quoted globs or CSV files listing paths",
    )
    p.add_argument("--topk", type=POSITIVE, default=5, help="classes listed per image")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    add_model_flags(p)
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    add_open_set_flags(p)
    p.add_argument(
        "--threshold",
        type=number(float, 0, 1),
        default=None,
        metavar="P",
        help="a multi-label model answers every class whose probability reaches this (default: each "
        "class's own threshold, fitted on the validation images); refused for a single-label model",
    )
    p.add_argument(
        "--explain",
        metavar="OUT_DIR",
        default=None,
        help="also write a Grad-CAM overlay of each image's top-1 class to "
        "OUT_DIR/<name>-<path hash>.gradcam.png as it goes and list it in the output (on the "
        "eager model in fp32, whatever the backend); an overlay that cannot be written is a "
        "warning, its prediction is still printed, and the exit code is 2 (default: no overlays)",
    )


def _add_rank(sub) -> None:
    p = sub.add_parser("rank", help="order unlabelled images by the model's uncertainty: what to label next")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("folder", metavar="FOLDER", help="unlabelled images, searched recursively")
    p.add_argument(
        "--out",
        metavar="RANK.csv",
        required=True,
        help="the CSV to write (a DATA manifest: path,label,guess,guess_prob,uncertainty; fill in label)",
    )
    p.add_argument(
        "--by",
        choices=["margin", "entropy"],
        default="margin",
        help="uncertainty score: margin = 1 - (p1 - p2), entropy = -sum p log p (default: margin)",
    )
    p.add_argument(
        "--diverse",
        action="store_true",
        help="pick spread-out images first: k-center greedy on the model's features picks --limit "
        "images (1000 without --limit, then every other image follows, most uncertain first) "
        "among the 5 x that many most uncertain (with an ONNX backend the features come from the eager "
        "model in fp32; default: off)",
    )
    p.add_argument(
        "--limit",
        type=POSITIVE,
        default=None,
        metavar="N",
        help="write only the first N images (default: all)",
    )
    add_model_flags(p)
    add_open_set_flags(p)


def _add_embed(sub) -> None:
    p = sub.add_parser(
        "embed", help="the model's features of images, for search by image similarity (resnetcls similar)"
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "paths",
        metavar="PATH",
        nargs="+",
        help="image files, folders (recursive), quoted globs or CSV files listing paths",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        required=True,
        help="emb.npy: an (N, D) float32 array of L2-normalised pooled features, with emb.csv (row, path, "
        "label, confidence) and emb.json (the model's sha256) beside it; or emb.parquet: one table with "
        "the same columns and an embedding column (needs the extra resnetcls[embed])",
    )
    add_feature_flags(p)


def _add_similar(sub) -> None:
    p = sub.add_parser("similar", help="the indexed images nearest to query images (cosine similarity)")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP + "; the one that built the index")
    p.add_argument(
        "queries",
        metavar="QUERY",
        nargs="+",
        help="query images: files, folders (recursive), quoted globs or CSV files listing paths",
    )
    p.add_argument(
        "--index",
        metavar="FILE",
        required=True,
        help="the emb.npy or emb.parquet that `resnetcls embed` wrote with MODEL",
    )
    p.add_argument("--topk", type=POSITIVE, default=10, help="matches listed per query")
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON (a list of {query, matches: [{rank, similarity, path, label, confidence, row}]}) "
        "instead of a table per query",
    )
    add_feature_flags(p)


def add_feature_flags(p: argparse.ArgumentParser) -> None:
    """--batch-size and --precision of embed and similar (features come from the eager model: no
    --backend)."""
    p.add_argument("--batch-size", type=BATCH, default=INFERENCE_BATCH, help="images per model call")
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto", help=PRECISION_HELP)


def add_inference_commands(sub) -> None:
    """eval, predict, rank, embed and similar, in that order."""
    _add_eval(sub)
    _add_predict(sub)
    _add_rank(sub)
    _add_embed(sub)
    _add_similar(sub)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export MODEL to ONNX or TorchScript, checked against eager PyTorch")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--to", choices=EXPORT_FORMATS, help="the file type to write (required)")
    # The file type's earlier name, still read (with a note that it is now --to); not in --help.
    p.add_argument("--format", choices=EXPORT_FORMATS, dest="old_format", help=argparse.SUPPRESS)
    p.add_argument("--out", metavar="FILE", help="default: model.onnx / model.torchscript.pt in MODEL")
    p.add_argument(
        "--check-data",
        metavar="PATH",
        help="images (folder or file) for the parity check; default: the run's validation images (its "
        "split.csv beside MODEL), else synthetic images",
    )
    p.add_argument(
        "--input",
        choices=("float", "uint8"),
        default="float",
        help="float: float32 (N,3,S,S) preprocessed images (default); uint8: (N,S,S,3) RGB frames resized "
        "to S x S, normalised inside the graph (model.uint8in.onnx / model.uint8in.torchscript.pt)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="(with --to onnx) write model.int8.onnx: ONNX Runtime static int8, checked against fp32",
    )
    p.add_argument(
        "--calibration",
        metavar="DATA",
        default=None,
        help="--int8: images like the training data (default: the run's config.yaml training data)",
    )
    p.add_argument(
        "--calibration-images", type=POSITIVE, default=256, help="--int8: training images calibrated on"
    )
    p.add_argument(
        "--min-agreement",
        type=number(float, 0, 1),
        default=0.99,
        help="--int8: refuse (exit 2) when top-1 agrees with fp32 on fewer validation images",
    )


# benchmark's backends (export/bench_backends.py's BACKENDS; repeated so that --help loads no torch)
BENCHMARK_BACKENDS = (
    "torch-fp32, torch-bf16, onnxruntime-fp32, onnxruntime-int8, openvino-fp32, openvino-bf16, "
    "openvino-int8, torchscript"
)


def _add_benchmark(sub) -> None:
    p = sub.add_parser(
        "benchmark",
        help="every backend this machine runs, side by side: file size, top-1, agreement with torch fp32, "
        "latency and throughput, each checked against torch fp32 first",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        help="labelled images of the model's classes (its test split, else val, else all of it); default: "
        "the run's validation split (its split.csv beside MODEL)",
    )
    p.add_argument("--backends", metavar="A,B,...", help=f"which ones (default all: {BENCHMARK_BACKENDS})")
    p.add_argument(
        "--images", type=POSITIVE, default=200, help="at most this many DATA images for top-1 and agreement"
    )
    p.add_argument("--runs", type=POSITIVE, default=50, help="timed batch-1 passes per backend")
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the torch backends run"
    )
    p.add_argument(
        "--threads",
        type=number(int, 0, 4096),
        default=0,
        help="CPU threads of every backend (0: every usable core)",
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="what is printed")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")


def _add_class_edits(sub) -> None:
    p = sub.add_parser(
        "add-class",
        help="teach MODEL a new class from a few photos in seconds, without retraining (a new model "
        "directory)",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("name", metavar="NAME", help="the new class's name")
    p.add_argument(
        "photos",
        metavar="PHOTOS",
        nargs="+",
        help="photos of it: image files, folders (recursive), quoted globs or CSV files listing paths",
    )
    p.add_argument("--out", metavar="NEW_MODEL", required=True, help="the model directory to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the head's tuning (same seed, same model)")
    p.add_argument(
        "--steps",
        type=number(int, 0, 100_000),
        default=100,  # addclass.DEFAULT_STEPS (not imported: the parsers load no torch)
        help="Adam steps tuning the head after imprinting",
    )
    p.add_argument("--force", action="store_true", help="replace --out when it exists and is not empty")
    p = sub.add_parser("remove-class", help="a copy of MODEL without one of its classes")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("name", metavar="NAME", help="the class to remove")
    p.add_argument("--out", metavar="NEW_MODEL", required=True, help="the model directory to write")
    p.add_argument("--force", action="store_true", help="replace --out when it exists and is not empty")


def add_deploy_commands(sub) -> None:
    """export, benchmark, serve, add-class and remove-class, in that order."""
    _add_export(sub)
    _add_benchmark(sub)
    add_serve(sub)
    _add_class_edits(sub)
