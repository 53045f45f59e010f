"""Device and precision choices shared by training and inference (no engine imports)."""
from __future__ import annotations

import functools

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


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where oneDNN runs bf16 convs fast.

    On CPUs without it (AVX2 only) bf16 is emulated and slower than fp32, so we must not pick it there.
    """
    try:
        caps = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):
        return False
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
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
