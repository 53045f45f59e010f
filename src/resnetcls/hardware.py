"""Device and precision choices shared by training and inference (no engine imports)."""
from __future__ import annotations

import functools
import os

import torch

from .errors import UserError


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


@functools.lru_cache(maxsize=None)
def cpu_capabilities() -> dict:
    """torch's CPU feature flags (avx2, avx512_bf16, amx_bf16, ...); empty where torch cannot tell."""
    try:
        return dict(torch._C._cpu._get_cpu_capability())
    except (AttributeError, RuntimeError):
        return {}


# oneDNN instruction sets (ONEDNN_MAX_CPU_ISA) that include native bf16 dot products; a cap below these
# (e.g. AVX2, AVX512_CORE_VNNI) makes oneDNN emulate bf16 even on a CPU that has it.
ONEDNN_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX",
                    "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "DEFAULT", "ALL"}


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where oneDNN runs bf16 convs fast.

    On CPUs without it (AVX2 only) bf16 is emulated and slower than fp32, so we must not pick it there; the
    same holds where the user capped oneDNN below bf16 with ONEDNN_MAX_CPU_ISA.
    """
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap and cap not in ONEDNN_BF16_ISAS:
        return False
    caps = cpu_capabilities()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


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
        raise UserError(f"train.amp={amp!r}: expected auto, bf16, fp16 or fp32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    """The name train, predict and env print for an autocast dtype (None = fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
