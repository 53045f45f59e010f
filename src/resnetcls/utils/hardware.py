"""Device and precision choices shared by training and inference (no engine imports)."""

from __future__ import annotations

import functools
import importlib.util
import os
import time

import torch

from ..errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; an explicit cuda without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device(name)


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's limit), not the host's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.cache
def cpu_capabilities() -> dict:
    """torch's CPU feature flags (avx2, avx512_bf16, amx_bf16, ...); empty where torch cannot tell."""
    try:
        return dict(torch._C._cpu._get_cpu_capability())
    except (AttributeError, RuntimeError):
        return {}


# oneDNN instruction sets (ONEDNN_MAX_CPU_ISA) that include native bf16 dot products; a cap below these
# (e.g. AVX2, AVX512_CORE_VNNI) makes oneDNN emulate bf16 even on a CPU that has it.
ONEDNN_BF16_ISAS = {
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX10_1_512",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512_AMX_FP16",
    "DEFAULT",
    "ALL",
}


def onednn_isa_cap() -> str:
    """ONEDNN_MAX_CPU_ISA as oneDNN reads it (upper case), or "" when unset."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where oneDNN runs bf16 convs fast.

    On CPUs without it (AVX2 only) bf16 is emulated and slower than fp32, so we must not pick it there; the
    same holds where the user capped oneDNN below bf16 with ONEDNN_MAX_CPU_ISA.
    """
    cap = onednn_isa_cap()
    if cap and cap not in ONEDNN_BF16_ISAS:
        return False
    caps = cpu_capabilities()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


@functools.cache
def cpu_has_amx() -> bool:
    """True on CPUs with AMX tiles for bf16 (Intel Sapphire Rapids and later), where OpenVINO's bf16 and int8
    kernels were measured fastest (README, int8); False where ONEDNN_MAX_CPU_ISA caps oneDNN below AMX."""
    cap = onednn_isa_cap()
    if cap and "AMX" not in cap and cap not in ("DEFAULT", "ALL"):
        return False
    return bool(cpu_capabilities().get("amx_bf16"))


def auto_exported_backend() -> str:
    """What `--backend auto` runs on this CPU when the model directory has a current, checked model.onnx, as
    bench/inference.py measured the paths: "openvino" on AMX CPUs (bf16 there: 3.4x eager bf16 torch at batch
    32 on Xeon-AMX) when OpenVINO is installed; "torch" (bf16) on other native-bf16 CPUs (AVX512-BF16 without
    AMX, e.g. Zen 4, where OpenVINO has not been measured); "onnxruntime" (fp32) elsewhere (2.5x eager fp32 on
    an AVX2 CPU)."""
    if cpu_has_amx() and importlib.util.find_spec("openvino") is not None:
        return "openvino"
    return "torch" if cpu_has_fast_bf16() else "onnxruntime"


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the requested precision on this device; None means fp32 (autocast off).

    auto: bf16 on CUDA GPUs that support it and on CPUs with native bf16, fp16 on older GPUs, else fp32.
    """
    if amp == "fp32":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp != "auto":
        raise UserError(f"train.precision={amp!r}: expected auto, bf16, fp16 or fp32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    """The name train, predict and env print for an autocast dtype (None = fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _achieved_gflops(run, flops: float, seconds: float) -> float:
    """GFLOP/s of run() (flops floating-point operations each call): one warm-up call, then repeated calls for
    about `seconds`; the fastest call counts (what the hardware can do, not what a busy neighbour left)."""
    run()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        start = time.perf_counter()
        run()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return flops / best / 1e9


def peak_gflops(seconds: float = 0.25, threads: int | None = None) -> dict:
    """Achievable GFLOP/s on this CPU of a square matmul and a 3x3 convolution (channels_last, the layout
    training uses), in fp32 and bf16, with `threads` torch threads (default: the current setting, which is
    what training runs with): the limit bench/train_throughput.py reports each training row against.

    Returns {"fp32_matmul", "fp32_conv", "bf16_matmul", "bf16_conv", "bf16_native", "threads"}; bf16_native
    is cpu_has_fast_bf16() (where it is False oneDNN emulates bf16 and its figures are not a limit to reach).
    Each figure takes about `seconds`."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        result = {"threads": torch.get_num_threads(), "bf16_native": cpu_has_fast_bf16()}
        g = torch.Generator().manual_seed(0)
        n, batch, channels, side = 1024, 8, 256, 28  # a ResNet-50 stage-3 3x3 conv (28x28 at 224 px)
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        x = torch.randn(batch, channels, side, side, generator=g).contiguous(
            memory_format=torch.channels_last
        )
        w = torch.randn(channels, channels, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
        conv_flops = 2.0 * batch * side * side * channels * channels * 9
        with torch.inference_mode():
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                ad, bd, xd, wd = (t.to(dtype) for t in (a, b, x, w))
                result[f"{name}_matmul"] = _achieved_gflops(lambda ad=ad, bd=bd: ad @ bd, 2.0 * n**3, seconds)
                result[f"{name}_conv"] = _achieved_gflops(
                    lambda xd=xd, wd=wd: torch.nn.functional.conv2d(xd, wd, padding=1), conv_flops, seconds
                )
        return result
    finally:
        torch.set_num_threads(previous)
