"""One cmd_* per subcommand: build the config or arguments, call one library function, print the result.

Each imports its library inside the function (tests/test_architecture.py allows it here), so a command loads
only what it uses and `resnetcls --help` does not load torch."""

from __future__ import annotations

import sys

from .deploy_commands import (
    cmd_add_class,
    cmd_benchmark,
    cmd_export,
    cmd_remove_class,
    cmd_serve,
)


def cmd_train(args) -> int:
    from ..api import train  # the Python API's train: one path for the CLI and notebooks
    from ..engine.distributed import world_from_env
    from .flags import table_values

    run = train(
        args.data,
        out=args.out,
        resume=args.resume,
        force=args.force,
        config=args.config,
        set=args.overrides,
        **table_values(args, "train"),
    )
    if world_from_env().is_main:  # under torchrun once, by the rank that wrote the run
        print("\n".join(train_result_lines(run.run_dir, run.summary)), flush=True)
    return 0


def train_result_lines(run_dir, summary: dict) -> list[str]:
    """What `resnetcls train` prints on stdout at the end (its progress and diagnostics go to stderr and
    RUN/train.log): the run folder, the best val top-1 and its epoch, where the best model and the report
    are."""
    lines = [f"run: {run_dir}"]
    if isinstance(summary.get("best_val_top1"), (int, float)):
        lines.append(f"best val top1: {summary['best_val_top1']:.2%} (epoch {summary.get('best_epoch')})")
    lines.append(f"model: {run_dir / 'best'}")
    report = run_dir / "report.html"
    if report.is_file():
        lines.append(f"report: {report}")
    return lines


def cmd_tune(args) -> int:
    from ..config import build_config, environment_overrides, explicit_settings
    from ..config.flags import flag_settings
    from ..tune.study import TuneSettings, run_tune
    from .flags import table_values

    # train's flags (--time is the study's here); RESNETCLS_SET's keys are fixed too, not searched
    flags = {"data.train": args.data, **flag_settings(table_values(args, "tune"), "tune")}
    environment = environment_overrides()
    base = build_config(args.config, args.overrides, flags, environment=environment)
    fixed = set(explicit_settings(args.config, args.overrides, flags, environment).keys)
    result = run_tune(
        base,
        fixed,
        TuneSettings(
            args.out,
            args.trials,
            args.time or "",
            args.storage or "",
            args.space,
            args.study_name,
            args.pruner,
            args.prune_after,
        ),
    )
    print(
        f"{result['trials']} trials ({result['complete']} complete, {result['pruned']} pruned); best trial "
        f"{result['best_trial']}; {result['best_yaml'] or 'no best.yaml'}; {result['report']}"
    )
    return 0


def cmd_lr_find(args) -> int:
    from ..config import build_config, environment_overrides
    from ..config.flags import flag_settings
    from ..engine.lrfind import find_lr
    from .flags import table_values

    flags = {"data.train": args.data, **flag_settings(table_values(args, "lr-find"), "lr-find")}
    cfg = build_config(args.config, args.overrides, flags, environment=environment_overrides())
    find_lr(cfg, args.out, args.steps, args.start_lr, args.end_lr)
    return 0


def cmd_lifelong(args) -> int:
    from ..config import build_config, environment_overrides
    from ..config.flags import flag_settings
    from ..lifelong.run import run_lifelong
    from .flags import table_values

    several = len(args.data) > 1
    flags = {
        "data.train": args.data[0] if args.data else None,
        "lifelong.datasets": args.data if several else None,
        **flag_settings(table_values(args, "lifelong"), "lifelong"),
    }
    run_lifelong(
        build_config(args.config, args.overrides, flags, environment=environment_overrides()),
        args.out,
        args.resume,
        args.force,
        args.joint,
        args.stop_after,
    )
    return 0


def cmd_eval(args) -> int:
    from ..analysis.evaluate import evaluate_model
    from ..analysis.openeval import OpenSetOptions, open_set_lines

    m = evaluate_model(
        args.model,
        args.data,
        args.out,
        args.batch_size,
        precision=args.precision,
        backend=args.backend,
        include_train=args.include_train,
        open_set=OpenSetOptions(args.unknown, args.open_set, args.unknown_accept),
    )
    if m.get("multi_label"):  # a multi-label model (analysis/multieval.py)
        return print_multilabel(m)
    kind = eval_images_kind(m["overlap"])
    print(f"{m['images']} {kind}({m['split']}): top1 {m['top1']:.4f}  top5 {m['top5']:.4f}")
    c = m["calibration"]
    print(
        f"balanced accuracy {m['balanced_accuracy']:.4f}  worst class {m['worst_class']}: recall "
        f"{m['worst_class_recall']:.4f}  macro F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}"
        f"  (temperature {c['temperature']:.3g}; raw softmax ECE {c['ece_before']:.4f})"
    )
    t = m.get("train_images")
    if t and m["overlap"]["held_out_images"]:
        print(
            f"training images ({t['images']}): top1 {t['top1']:.4f}  top5 {t['top5']:.4f}  balanced accuracy "
            f"{t['balanced_accuracy']:.4f}  macro F1 {t['macro_f1']:.4f}  ECE {t['ece']:.4f}"
        )
    for line in open_set_lines(m["open_set"]) if "open_set" in m else []:
        print(line)
    print(f"metrics, tables and figures written to {m['out']}/", file=sys.stderr)
    return 0


def print_multilabel(m: dict) -> int:
    from ..analysis.multieval import multilabel_lines

    print("\n".join(multilabel_lines(m)))
    print(f"metrics, tables and figures written to {m['out']}/", file=sys.stderr)
    return 0


def eval_images_kind(overlap: dict) -> str:
    """What eval's headline numbers are of: "held-out images " or "training images " where the run's split.csv
    says, "images " where nothing is known."""
    if overlap["training_images"] is None:
        return "images "
    return "held-out images " if overlap["held_out_images"] else "training images "


def cmd_predict(args) -> int:
    from ..inference.command import PredictOptions, run_predict

    options = PredictOptions(
        args.topk,
        args.format,
        args.batch_size,
        args.tta,
        args.explain,
        args.open_set,
        args.unknown_accept,
        args.threshold,
    )
    return run_predict(args.model, args.paths, options, args.backend, args.precision)


def cmd_rank(args) -> int:
    from ..analysis.rank import RankSettings, run_rank

    return run_rank(
        args.model,
        args.folder,
        args.out,
        RankSettings(
            args.by,
            args.diverse,
            args.limit,
            args.batch_size,
            args.precision,
            args.backend,
            args.open_set,
            args.unknown_accept,
        ),
    )


def cmd_embed(args) -> int:
    from ..inference.embed import run_embed

    return run_embed(args.model, args.paths, args.out, args.batch_size, args.precision)


def cmd_similar(args) -> int:
    from ..inference.similar import run_similar

    return run_similar(
        args.model, args.queries, args.index, args.topk, args.json, args.batch_size, args.precision
    )


def cmd_report(args) -> int:
    from ..analysis.report import write_report

    print(f"report written to {write_report(args.run_dir)}", file=sys.stderr)
    return 0


def cmd_data(args) -> int:
    if args.data_command == "check":
        from ..data.check import NearOptions, check_data

        near = NearOptions(args.near_threshold, args.suggest_split, args.val_fraction, args.seed)
        check_data(args.data, args.on_bad, args.out, args.batches, near=near)
        return 0
    from ..data.synth import synthesize, synthesize_openloris

    if args.layout == "openloris":
        root = synthesize_openloris(args.out, args.classes, args.per_class, args.image_size, args.seed)
        print(
            f"wrote 12 batches x {args.classes} objects x {args.per_class} images (OpenLORIS-Object layout) "
            f"in {root}; train the protocol with `resnetcls lifelong {root} --tasks batches`",
            file=sys.stderr,
        )
        return 0
    manifest = synthesize(args.out, args.classes, args.per_class, args.image_size, args.seed)
    print(f"wrote {args.classes} classes x {args.per_class} images and {manifest}", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from ..models import MODELS, model_info

    print(f"{'model':<10} {'params':>12} {'GMACs@' + str(args.image_size):>12}")
    for name in MODELS:
        info = model_info(name, args.image_size)
        print(f"{name:<10} {info.params:>12,} {info.macs / 1e9:>12.2f}")
    return 0


def cmd_env(args) -> int:
    from ..records.envinfo import run_env

    sys.stdout.write(run_env(args.format))
    return 0


def cmd_weights(args) -> int:
    from ..models.weights import cache_table, fetch_weights

    if args.weights_command != "download":
        sys.stdout.write(cache_table())
        return 0
    for arch, path, how in fetch_weights(args.arch, args.source, args.timeout):
        print(f"{arch}: {how}: {path}")
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo

    run_demo(args.out)
    return 0


COMMANDS = {
    "train": cmd_train,
    "tune": cmd_tune,
    "lr-find": cmd_lr_find,
    "lifelong": cmd_lifelong,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "rank": cmd_rank,
    "embed": cmd_embed,
    "similar": cmd_similar,
    "report": cmd_report,
    "data": cmd_data,
    "models": cmd_models,
    "demo": cmd_demo,
    "export": cmd_export,
    "benchmark": cmd_benchmark,
    "serve": cmd_serve,
    "add-class": cmd_add_class,
    "remove-class": cmd_remove_class,
    "env": cmd_env,
    "weights": cmd_weights,
}
