"""CPU inference throughput of ResNet-50 at 224 px: torchvision fp32 eager (baseline) against resnetcls's
paths.

Every row runs in this one process on the same random input; images/s come from the median time of one forward
pass, p50/p99 are the latency of a single image (batch 1). The "max|dp|" column is the largest difference of
softmax probabilities from resnetcls eager fp32 on the same 32 images (the export parity rule is max|dp| <=
1e-4 for fp32 paths). The int8 rows run ONNX Runtime's static int8 file (resnetcls.export.int8, as `export
--int8` writes it) in ONNX Runtime and in OpenVINO, calibrated here on synthetic images. No top-1 agreement is
printed: the model has random weights and the inputs are random, so whether its top-1 survives int8 or bf16
says nothing; `resnetcls benchmark MODEL DATA` measures agreement for a trained model on its real images.

Then (a robot asking about one camera frame) the batch-1 latency of one 640x480 JPEG, decode and
preprocessing included, through the Predictor's Python API and through `resnetcls serve` over HTTP (POST
/predict, one request at a time): p50 and p99 of --repeats runs, each row's median over the runs, against
torchvision fp32 eager with torchvision's own eval transforms on the same JPEG. Rows run one after another
(each row's requests in a block, rows in turn over the repeats).

The latency table also runs the int8 Predictor rows with `loader.fast = False` (the exact decode and
preprocessing that eval uses, against the default draft decode + one crop-box resize), and prints the
decode + preprocess time alone of both paths.

--agreement MODEL_DIR FOLDER...: instead of timing, predict every image under the folders through both paths
(fast: JPEG draft decode + crop-box resize; exact: full decode + build_eval_transform) and print the top-1
agreement and the largest difference of any class probability.

    python bench/inference.py            # full: 100 x batch 1, 10 x batch 32 per row, plus torch.compile
    python bench/inference.py --agreement runs/latest/best ../shared/data/hymenoptera/val
    python bench/inference.py --quick    # a smoke run of a few minutes
    python bench/inference.py --quick --no-latency   # the throughput table only
    python bench/inference.py --preprocess-only --image-size 160   # decode + preprocess alone, no model
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from resnetcls.data.decode import DecodeError, decode_image, is_image_file  # noqa: E402
from resnetcls.data.transforms import build_eval_transform, make_preprocess  # noqa: E402
from resnetcls.export.int8 import int8_bytes  # noqa: E402
from resnetcls.inference.inputs import ImageLoader  # noqa: E402
from resnetcls.inference.predictor import Predictor  # noqa: E402
from resnetcls.inference.sessions import INT8_FILE, ONNX_FILE, onnx_bytes, onnx_probabilities, onnx_session  # noqa: E402
from resnetcls.models import create_model  # noqa: E402
from resnetcls.records.envinfo import machine_line  # noqa: E402
from resnetcls.records.modelfile import load_model_dir, record_export, save_model_dir  # noqa: E402


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


def timed_in_blocks(
    fns: list, batch: torch.Tensor, warmup: int, iters: int, rounds: int = 3
) -> list[list[float]]:
    """Per-pass times for each fn: in each of `rounds` rounds every fn runs `warmup` untimed and `iters` timed
    passes in a block. Blocks, not passes taken in turn: torch's OpenMP workers and ONNX Runtime's threads
    spin for milliseconds after a call, so a pass right after another row's took that row's spin-down on 2
    cores (interleaved, torchvision's batch-1 pass measured 83 ms instead of 48). The rounds spread slow drift
    of the machine over every row."""
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, row in zip(fns, times):
            for rep in range(warmup + iters):
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
    predictor = Predictor(
        model_dir, device="cpu"
    )  # resnetcls's own default settings ("auto"), with model.onnx
    torch_default = Predictor(model_dir, device="cpu", backend="torch")  # what auto runs without a model.onnx
    session = onnx_session(model_dir / ONNX_FILE)
    int8 = onnx_session(model_dir / INT8_FILE)
    openvino_fp32 = onnx_session(model_dir / ONNX_FILE, runtime="openvino", precision="fp32")
    openvino_int8 = onnx_session(model_dir / INT8_FILE, runtime="openvino")
    rows = [
        ("torchvision fp32 eager (baseline)", eager(baseline)),
        (
            f"resnetcls Predictor default (auto: {predictor.backend}, {predictor.precision})",
            predictor.probabilities,
        ),
        (
            f"resnetcls Predictor --backend torch ({torch_default.precision}, channels_last)",
            torch_default.probabilities,
        ),
        ("resnetcls eager fp32 channels_last", eager(ours(), torch.channels_last)),
        ("resnetcls eager fp32 channels_last, BN folded", eager(fold_batchnorm(ours()), torch.channels_last)),
        (
            "resnetcls eager bf16 autocast channels_last (forced)",
            eager(ours(), torch.channels_last, amp=True),
        ),
        ("resnetcls TorchScript frozen+optimize_for_inference fp32", torchscript_frozen(ours(), size)),
        ("ONNX Runtime fp32 (all graph optimisations)", lambda x: onnx_probabilities(session, x)),
        ("ONNX Runtime int8 static QDQ (export --int8)", lambda x: onnx_probabilities(int8, x)),
        (
            "OpenVINO fp32 (--backend openvino --precision fp32)",
            lambda x: onnx_probabilities(openvino_fp32, x),
        ),
        (
            "OpenVINO int8, the same QDQ file (--backend openvino-int8)",
            lambda x: onnx_probabilities(openvino_int8, x),
        ),
    ]
    if with_compile:
        rows.append(("resnetcls torch.compile (inductor, freezing) fp32 channels_last", compiled(ours())))
    return rows


def write_int8(model_dir: Path, calibration: int) -> None:
    """model_dir/model.int8.onnx as `export --int8` makes it, calibrated on synthetic image-like inputs."""
    loaded = load_model_dir(model_dir)
    transform = build_eval_transform(loaded.preprocess)
    images = torch.stack([transform(img) for img in synthetic_images(calibration)])
    (model_dir / INT8_FILE).write_bytes(int8_bytes(loaded, images))
    record_export(
        model_dir, INT8_FILE
    )  # as export does: predict runs only a file whose sha256 model.json records


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few iterations, no torch.compile row")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include the torch.compile row (default: in the full run only)",
    )
    parser.add_argument(
        "--latency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the one-JPEG latency through the Predictor API and serve (default: on)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="latency runs per row (median shown)")
    parser.add_argument(
        "--throughput",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the model-only throughput table (default: on)",
    )
    parser.add_argument("--agreement", nargs="+", metavar="PATH", help="MODEL_DIR FOLDER...: see above")
    parser.add_argument(
        "--preprocess-only",
        action="store_true",
        help="only the decode + preprocess table (a 640x480 frame and a 4032x3024 photo), no model",
    )
    args = parser.parse_args()
    if args.agreement:
        return agreement(Path(args.agreement[0]), [Path(f) for f in args.agreement[1:]])
    if args.preprocess_only:
        with tempfile.TemporaryDirectory() as tmp:
            frame = Path(tmp) / "frame.jpg"
            frame.write_bytes(photo_jpeg(99))
            images = [frame, photo_file(Path(tmp), 4032, 3024)]
            return preprocess_times(make_preprocess(args.image_size), images, 20 if args.quick else 100)
    size = args.image_size
    iters1, iters32 = (8, 2) if args.quick else (100, 10)
    torch.manual_seed(0)
    print(f"machine: {machine_line()}\nResNet-50 at {size} px", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model_dir(
            Path(tmp) / "m",
            create_model("resnet50", 1000),
            "resnet50",
            {},
            [f"class{i}" for i in range(1000)],
            make_preprocess(size),
        )
        write_int8(model_dir, 32 if args.quick else 256)
        # What `export --to onnx` writes (its parity check aside): with it, backend auto may run ONNX
        # files.
        (model_dir / ONNX_FILE).write_bytes(onnx_bytes(load_model_dir(model_dir)))
        record_export(model_dir, ONNX_FILE)
        if args.throughput:
            rows = build_rows(model_dir, size, args.compile if args.compile is not None else not args.quick)
            throughput(rows, size, iters1, iters32)
            del rows
        if args.latency:
            latency_table(model_dir, Path(tmp), 20 if args.quick else 200, args.repeats)


def throughput(rows, size: int, iters1: int, iters32: int) -> None:
    batch32 = torch.randn(32, 3, size, size)
    first = []
    for name, fn in rows:
        start = time.perf_counter()
        first.append(
            fn(batch32)
        )  # the probabilities compared, and the first warm-up (torch.compile compiles)
        print(
            f"  ready: {name} (first call {time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True
        )
    fns = [fn for _, fn in rows]
    b1 = timed_in_blocks(fns, batch32[:1], 3, iters1)
    b32 = timed_in_blocks(fns, batch32, 1, iters32)
    report(
        [(name, probs, t1, t32) for (name, _), probs, t1, t32 in zip(rows, first, b1, b32)], iters1, iters32
    )


def report(results, iters1: int, iters32: int) -> None:
    reference = results[2][1]  # resnetcls eager fp32 channels_last
    base1 = 1 / statistics.median(results[0][2])
    base32 = 32 / statistics.median(results[0][3])
    print(
        f"\n{'path':<62} {'img/s b1':>9} {'x':>5} {'img/s b32':>10} {'x':>5} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max|dp|':>8}"
    )
    for name, probs, b1, b32 in results:
        ips1, ips32 = 1 / statistics.median(b1), 32 / statistics.median(b32)
        lat = sorted(b1)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        diff = float((probs.float() - reference).abs().max())
        print(
            f"{name:<62} {ips1:>9.1f} {ips1 / base1:>5.2f} {ips32:>10.1f} {ips32 / base32:>5.2f} "
            f"{statistics.median(lat) * 1000:>8.1f} {p99 * 1000:>8.1f} {diff:>8.1e}"
        )
    print(
        f"\nmedians of 3 rounds x {iters1} timed passes at batch 1 and 3 x {iters32} at batch 32, "
        "each row's passes in a block in each round; x = ratio to the baseline row; p99 of fewer than 100 "
        "samples is their maximum."
    )


def photo_jpeg(i: int) -> bytes:
    """A camera-sized (640x480) JPEG with smooth structure: decoding costs what a real frame costs."""
    rng = np.random.default_rng(i)
    coarse = Image.fromarray(rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    coarse.resize((640, 480), Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def synthetic_images(count: int) -> list[Image.Image]:
    return [Image.open(io.BytesIO(photo_jpeg(i))).convert("RGB") for i in range(count)]


def percentiles(times: list[float]) -> tuple[float, float]:
    lat = sorted(times)
    return statistics.median(lat) * 1000, lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000


# auto with a model.onnx (OpenVINO bf16 on an AMX CPU), eager torch (auto without one), both int8 runtimes
LATENCY_BACKENDS = ("auto", "torch", "onnxruntime-int8", "openvino-int8")
EXACT_BACKENDS = ("onnxruntime-int8", "openvino-int8")  # also run with the exact decode


def torchvision_transform(pre: dict) -> v2.Compose:
    """torchvision's own classic eval pipeline, as a script copied from its docs has it: the baseline."""
    return v2.Compose(
        [
            v2.Resize(pre["resize"], antialias=True),
            v2.CenterCrop(pre["image_size"]),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(pre["mean"], pre["std"]),
        ]
    )


def api_rows(model_dir: Path, image: Path) -> list[tuple[str, callable]]:
    """One-image callables, decode + preprocess + model: the torchvision baseline and the Predictor API."""
    loaded = load_model_dir(model_dir)
    baseline = torchvision.models.resnet50(num_classes=1000)
    baseline.load_state_dict(loaded.model.state_dict())
    baseline.eval()
    transform = torchvision_transform(loaded.preprocess)

    @torch.inference_mode()
    def torchvision_one():
        return baseline(transform(Image.open(image).convert("RGB"))[None]).softmax(1)

    rows = [("torchvision fp32 eager (baseline), decode+preprocess+model", torchvision_one)]
    for backend in LATENCY_BACKENDS:
        predictor = Predictor(model_dir, device="cpu", backend=backend)
        name = f"Predictor.predict([jpeg]) backend {backend} ({predictor.backend}, {predictor.precision})"
        rows.append((name, lambda p=predictor: p.predict([str(image)], topk=5)))
    for backend in EXACT_BACKENDS:
        predictor = Predictor(model_dir, device="cpu", backend=backend)
        predictor.loader.fast = False
        rows.append(
            (
                f"Predictor.predict([jpeg]) backend {backend}, exact decode (loader.fast = False)",
                lambda p=predictor: p.predict([str(image)], topk=5),
            )
        )
    return rows


def photo_file(folder: Path, width: int, height: int) -> Path:
    """photo_jpeg's smooth structure at width x height (a phone photo at 4032x3024), written to folder."""
    rng = np.random.default_rng(7)
    coarse = Image.fromarray(rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8))
    path = folder / f"photo-{width}x{height}.jpg"
    coarse.resize((width, height), Image.BICUBIC).save(path, "JPEG", quality=90)
    return path


def preprocess_times(pre: dict, images: list[Path], iters: int) -> None:
    """Decode + preprocess alone of each JPEG (p50 of `iters`, 3 rounds): the torchvision baseline's PIL
    decode + transforms, the exact loader (eval's path), the fast loader (predict's and serve's default)."""
    fast, exact = ImageLoader(pre), ImageLoader(pre, fast=False)
    transform = torchvision_transform(pre)
    paths = {
        "torchvision baseline (PIL decode + v2 transforms)": lambda i: transform(
            Image.open(i).convert("RGB")
        ),
        "exact (decode_image + build_eval_transform)": lambda i: exact(str(i)),
        "fast (draft decode + crop-box resize + lookup)": lambda i: fast(str(i)),
        "decode alone, full size": lambda i: decode_image(str(i)),
    }
    print(
        f"\ndecode + preprocess alone to {pre['image_size']} px (resize {pre['resize']}), p50 ms of {iters}"
    )
    print(f"{'path':<50}" + "".join(f"{Image.open(i).size[0]}x{Image.open(i).size[1]:<6}" for i in images))
    for name, fn in paths.items():
        cells = []
        for image in images:
            times = timed_in_blocks([lambda _x, f=fn, i=image: f(i)], None, 5, iters, rounds=3)[0]
            cells.append(f"{statistics.median(times) * 1000:>10.2f}")
        print(f"{name:<50}" + "".join(cells))


def agreement(model_dir: Path, folders: list[Path]) -> None:
    """Top-1 agreement and max |dp| of the fast loader against the exact one on every image under folders."""
    predictor = Predictor(model_dir, device="cpu", backend="torch")
    exact = ImageLoader(predictor.loaded.preprocess, fast=False)
    paths = sorted(p for f in folders for p in f.rglob("*") if p.is_file() and is_image_file(p))
    same, worst, count = 0, 0.0, 0
    for start in range(0, len(paths), 32):
        chunk = [str(p) for p in paths[start : start + 32]]
        try:
            fast = torch.stack([predictor.loader(p) for p in chunk])
            full = torch.stack([exact(p) for p in chunk])
        except DecodeError as e:
            print(f"skipped a chunk: {e}")
            continue
        with torch.inference_mode():
            pf, pe = predictor.probabilities(fast), predictor.probabilities(full)
        same += int((pf.argmax(1) == pe.argmax(1)).sum())
        worst = max(worst, float((pf - pe).abs().max()))
        count += len(chunk)
    pre = predictor.loaded.preprocess
    print(
        f"{model_dir} ({pre['image_size']} px, resize {pre['resize']}) on {count} images under "
        f"{', '.join(map(str, folders))}: top-1 agreement {same}/{count} = {same / max(count, 1):.2%}, "
        f"max |dp| {worst:.4f}"
    )


def serve_row(model_dir: Path, tmp: Path, jpeg: bytes, backend: str, requests: int) -> list[float]:
    """Sequential POST /predict of one JPEG to a fresh `resnetcls serve --backend backend`; per-request
    times."""
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_load import start_server  # the same server start as the load benchmark

    proc, url = start_server(model_dir, tmp / f"serve-{backend}.log", "--backend", backend)
    try:
        with httpx.Client(timeout=60) as client:
            times = []
            for i in range(requests + 3):
                start = time.perf_counter()
                reply = client.post(url + "/predict", files={"file": ("frame.jpg", jpeg, "image/jpeg")})
                if i >= 3:  # the first requests warm the server up
                    times.append(time.perf_counter() - start)
                if reply.status_code != 200:
                    raise SystemExit(f"serve answered {reply.status_code}: {reply.text}")
    finally:
        proc.terminate()
        proc.wait(30)
    return times


def latency_table(model_dir: Path, tmp: Path, requests: int, repeats: int) -> None:
    """p50/p99 of one frame through each path, medians over `repeats` runs, against the torchvision row."""
    jpeg = photo_jpeg(99)
    image = tmp / "frame.jpg"
    image.write_bytes(jpeg)
    preprocess_times(load_model_dir(model_dir).preprocess, [image, photo_file(tmp, 4032, 3024)], requests)
    rows = api_rows(model_dir, image)
    runs: dict[str, list[tuple[float, float]]] = {}
    for _ in range(repeats):
        # Each row's requests in a block (a robot asks through one path), as timed_in_blocks explains.
        for (name, _), times in zip(
            rows, timed_in_blocks([lambda _x, f=f: f() for _, f in rows], None, 3, requests, rounds=1)
        ):
            runs.setdefault(name, []).append(percentiles(times))
        for backend in LATENCY_BACKENDS:
            name = f"serve POST /predict one JPEG, --backend {backend}"
            runs.setdefault(name, []).append(percentiles(serve_row(model_dir, tmp, jpeg, backend, requests)))
    base = statistics.median(p50 for p50, _ in runs[rows[0][0]])
    print(
        f"\nbatch-1 latency of one 640x480 JPEG (decode + preprocess + model), medians of {repeats} runs "
        f"x {requests} requests\n{'path':<78} {'p50 ms':>8} {'p99 ms':>8} {'p50 x lower':>12}"
    )
    for name, values in runs.items():
        p50, p99 = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
        print(f"{name:<78} {p50:>8.1f} {p99:>8.1f} {base / p50:>12.2f}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
