"""One cmd_* per subcommand: build the config or arguments, call one library function, print the result.

Each imports its library inside the function (tests/test_architecture.py allows it here), so a command loads
only what it uses and `resnetcls --help` does not load torch."""

from __future__ import annotations

import sys


def cmd_train(args) -> int:
    from ..api import train  # the Python API's train: one path for the CLI and notebooks

    train(
        args.data,
        val=args.val,
        model=args.model,
        epochs=args.epochs,
        time=args.time,
        batch_size=args.batch_size,
        image_size=args.image_size,
        lr=args.lr,
        out=args.out,
        resume=args.resume,
        force=args.force,
        config=args.config,
        set=args.overrides,
        device=args.device,
        seed=args.seed,
        pretrained=args.pretrained,
    )
    return 0


def cmd_tune(args) -> int:
    from ..api import flag_settings
    from ..config import build_config, explicit_settings
    from ..errors import UserError
    from ..tune.study import TuneSettings, run_tune

    for flag, value in (("--lr", args.lr), ("--batch-size", args.batch_size)):
        if value == "auto":
            raise UserError(f"{flag} auto: not in tune (give a number, or let the search space choose it)")
    flags = flag_settings(
        args.data,
        args.val,
        args.model,
        args.epochs,
        args.image_size,
        args.batch_size,
        args.lr,
        args.device,
        args.seed,
        args.pretrained,
    )  # train's flags; --time is the study's here
    base = build_config(args.config, args.overrides, flags)
    fixed = set(explicit_settings(args.config, args.overrides, flags).keys)
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
    from ..config import build_config
    from ..engine.lrfind import find_lr

    flags = {
        "data.train": args.data,
        "data.val": args.val,
        "model.name": args.model,
        "train.batch_size": args.batch_size,
        "data.image_size": args.image_size,
        "train.device": args.device,
        "train.seed": args.seed,
        "train.pretrained": args.pretrained,
    }
    find_lr(
        build_config(args.config, args.overrides, flags), args.out, args.steps, args.start_lr, args.end_lr
    )
    return 0


def cmd_lifelong(args) -> int:
    from ..config import build_config
    from ..lifelong.run import run_lifelong

    several = len(args.data) > 1
    flags = {
        "data.train": args.data[0] if args.data else None,
        "lifelong.datasets": args.data if several else None,
        "lifelong.tasks": args.tasks,
        "lifelong.order": args.order,
        "lifelong.bins": args.bins,
        "lifelong.strategy": args.strategy,
        "lifelong.buffer_size": args.buffer_size,
        "model.name": args.model,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "data.image_size": args.image_size,
        "optim.lr": args.lr,
        "train.device": args.device,
        "train.seed": args.seed,
    }
    run_lifelong(
        build_config(args.config, args.overrides, flags),
        args.out,
        args.resume,
        args.force,
        args.joint,
        args.stop_after,
    )
    return 0


def cmd_eval(args) -> int:
    from ..analysis.evaluate import evaluate_model

    m = evaluate_model(args.model, args.data, args.out, args.batch_size, precision=args.precision)
    print(f"{m['images']} images ({m['split']}): top1 {m['top1']:.4f}  top5 {m['top5']:.4f}")
    c = m["calibration"]
    print(
        f"balanced accuracy {m['balanced_accuracy']:.4f}  macro F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}"
        f"  (temperature {c['temperature']:.3g}; raw softmax ECE {c['ece_before']:.4f})"
    )
    print(f"metrics, tables and figures written to {m['out']}/", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    from ..inference.command import PredictOptions, run_predict

    options = PredictOptions(args.topk, args.format, args.batch_size, args.tta, args.explain)
    return run_predict(args.model, args.paths, options, args.backend, args.precision)


def cmd_rank(args) -> int:
    from ..analysis.rank import run_rank

    return run_rank(
        args.model, args.folder, args.out, args.by, args.diverse, args.limit, args.batch_size, args.precision
    )


def cmd_report(args) -> int:
    from ..analysis.report import write_report

    print(f"report written to {write_report(args.run_dir)}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from ..export.formats import ExportCheckFailed, export_model

    if args.int8 or args.calibration is not None:
        return _export_int8(args)
    try:
        result = export_model(args.model, args.format, args.out, args.check_data)
    except ExportCheckFailed as e:
        print(f"resnetcls: export check failed: {e}", file=sys.stderr)
        return 1
    print(result.parity.summary())
    print(
        f"wrote {result.path} ({result.format}, {result.bytes / 1e6:.1f} MB, exported in {result.seconds:.1f} s)"
    )
    return 0


def _export_int8(args) -> int:
    from ..errors import UserError
    from ..export.int8 import export_int8

    if not args.int8 or args.format != "onnx":
        raise UserError("--calibration/--int8: int8 export needs both --format onnx and --int8")
    result = export_int8(args.model, args.calibration, args.calibration_images, args.min_agreement, args.out)
    print(result.summary())
    print(f"wrote {result.path} (onnx int8, {result.bytes / 1e6:.1f} MB)")
    return 0


def cmd_serve(args) -> int:
    from ..serve.app import ServeSettings, serve

    serve(
        ServeSettings(
            args.model,
            args.backend,
            int(args.max_body_mb * 1e6),
            args.max_pixels,
            args.max_batch,
            args.batch_wait_ms,
            args.max_decode_mb,
            args.max_queue,
            args.max_batch_pixels,
            args.admission_wait_s,
            args.stall_s,
            args.keep_alive_s,
            args.header_timeout_s,
            args.body_timeout_s,
            args.max_connections,
            max_idle_connections=args.max_idle_connections,
            max_idle_per_client=args.max_idle_per_client,
            precision=args.precision,
        ),
        args.host,
        args.port,
        args.workers,
    )
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
            f"wrote 12 batches x {args.classes} objects x {args.per_class} images (OpenLORIS-Object layout) in "
            f"{root}; train the protocol with `resnetcls lifelong {root} --tasks batches`",
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
    "report": cmd_report,
    "data": cmd_data,
    "models": cmd_models,
    "demo": cmd_demo,
    "export": cmd_export,
    "serve": cmd_serve,
    "env": cmd_env,
}
