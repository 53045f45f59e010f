"""Command-line interface: argument parsing only; each subcommand calls one library function.

Exit codes: 0 success, 2 bad usage or bad input (one line, no traceback), 1 internal error, 130 interrupted.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys

from . import __version__
from .errors import UserError


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a ResNet on DATA")
    p.add_argument("data", metavar="DATA", help="class folders, train/val folders or a CSV manifest")
    p.add_argument("--val", metavar="DATA", help="separate validation DATA")
    p.add_argument("--model", help="resnet18|34|50|101|152 (default resnet50)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--out", default="runs/latest", metavar="RUN_DIR")
    p.add_argument("--config", metavar="FILE", help="YAML recipe, e.g. configs/default.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config key, e.g. --set optim.lr=0.01 (repeatable)")
    p.add_argument("--device", help="auto|cpu|cuda")
    p.add_argument("--seed", type=int)


def _add_deploy(sub) -> None:
    p = sub.add_parser("export", help="export MODEL to ONNX or TorchScript, checked against eager PyTorch")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    p.add_argument("--out", metavar="FILE", help="default: model.onnx / model.torchscript.pt in MODEL")
    p.add_argument("--check-data", metavar="PATH",
                   help="images (folder or file) for the parity check; default ../shared/data if present, "
                        "else synthetic images")

    p = sub.add_parser("serve", help="HTTP service: POST /predict, /predict/batch; GET /healthz, /info, /docs")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="larger request bodies get 413")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="larger images get 422")
    p.add_argument("--max-batch", type=int, default=32, help="most images per model call across requests")
    p.add_argument("--batch-wait-ms", type=float, default=0.0,
                   help="how long a model call waits for more requests to join its batch")


def _add_commands(sub) -> None:
    _add_train(sub)
    p = sub.add_parser("eval", help="evaluate a model on DATA")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--out", metavar="DIR")
    p.add_argument("--batch-size", type=int, default=64)

    p = sub.add_parser("predict", help="top-k classes for images")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("paths", metavar="PATH", nargs="+")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="eager PyTorch, or ONNX Runtime on the model's model.onnx (see export)")

    _add_deploy(sub)
    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write the procedural demo data set")
    p.add_argument("out", metavar="OUT_DIR")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("models", help="list architectures with parameters and GMACs")
    p.add_argument("--image-size", type=int, default=224)

    p = sub.add_parser("demo", help="synthesise data, train, evaluate and predict end to end")
    p.add_argument("--out", default="demo-run", metavar="DIR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnetcls", description="Train, evaluate and use ResNet classifiers.")
    parser.add_argument("--version", action="version", version=f"resnetcls {__version__}")
    _add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def cmd_train(args) -> int:
    from .config import build_config
    from .engine.train import train
    flags = {"data.train": args.data, "data.val": args.val, "model.name": args.model,
             "train.epochs": args.epochs, "train.batch_size": args.batch_size, "data.image_size": args.image_size,
             "optim.lr": args.lr, "train.device": args.device, "train.seed": args.seed}
    train(build_config(args.config, args.overrides, flags), args.out)
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_model
    m = evaluate_model(args.model, args.data, args.out, args.batch_size)
    print(f"{m['images']} images ({m['split']}): top1 {m['top1']:.4f}  top5 {m['top5']:.4f}")
    print(f"metrics written to {m['out']}/metrics.json", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    from .predict import Predictor
    results = Predictor(args.model, backend=args.backend).predict(args.paths, args.topk, args.batch_size)
    if args.format == "json":
        print(json.dumps([r.to_dict() for r in results], indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "rank", "class", "prob", "error"])
        for r in results:
            rows = [[r.path, k + 1, c, f"{p:.6f}", ""] for k, (c, p) in enumerate(r.top)]
            writer.writerows(rows or [[r.path, "", "", "", r.error]])
    else:
        for r in results:
            body = r.error and f"ERROR {r.error}" or "  ".join(f"{c} {p:.3f}" for c, p in r.top)
            print(f"{r.path}\t{body}")
    failed = [r for r in results if r.error]
    if failed:
        print(f"{len(failed)} of {len(results)} images could not be read", file=sys.stderr)
    return 2 if failed else 0


def cmd_export(args) -> int:
    from .export import ExportCheckFailed, export_model
    try:
        result = export_model(args.model, args.format, args.out, args.check_data)
    except ExportCheckFailed as e:
        print(f"resnetcls: export check failed: {e}", file=sys.stderr)
        return 1
    print(result.parity.summary())
    print(f"wrote {result.path} ({result.format}, {result.bytes / 1e6:.1f} MB, exported in {result.seconds:.1f} s)")
    return 0


def cmd_serve(args) -> int:
    from .serve import ServeSettings, serve
    serve(ServeSettings(args.model, args.backend, int(args.max_body_mb * 1e6), args.max_pixels, args.max_batch,
                        args.batch_wait_ms), args.host, args.port, args.workers)
    return 0


def cmd_data(args) -> int:
    from .data.synth import synthesize
    manifest = synthesize(args.out, args.classes, args.per_class, args.image_size, args.seed)
    print(f"wrote {args.classes} classes x {args.per_class} images and {manifest}", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from .models import MODELS, model_info
    print(f"{'model':<10} {'params':>12} {'GMACs@' + str(args.image_size):>12}")
    for name in MODELS:
        info = model_info(name, args.image_size)
        print(f"{name:<10} {info.params:>12,} {info.macs / 1e9:>12.2f}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(args.out)
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "data": cmd_data,
            "models": cmd_models, "demo": cmd_demo, "export": cmd_export, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"resnetcls: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnetcls: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
