"""The argument parsers of every subcommand, with the argparse types that check numbers and durations."""

from __future__ import annotations

import argparse
import math
import os

from .. import __version__

MODEL_HELP = "a model directory, or a run directory (its best/ model)"
PRECISION_HELP = (
    "auto: bf16 + channels_last where this CPU/GPU computes bf16 natively, else fp32 (default); "
    "fp32: bit-stable outputs on every machine; bf16: forced"
)


def number(kind=int, low: float = 1, high: float = math.inf, low_open: bool = False):
    """An argparse type: a finite `kind` within [low, high] ((low, high] with low_open); argparse then exits 2
    naming the flag, e.g. "argument --topk: must be at least 1, got -1"."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            bound = (
                f"between {low:g} and {high:g}"
                if high < math.inf
                else f"greater than {low:g}"
                if low_open
                else f"at least {low:g}"
            )
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def duration(text: str) -> str:
    """An argparse type for --time: '90s', '20m', '1.5h' or 0 (off), kept as typed (config.parse_duration)."""
    from ..config import parse_duration

    try:
        parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, got {text!r}") from None
    return text


SIZE = number(int, 8, 4096)  # image sides (limits.MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
POSITIVE = number(int, 1)
SEED = number(int, 0, 2**32 - 1)
LR = number(float, 0, 10, low_open=True)
SWEEP_LR = number(float, 0, 1e6, low_open=True)


def lr_or_auto(text: str):
    """--lr: a rate in (0, 10], or 'auto' (train: the LR range test picks it, engine/lrfind.py)."""
    return "auto" if text == "auto" else LR(text)


lr_or_auto.__name__ = "lr"


def batch_or_auto(text: str):
    """--batch-size: a count, or 'auto' (train: the fastest per image on a CPU, the largest that fits on a
    GPU, engine/autobatch.py)."""
    return "auto" if text == "auto" else POSITIVE(text)


batch_or_auto.__name__ = "batch_size"


# Help for the recipe flags lr-find and lifelong share with train (their defaults are the config's).
SHARED_HELP = {
    "--model": "resnet18|34|50|101|152 (default model.name, resnet50)",
    "--epochs": "epochs per task (default train.epochs, 10)",
    "--batch-size": "batch size (default train.batch_size, 32)",
    "--image-size": "training input size in px (default data.image_size, 224)",
    "--lr": "learning rate (default optim.lr, 0.002)",
    "--device": "auto|cpu|cuda|cuda:N (default auto: the GPU when there is one)",
    "--seed": "seed of the split, the order and the augmentation (default train.seed, 0)",
    "--pretrained": "initial weights, as for train (default: none, from scratch)",
    "--set": "override a config key, e.g. --set optim.lr=0.01 (repeatable; default: none)",
}


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """The recipe flags of train, shared with tune (where they fix what is not searched)."""
    p.add_argument("--val", metavar="DATA", help="separate validation DATA")
    p.add_argument("--model", help="resnet18|34|50|101|152 (default: the auto recipe's pick, else resnet50)")
    p.add_argument(
        "--epochs",
        type=POSITIVE,
        help="training epochs (default: the auto recipe's pick, capped at 30 min on a CPU, 4 h on a GPU; "
        "else 10)",
    )
    p.add_argument(
        "--batch-size",
        type=batch_or_auto,
        metavar="B|auto",
        help="batch size (default train.batch_size, 32), or auto: on a CPU the most images/s among 16, 32, "
        "64, 128 (a few timed steps each); on a CUDA GPU the largest that fits its memory (tried "
        "with real steps, 90%% of it, a multiple of 8), with train.grad_accum_steps raised to "
        "keep the recipe's batch where memory is short; config.yaml records the choice",
    )
    p.add_argument(
        "--image-size",
        type=SIZE,
        help="training input size in px (default: the auto recipe's pick, else 224)",
    )
    p.add_argument(
        "--lr",
        type=lr_or_auto,
        metavar="LR|auto",
        help="learning rate, or auto: a short LR range test (see lr-find) picks it first and leaves "
        "its curve (lr_find.json/.csv/.png) in the run and its report",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML recipe, e.g. configs/small-data.yaml or configs/default.yaml (no auto recipe then)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a config key, e.g. --set optim.lr=0.01 (repeatable)",
    )
    p.add_argument("--device", help=SHARED_HELP["--device"])
    p.add_argument("--seed", type=SEED, help=SHARED_HELP["--seed"])
    p.add_argument(
        "--pretrained",
        metavar="PATH",
        help="initial weights: a torchvision/timm ResNet state_dict "
        "(.safetensors, or .pth read with weights_only=True), or 'torchvision' to download them",
    )


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a ResNet on DATA",
        description="With none of --config, --model, --epochs, --image-size, --batch-size, --lr, "
        "--pretrained or a --set of a recipe key, the auto recipe picks model, width, "
        "image size, augmentation and epochs from DATA and this machine's measured "
        "speed, prints why and records it in config.yaml (off: --set "
        "train.auto_recipe=false).",
    )
    p.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        help="class folders, train/val folders or a CSV manifest (optional with --resume)",
    )
    add_train_flags(p)
    p.add_argument(
        "--time",
        type=duration,
        metavar="DURATION",
        help="fit the whole schedule to this wall-clock time, e.g. 90s, 20m, 1.5h: a short measurement "
        "at the start chooses --epochs (train.time_budget; 0 = off)",
    )
    p.add_argument(
        "--out",
        default="runs/latest",
        metavar="RUN_DIR",
        help="the run directory: checkpoints, logs, best/ and final/ models (default runs/latest)",
    )
    p.add_argument(
        "--resume",
        metavar="auto|RUN_DIR",
        help="continue from the newest complete checkpoint of --out (auto) or of RUN_DIR (default: a new "
        "run)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="resume even if settings that change the result (model, data, batch size) differ",
    )


def _add_tune(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="search hyperparameters with Optuna (TPE + pruning); every trial a run",
        description="Each trial trains DIR/trials/NNNN with a point of the search space; train's "
        "flags fix what is not searched (no auto recipe: the rest are the config's "
        "defaults, e.g. 10 epochs). The same command continues the study.",
    )
    p.add_argument("data", metavar="DATA", help="the training DATA, as for train")
    p.add_argument(
        "--out",
        default="runs/tune",
        metavar="DIR",
        help="trials/, study.db, best.yaml and report.html go here (default runs/tune)",
    )
    p.add_argument(
        "--trials", type=POSITIVE, default=20, help="finished trials the study should have (default 20)"
    )
    p.add_argument(
        "--time",
        type=duration,
        metavar="DURATION",
        help="start no new trial after this wall-clock time, e.g. 1h (default: no limit)",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage URL, e.g. postgresql+psycopg://user:pw@host/db "
        "shared by workers on many machines (default sqlite:///DIR/study.db)",
    )
    p.add_argument("--study-name", default="resnetcls", metavar="NAME", help="the study in the storage")
    p.add_argument(
        "--space",
        metavar="SPACE.yaml",
        help="search space: config key -> {type: float|int|categorical, "
        "low, high, log, step, choices} (default: lr, weight decay, label smoothing, crop scale, image "
        "size, model)",
    )
    p.add_argument(
        "--pruner",
        choices=["median", "none"],
        default="median",
        help="median: stop a trial whose epoch's val metric is worse than the median of earlier trials",
    )
    p.add_argument(
        "--prune-after",
        type=number(int, 0),
        default=5,
        metavar="TRIALS",
        help="the median pruner prunes only once this many trials have finished (default 5)",
    )
    add_train_flags(p)


def _add_lr_find(sub) -> None:
    p = sub.add_parser(
        "lr-find",
        help="LR range test: sweep the learning rate with train's recipe, plot the "
        "loss and suggest a rate (the weights are not kept)",
    )
    p.add_argument("data", metavar="DATA", help="the training DATA, as for train")
    p.add_argument(
        "--val", metavar="DATA", help="separate validation DATA (kept out of the sweep, as in train)"
    )
    for flag, kind in (
        ("--model", str),
        ("--batch-size", POSITIVE),
        ("--image-size", SIZE),
        ("--device", str),
        ("--seed", SEED),
        ("--pretrained", str),
    ):
        p.add_argument(flag, type=kind, help=SHARED_HELP[flag])
    p.add_argument("--config", metavar="FILE", help="YAML recipe, e.g. configs/default.yaml (default: none)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides", help=SHARED_HELP["--set"]
    )
    p.add_argument(
        "--out",
        default="runs/lr-find",
        metavar="DIR",
        help="lr_find.png, .json and .csv go here (default runs/lr-find)",
    )
    p.add_argument(
        "--steps",
        type=number(int, 5, 100_000),
        default=100,
        help="optimizer steps in the sweep (default 100)",
    )
    p.add_argument("--start-lr", type=SWEEP_LR, default=1e-7, help="the sweep's first rate (default 1e-7)")
    p.add_argument(
        "--end-lr",
        type=SWEEP_LR,
        default=10.0,
        help="the sweep's last rate, unless the loss diverges first (default 10)",
    )


def _add_lifelong(sub) -> None:
    p = sub.add_parser("lifelong", help="train over a sequence of tasks; measure forgetting and transfer")
    p.add_argument(
        "data",
        metavar="DATA",
        nargs="*",
        help="a CSV manifest or OpenLORIS folder cut into tasks by --tasks, or one DATA per task",
    )
    p.add_argument(
        "--tasks",
        metavar="COLUMN|batches",
        help="CSV column whose values are the tasks, or 'batches' for OpenLORIS batchK folders",
    )
    p.add_argument(
        "--order",
        metavar="V1,V2,...",
        help="task values in training order; 'a-b' is a numeric range, e.g. 0-115,120-235,240-355",
    )
    p.add_argument("--bins", type=POSITIVE, metavar="N", help="cut a numeric --tasks column into N ranges")
    p.add_argument(
        "--strategy",
        choices=["naive", "replay", "derpp", "ewc", "lwf", "joint"],
        help="how to fight forgetting (default lifelong.strategy, naive: plain fine-tuning)",
    )
    p.add_argument(
        "--buffer-size", type=number(int, 0), metavar="IMAGES", help="replay buffer size (default 200)"
    )
    p.add_argument("--joint", metavar="RUN_DIR", help="a --strategy joint run, for the gap to joint")
    p.add_argument(
        "--stop-after",
        type=number(int, 0),
        default=0,
        metavar="N",
        help="train at most N tasks in this invocation (continue later with --resume auto)",
    )
    for flag, kind in (
        ("--model", str),
        ("--epochs", POSITIVE),
        ("--batch-size", POSITIVE),
        ("--image-size", SIZE),
        ("--lr", LR),
        ("--device", str),
        ("--seed", SEED),
    ):
        p.add_argument(flag, type=kind, help=SHARED_HELP[flag])
    p.add_argument(
        "--out",
        default="runs/lifelong",
        metavar="RUN_DIR",
        help="the run directory: a model and checkpoint per task, the R matrix (default runs/lifelong)",
    )
    p.add_argument("--resume", metavar="auto|RUN_DIR", help="continue at the task after the last checkpoint")
    p.add_argument("--force", action="store_true", help="resume even if result-affecting settings differ")
    p.add_argument(
        "--config", metavar="FILE", help="YAML recipe, e.g. configs/lifelong-synth.yaml (default: none)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides", help=SHARED_HELP["--set"]
    )


# predict.BACKENDS (not imported: `resnetcls --help` must not load torch; tests/cli checks they agree)
BACKENDS = ["auto", "torch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8"]
BACKEND_HELP = (
    "auto: the fastest verified fp path here (with a checked, current model.onnx: OpenVINO on AMX CPUs, "
    "torch where bf16 is otherwise native, else ONNX Runtime; without one, torch); torch; onnxruntime "
    "(model.onnx, fp32); openvino (model.onnx, bf16 where native unless --precision fp32); "
    "onnxruntime-int8, openvino-int8 (model.int8.onnx, see export --int8)"
)


def _add_deploy(sub) -> None:
    p = sub.add_parser("export", help="export MODEL to ONNX or TorchScript, checked against eager PyTorch")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "--format", choices=["onnx", "torchscript"], required=True, help="the file format (required)"
    )
    p.add_argument("--out", metavar="FILE", help="default: model.onnx / model.torchscript.pt in MODEL")
    p.add_argument(
        "--check-data",
        metavar="PATH",
        help="images (folder or file) for the parity check; default: synthetic images",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="(with --format onnx) write model.int8.onnx: ONNX Runtime static int8, checked against fp32",
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

    p = sub.add_parser(
        "serve", help="HTTP service: POST /predict, /predict/batch, /explain; GET /healthz, /info, /docs"
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=number(int, 1, 65535), default=8000, help="port to listen on")
    p.add_argument(
        "--workers",
        type=number(int, 1, 256),
        default=1,
        help="server processes, each with its own model copy",
    )
    p.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help=PRECISION_HELP)
    p.add_argument(
        "--max-body-mb",
        type=number(float, 0, low_open=True),
        default=20.0,
        help="larger request bodies get 413",
    )
    p.add_argument("--max-pixels", type=POSITIVE, default=40_000_000, help="larger images get 422")
    p.add_argument(
        "--max-batch",
        type=number(int, 1, 4096),
        default=32,
        help="most images per model call across requests",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=number(float, 0, 60_000),
        default=0.0,
        help="how long a model call waits for more requests to join its batch",
    )
    p.add_argument(
        "--max-decode-mb",
        type=float,
        default=1024.0,
        help="decode memory in flight (from each image's header); beyond it 503 + Retry-After",
    )
    p.add_argument("--max-queue", type=int, default=256, help="images waiting for the model; beyond it 503")
    p.add_argument(
        "--max-batch-pixels",
        type=int,
        default=100_000_000,
        help="pixels of all images in one /predict/batch request; beyond it 413",
    )
    p.add_argument("--admission-wait-s", type=float, default=2.0, help="how long a decode waits for budget")
    p.add_argument(
        "--stall-s",
        type=float,
        default=30.0,
        help="/healthz answers 503 once one model call has run longer than this",
    )
    p.add_argument("--keep-alive-s", type=float, default=5.0, help="idle keep-alive connections are closed")
    p.add_argument("--header-timeout-s", type=float, default=10.0, help="time allowed for a request's head")
    p.add_argument(
        "--body-timeout-s", type=float, default=30.0, help="time allowed for a request's body (408)"
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=64,
        help="requests being processed at once (body received; /healthz and /info never count), beyond "
        "it 503 + Retry-After; idle or half-sent connections do not count",
    )
    p.add_argument(
        "--max-idle-connections",
        type=int,
        default=64,
        help="connections idle or still sending their request; past it the one waiting longest is "
        "closed, so slow clients cannot hold the server's slots",
    )
    p.add_argument(
        "--max-idle-per-client",
        type=int,
        default=16,
        help="the same, from one client address (behind a reverse proxy, which is one address, raise "
        "it to --max-idle-connections)",
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
        "among the 5 x that many most uncertain (default: off)",
    )
    p.add_argument(
        "--limit",
        type=POSITIVE,
        default=None,
        metavar="N",
        help="write only the first N images (default: all)",
    )
    p.add_argument(
        "--batch-size", type=number(int, 1, 1 << 16), default=32, help="images per model call (default 32)"
    )
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help=PRECISION_HELP)


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write the procedural demo data set")
    p.add_argument("out", metavar="OUT_DIR", help="where the images and manifest.csv go")
    p.add_argument("--classes", type=number(int, 2, 10_000), default=10, help="number of classes")
    p.add_argument("--per-class", type=number(int, 3, 1_000_000), default=100, help="images per class")
    p.add_argument("--image-size", type=number(int, 16, 4096), default=64, help="image side in px")
    p.add_argument("--seed", type=SEED, default=0, help="the generator's seed")
    p.add_argument(
        "--layout",
        choices=["manifest", "openloris"],
        default="manifest",
        help="manifest: OUT/<class>/ + manifest.csv, random factor levels; openloris: the OpenLORIS-"
        "Object challenge folders, 12 batches of one factor at one level (default manifest)",
    )

    p = data.add_parser("check", help="decode every image once and report problems")
    p.add_argument("data", metavar="DATA", help="the DATA to check, in any form train takes")
    p.add_argument(
        "--on-bad",
        choices=["skip", "fail"],
        default="skip",
        help="fail: exit 2 when any image is bad (default: report only)",
    )
    p.add_argument("--out", metavar="REPORT.json", help="write the full report as JSON")
    p.add_argument("--batches", default="", metavar="1,2,...", help="OpenLORIS layout: batches to check")
    p.add_argument(
        "--near-threshold",
        type=number(int, 0, 16),
        default=None,
        metavar="BITS",
        help="near-duplicates: layout hashes (64 bits) differing in at most BITS bits (default: 8, "
        "tightened as the data grows to keep chance matches below 1%% of images)",
    )
    p.add_argument(
        "--suggest-split",
        metavar="OUT.csv",
        help="write a split.csv (train/val, stratified by class) in which no near-duplicate group "
        "crosses train and val; test rows stay test; train on it with `resnetcls train OUT.csv`",
    )
    p.add_argument(
        "--val-fraction",
        type=number(float, 0, 1, low_open=True),
        default=0.1,
        help="--suggest-split: share of each class held out as val (default 0.1)",
    )
    p.add_argument("--seed", type=SEED, default=0, help="--suggest-split: seed of the hold-out (default 0)")


def _add_commands(sub) -> None:
    _add_train(sub)
    _add_tune(sub)
    _add_lr_find(sub)
    _add_lifelong(sub)
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
    p.add_argument("--batch-size", type=number(int, 1, 1 << 16), default=64, help="images per model call")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help=PRECISION_HELP)

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
    p.add_argument("--batch-size", type=number(int, 1, 1 << 16), default=32, help="images per model call")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help=PRECISION_HELP)
    p.add_argument(
        "--explain",
        metavar="OUT_DIR",
        default=None,
        help="also write a Grad-CAM overlay of each image's top-1 class to "
        "OUT_DIR/<name>-<path hash>.gradcam.png as it goes and list it in the output (on the "
        "eager model in fp32, whatever the backend); an overlay that cannot be written is a "
        "warning, its prediction is still printed, and the exit code is 2 (default: no overlays)",
    )
    _add_rank(sub)

    p = sub.add_parser("report", help="write RUN_DIR/report.html (curves, eval figures, config)")
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a train or lifelong run directory, or an lr-find folder"
    )

    _add_deploy(sub)
    _add_data(sub)

    p = sub.add_parser("models", help="list architectures with parameters and GMACs")
    p.add_argument("--image-size", type=SIZE, default=224, help="input size for the MACs column")

    p = sub.add_parser(
        "env",
        help="versions, CPU/GPU facts and the precision train and predict would pick "
        "(paste it into a bug report)",
    )
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format")

    p = sub.add_parser("demo", help="synthesise data, train, evaluate and predict end to end")
    p.add_argument("--out", default="demo-run", metavar="DIR", help="where the data, run and predictions go")


def with_defaults(parser: argparse.ArgumentParser) -> None:
    """Append "(default X)" to every option's help that has a default and does not state it already, in this
    parser and its subcommands, so no help line leaves its default unsaid (tests/cli/test_parsers.py)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                with_defaults(sub)
        elif (
            action.option_strings
            and action.help
            and action.default not in (None, False, [], "", argparse.SUPPRESS)
            and "default" not in action.help
        ):
            action.help += " (default %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnetcls", description="Train, evaluate and use ResNet classifiers."
    )
    parser.add_argument("--version", action="version", version=f"resnetcls {__version__}")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars, even on a terminal (as RESNETCLS_QUIET=1; bars are off anyway when "
        "stderr is not a terminal, CI=true or TERM=dumb)",
    )
    _add_commands(parser.add_subparsers(dest="command", required=True))
    with_defaults(parser)
    return parser


def command_synopsis(width: int = 116) -> str:
    """One usage block per subcommand (argparse's own usage, without "usage: " and -h), as README's "Commands"
    lists them; tests/cli/test_parsers.py checks that the README shows exactly this."""
    blocks, columns = [], os.environ.get("COLUMNS")

    def collect(parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            usage = parser.format_usage().removeprefix("usage: ").replace(" [-h]", "").rstrip()
            blocks.append(usage)
        for action in subs:
            for sub in action.choices.values():
                collect(sub)

    os.environ["COLUMNS"] = str(width)  # argparse wraps usage at $COLUMNS: the same block on every terminal
    try:
        collect(build_parser())
    finally:
        os.environ.pop("COLUMNS") if columns is None else os.environ.update(COLUMNS=columns)
    return "\n".join(blocks) + "\n"
