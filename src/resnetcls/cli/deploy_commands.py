"""The cmd_* of the commands that ship a trained model: export, benchmark, serve, add-class and remove-class
(their parsers: deploy_parsers.py and serve_parsers.py). As in commands.py, each imports its library inside
the function, so `resnetcls --help` does not load torch."""

from __future__ import annotations

import dataclasses
import sys
import time


def export_format(args) -> str:
    """export's file type: --to, or the same flag's earlier name --format (with a one-line note)."""
    from ..errors import UserError

    if args.old_format is not None:
        print(
            f"export --format is now --to; read as --to {args.old_format} (write --to {args.old_format})",
            file=sys.stderr,
        )
        if args.to is not None and args.to != args.old_format:
            raise UserError(f"--to {args.to} and --format {args.old_format}: give one file type, as --to")
    if (args.to or args.old_format) is None:
        raise UserError("export: say which file to write with --to onnx or --to torchscript")
    return args.to or args.old_format


def cmd_export(args) -> int:
    from ..export.formats import ExportCheckFailed

    to = export_format(args)
    if args.int8 or args.calibration is not None:
        return _export_int8(args, to)
    try:
        result = _export_fp32(args, to)
    except ExportCheckFailed as e:
        print(f"resnetcls: export check failed: {e}", file=sys.stderr)
        return 1
    print(result.parity.summary())
    print(
        f"wrote {result.path} ({result.format}, {result.bytes / 1e6:.1f} MB, exported in "
        f"{result.seconds:.1f} s)"
    )
    return 0


def cmd_benchmark(args) -> int:
    from ..export.benchmark import report_output, run_benchmark

    report = run_benchmark(
        args.model, args.data, args.backends, args.images, args.runs, args.device, args.threads
    )
    print(report_output(report, args.format, args.json))
    return 0


def _export_fp32(args, to: str):
    """export_model, or with --input uint8 the file that takes camera frames (export/rawinput.py)."""
    if args.input == "uint8":
        from ..export.rawinput import export_frame_model

        return export_frame_model(args.model, to, args.out, args.check_data)
    from ..export.formats import export_model

    return export_model(args.model, to, args.out, args.check_data)


def _export_int8(args, to: str) -> int:
    from ..errors import UserError
    from ..export.int8 import export_int8

    if not args.int8 or to != "onnx":
        raise UserError("--calibration/--int8: int8 export needs both --to onnx and --int8")
    if args.input != "float":
        raise UserError(
            "--input uint8: not with --int8 (the int8 file takes float32 input); drop one of them"
        )
    result = export_int8(args.model, args.calibration, args.calibration_images, args.min_agreement, args.out)
    print(result.summary())
    print(f"wrote {result.path} (onnx int8, {result.bytes / 1e6:.1f} MB)")
    return 0


def cmd_add_class(args) -> int:
    from ..api import add_class

    start = time.perf_counter()
    out = add_class(
        args.model, args.name, args.photos, args.out, seed=args.seed, steps=args.steps, force=args.force
    )
    print(edited_line(out, time.perf_counter() - start))
    return 0


def cmd_remove_class(args) -> int:
    from ..api import remove_class

    start = time.perf_counter()
    out = remove_class(args.model, args.name, args.out, force=args.force)
    print(edited_line(out, time.perf_counter() - start))
    return 0


def edited_line(model_dir, seconds: float) -> str:
    """add-class's and remove-class's one line on stdout: the new model directory, its classes, the time."""
    from ..records.modelfile import read_meta

    return f"wrote {model_dir} ({len(read_meta(model_dir)['classes'])} classes) in {seconds:.1f} s"


def serve_settings(args):
    """serve's ServeSettings, host, port and workers: the config's serve: section (defaults <- --config FILE
    <- --set serve.KEY=VALUE) with every option given on the command line on top, and RESNETCLS_SET over
    them."""

    from ..config import build_config, environment_overrides
    from ..serve.schema import ServeSettings
    from .serve_parsers import SERVE_OPTIONS

    flags = {f"serve.{name}": getattr(args, name) for name, _, _ in SERVE_OPTIONS}
    cfg = build_config(args.config, args.overrides, flags, environment=environment_overrides())
    values = dataclasses.asdict(cfg.serve)
    host, port, workers = values.pop("host"), values.pop("port"), values.pop("workers")
    values["max_body_bytes"] = int(values.pop("max_body_mb") * 1e6)
    values["unknown_accept"] = values["unknown_accept"] or None  # 0: the model's own share
    values["threshold"] = None if values["threshold"] == -1 else values["threshold"]  # -1: each class's own
    return ServeSettings(args.model, **values), host, port, workers


def cmd_serve(args) -> int:
    from ..serve.app import serve

    settings, host, port, workers = serve_settings(args)
    serve(settings, host, port, workers)
    return 0
