"""CPU inference throughput of ResNet-50 at 224 px: torchvision fp32 eager (baseline) against resnetcls's paths.

Every row runs in this one process on the same random input; images/s come from the median time of one
forward pass, p50/p99 are the latency of a single image (batch 1). The "max|dp|" column is the largest
difference of softmax probabilities from resnetcls eager fp32 on the same 32 images, and "top1" how many of
them keep the same top-1 class (the export parity rule is max|dp| <= 1e-4 and 32/32 for fp32 paths).

    python bench/inference.py            # full: 100 x batch 1, 10 x batch 32 per row, plus torch.compile
    python bench/inference.py --quick    # a smoke run of about two minutes
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from resnetcls.data.transforms import make_preprocess  # noqa: E402
from resnetcls.onnx_runtime import onnx_bytes, onnx_probabilities, onnx_session  # noqa: E402
from resnetcls.envinfo import machine_line  # noqa: E402
from resnetcls.modelfile import load_model_dir, save_model_dir  # noqa: E402
from resnetcls.models import create_model  # noqa: E402
from resnetcls.predict import Predictor  # noqa: E402


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every BN into the conv before it (inference only): one pass over memory fewer per layer."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    pairs = [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
    for module in model.modules():
        for conv, bn in pairs:
            if isinstance(getattr(module, bn, None), torch.nn.BatchNorm2d):
                setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
                setattr(module, bn, torch.nn.Identity())
        down = getattr(module, "downsample", None)
        if isinstance(down, torch.nn.Sequential) and len(down) == 2:
            module.downsample = torch.nn.Sequential(fuse_conv_bn_eval(down[0], down[1]))
    return model


def timed_interleaved(fns: list, batch: torch.Tensor, warmup: int, iters: int) -> list[list[float]]:
    """Per-pass times for each fn, taking turns pass by pass so that load from other processes on a shared
    machine falls on every row alike instead of on whichever row happened to run then."""
    times = [[] for _ in fns]
    for rep in range(warmup + iters):
        for fn, row in zip(fns, times):
            start = time.perf_counter()
            fn(batch)
            if rep >= warmup:
                row.append(time.perf_counter() - start)
    return times


def eager(model, memory_format=torch.contiguous_format, amp: bool = False):
    model = model.eval().to(memory_format=memory_format)

    @torch.inference_mode()
    def run(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            return model(x.contiguous(memory_format=memory_format)).float().softmax(1)
    return run


def torchscript_frozen(model, size: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(model.eval(), torch.randn(1, 3, size, size))
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))

    @torch.inference_mode()
    def run(x):
        return frozen(x).softmax(1)
    return run


def compiled(model):
    import torch._inductor.config as inductor
    inductor.freezing = True  # treat weights as constants: folds BN and pre-packs oneDNN convs on CPU
    fast = torch.compile(model.eval().to(memory_format=torch.channels_last))

    @torch.inference_mode()
    def run(x):
        return fast(x.contiguous(memory_format=torch.channels_last)).softmax(1)
    return run


def build_rows(model_dir: Path, size: int, with_compile: bool) -> list[tuple[str, callable]]:
    """(name, fn) pairs; every fn takes a float (N,3,S,S) batch and returns probabilities."""
    ours = lambda: load_model_dir(model_dir).model  # noqa: E731 - a fresh copy per row
    baseline = torchvision.models.resnet50(num_classes=1000)
    baseline.load_state_dict(ours().state_dict())  # same weights: our names match torchvision's
    predictor = Predictor(model_dir, device="cpu")  # resnetcls's own default settings ("auto")
    session = onnx_session(onnx_bytes(load_model_dir(model_dir)))
    rows = [
        ("torchvision fp32 eager (baseline)", eager(baseline)),
        (f"resnetcls Predictor default (amp={'bf16' if predictor.amp_dtype else 'fp32'}, channels_last)",
         predictor.probabilities),
        ("resnetcls eager fp32 channels_last", eager(ours(), torch.channels_last)),
        ("resnetcls eager fp32 channels_last, BN folded", eager(fold_batchnorm(ours()), torch.channels_last)),
        ("resnetcls eager bf16 autocast channels_last (forced)", eager(ours(), torch.channels_last, amp=True)),
        ("resnetcls TorchScript frozen+optimize_for_inference fp32", torchscript_frozen(ours(), size)),
        ("ONNX Runtime fp32 (all graph optimisations)", lambda x: onnx_probabilities(session, x)),
    ]
    if with_compile:
        rows.append(("resnetcls torch.compile (inductor, freezing) fp32 channels_last", compiled(ours())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few iterations, no torch.compile row")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="include the torch.compile row (default: in the full run only)")
    args = parser.parse_args()
    size = args.image_size
    iters1, iters32 = (8, 2) if args.quick else (100, 10)
    torch.manual_seed(0)
    print(f"machine: {machine_line()}\nResNet-50 at {size} px", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model_dir(Path(tmp) / "m", create_model("resnet50", 1000), "resnet50", {},
                                   [f"class{i}" for i in range(1000)], make_preprocess(size))
        rows = build_rows(model_dir, size, args.compile if args.compile is not None else not args.quick)
    batch32 = torch.randn(32, 3, size, size)
    first = []
    for name, fn in rows:
        start = time.perf_counter()
        first.append(fn(batch32))  # the probabilities compared, and the first warm-up (torch.compile compiles)
        print(f"  ready: {name} (first call {time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
    fns = [fn for _, fn in rows]
    b1 = timed_interleaved(fns, batch32[:1], 3, iters1)
    b32 = timed_interleaved(fns, batch32, 1, iters32)
    report([(name, probs, t1, t32) for (name, _), probs, t1, t32 in zip(rows, first, b1, b32)], iters1, iters32)


def report(results, iters1: int, iters32: int) -> None:
    reference = results[2][1]  # resnetcls eager fp32 channels_last
    base1 = 1 / statistics.median(results[0][2])
    base32 = 32 / statistics.median(results[0][3])
    print(f"\n{'path':<62} {'img/s b1':>9} {'x':>5} {'img/s b32':>10} {'x':>5} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max|dp|':>8} {'top1':>6}")
    for name, probs, b1, b32 in results:
        ips1, ips32 = 1 / statistics.median(b1), 32 / statistics.median(b32)
        lat = sorted(b1)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        diff = float((probs.float() - reference).abs().max())
        agree = int((probs.argmax(1) == reference.argmax(1)).sum())
        print(f"{name:<62} {ips1:>9.1f} {ips1 / base1:>5.2f} {ips32:>10.1f} {ips32 / base32:>5.2f} "
              f"{statistics.median(lat) * 1000:>8.1f} {p99 * 1000:>8.1f} {diff:>8.1e} {agree:>4}/32")
    print(f"\nmedians of {iters1} timed passes at batch 1 and {iters32} at batch 32, rows taking turns pass by "
          f"pass; x = ratio to the baseline row; p99 of fewer than 100 samples is their maximum.")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
