"""The argument parser: the training commands (train, tune, lr-find, lifelong: their recipe flags from the one
table, cli/flags.py), report, data, models, env and demo here; eval, predict, rank, export and serve in
deploy_parsers.py."""

from __future__ import annotations

import argparse
import os

from .. import __version__
from .deploy_parsers import add_deploy_commands, add_inference_commands
from .flags import POSITIVE, SEED, SIZE, SWEEP_LR, add_config_flags, add_table_flags, duration, number

# `weights download`'s choices: the depths torchvision has ImageNet weights for (models/weights.py), and all
WEIGHT_DEPTHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "all")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a ResNet on DATA",
        description="The auto recipe keeps what you give (flags, --set, the keys of --config) "
        "and picks the rest of model, width, image size, augmentation, batch size and epochs "
        "from DATA and this machine's measured speed, fine-tuning when ImageNet weights are "
        "in the cache; it prints why and records it in config.yaml (off: --no-auto-recipe).",
    )
    p.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        help="class folders, train/val folders or a CSV manifest (optional with --resume)",
    )
    add_table_flags(p, "train")
    add_config_flags(p, "small-data or default; the auto recipe keeps its keys")
    p.add_argument(
        "--out",
        metavar="RUN_DIR",
        help="the run directory: checkpoints, train.log, best/ and final/ models (default: a new folder "
        "each run, runs/train, runs/train-2, ..., the first free name, with the symlink runs/latest "
        "pointed to it; a given RUN_DIR never moves runs/latest, and one holding a run is refused "
        "unless --resume)",
    )
    p.add_argument(
        "--resume",
        metavar="auto|latest|RUN_DIR",
        help="continue from the newest complete checkpoint of --out (auto; without --out: runs/latest's "
        "run if unfinished, else a new run), of the run runs/latest points to (latest) or of RUN_DIR "
        "(default: a new run)",
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
    add_table_flags(p, "tune")
    add_config_flags(p, "default")


def _add_lr_find(sub) -> None:
    p = sub.add_parser(
        "lr-find",
        help="LR range test: sweep the learning rate with train's recipe, plot the "
        "loss and suggest a rate (the weights are not kept)",
    )
    p.add_argument("data", metavar="DATA", help="the training DATA, as for train")
    add_table_flags(p, "lr-find")
    add_config_flags(p, "default")
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
    p.add_argument("--joint", metavar="RUN_DIR", help="a --strategy joint run, for the gap to joint")
    p.add_argument(
        "--stop-after",
        type=number(int, 0),
        default=0,
        metavar="N",
        help="train at most N tasks in this invocation (continue later with --resume auto)",
    )
    add_table_flags(p, "lifelong")
    p.add_argument(
        "--out",
        default="runs/lifelong",
        metavar="RUN_DIR",
        help="the run directory: a model and checkpoint per task, the R matrix (default runs/lifelong)",
    )
    p.add_argument("--resume", metavar="auto|RUN_DIR", help="continue at the task after the last checkpoint")
    p.add_argument("--force", action="store_true", help="resume even if result-affecting settings differ")
    add_config_flags(p, "lifelong-synth")


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


def _add_weights(sub) -> None:
    weights = sub.add_parser(
        "weights",
        help="torchvision's ImageNet weights in the torch hub cache: list (the default), download",
    ).add_subparsers(dest="weights_command")
    weights.add_parser("list", help="each depth's ImageNet file in the cache: path and size, or missing")
    p = weights.add_parser(
        "download", help="fetch a depth's ImageNet weights into the cache, checking their sha256"
    )
    p.add_argument(
        "arch",
        choices=WEIGHT_DEPTHS,
        metavar="{" + ",".join(WEIGHT_DEPTHS) + "}",
        help="the depth whose weights to fetch, or all of them",
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="FILE",
        help="install FILE (downloaded elsewhere) instead of downloading: the offline way",
    )
    p.add_argument(
        "--timeout",
        type=number(float, 0, 60, low_open=True),
        default=3.0,
        metavar="S",
        help="seconds to wait for download.pytorch.org before failing as offline",
    )


def _add_commands(sub) -> None:
    _add_train(sub)
    _add_tune(sub)
    _add_lr_find(sub)
    _add_lifelong(sub)
    add_inference_commands(sub)

    p = sub.add_parser("report", help="write RUN_DIR/report.html (curves, eval figures, config)")
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a train or lifelong run directory, or an lr-find folder"
    )

    add_deploy_commands(sub)
    _add_data(sub)

    p = sub.add_parser("models", help="list architectures with parameters and GMACs")
    p.add_argument("--image-size", type=SIZE, default=224, help="input size for the MACs column")

    p = sub.add_parser(
        "env",
        help="versions, CPU/GPU facts and the precision train and predict would pick "
        "(paste it into a bug report)",
    )
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    _add_weights(sub)

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
