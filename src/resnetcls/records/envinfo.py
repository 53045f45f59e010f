"""`resnetcls env`: what a user pastes into a bug report (in the spirit of `python -m
torch.utils.collect_env`).

The one place that describes the machine: `resnetcls env` prints collect(), every benchmark prints
machine_line() in its header, and each run records provenance() next to its results. Only facts are read
here; the precision choices themselves live in hardware.py and are reported as `train` and `predict` make
them.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torchvision

from .. import __version__
from ..config.schema import DataConfig
from ..data.cache import resolve_cache_dir
from ..utils.hardware import (
    auto_exported_backend,
    cpu_capabilities,
    cpu_has_fast_bf16,
    precision_name,
    resolve_amp,
    usable_cores,
)
from ..utils.redact import mask_secrets

# Packages whose presence changes what resnetcls can do (exports, serving, trackers, search, reports).
EXTRAS = (
    "onnx",
    "onnxruntime",
    "openvino",
    "onnxscript",
    "fastapi",
    "uvicorn",
    "tensorboard",
    "matplotlib",
    "mlflow",
    "wandb",
    "optuna",
    "timm",
)
# torch's CPU capability flags that decide speed: bf16/int8 units and vector width.
CPU_FLAGS = ("avx2", "avx512_f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, macOS sysctl, else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> dict[str, bool]:
    """The CPU features torch detected (False for each one it cannot tell, e.g. on ARM)."""
    caps = cpu_capabilities()
    return {flag: bool(caps.get(flag)) for flag in CPU_FLAGS}


def _precision_choices(device: torch.device) -> dict:
    """What `train` (train.precision=auto) and `predict` (--precision auto) run on this device; on the CPU
    also what `predict --backend auto` runs once `export --to onnx` has written a model.onnx."""
    amp = precision_name(resolve_amp("auto", device))
    choices = {"train": f"{amp} + channels_last", "predict": f"{amp} + channels_last"}
    if device.type == "cpu":
        exported = auto_exported_backend()
        choices["predict_exported"] = {
            "openvino": f"openvino {amp}",
            "onnxruntime": "onnxruntime fp32",
            "torch": f"torch {amp} + channels_last",
        }[exported]
    return choices


def _cuda_devices() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(
            {
                "index": i,
                "name": props.name,
                "memory_gb": round(props.total_memory / 1e9, 1),
                "capability": f"{props.major}.{props.minor}",
                "precision": _precision_choices(torch.device("cuda", i)),
            }
        )
    return devices


def _cache_facts() -> dict:
    """The decoded cache's folder (data.cache_dir's default: $RESNETCLS_CACHE, else ~/.cache/resnetcls), its
    use, the free space there and the size limit a run keeps it under unless its config says otherwise
    (data.cache_max_gb)."""
    cache = resolve_cache_dir()
    existing = next((p for p in (cache, *cache.parents) if p.exists()), None)
    free = shutil.disk_usage(existing).free if existing is not None else None
    used = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) if cache.is_dir() else 0
    return {
        "dir": str(cache),
        "exists": cache.is_dir(),
        "used_gb": round(used / 1e9, 3),
        "free_gb": round(free / 1e9, 1) if free is not None else None,
        "max_gb": DataConfig().cache_max_gb,
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the resnetcls source, or (None, None) outside a git checkout."""
    src = Path(__file__).resolve().parent
    try:

        def run(*args):
            return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=5)

        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        return head.stdout.strip(), bool(run("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def collect() -> dict:
    """Every fact `resnetcls env` reports, as plain JSON-able values."""
    commit, dirty = git_revision()
    return {
        "resnetcls": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "torch_cuda": torch.version.cuda,
        "cpu": {
            "model": cpu_model(),
            "architecture": platform.machine(),
            "logical_cores": os.cpu_count(),
            "usable_cores": usable_cores(),
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_fast_bf16(),
            "flags": cpu_flags(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
        },
        "precision": {"cpu": _precision_choices(torch.device("cpu"))},
        "cuda_devices": _cuda_devices(),
        "cache": _cache_facts(),
        "packages": {name: _version(name) for name in EXTRAS},
    }


def machine_line() -> str:
    """One line naming the machine, for benchmark headers and README figures."""
    flags = cpu_flags()
    units = [name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16")) if flags[flag]]
    bf16 = f"yes ({', '.join(units)})" if units else "no (emulated)"
    vector = "AVX512" if flags["avx512_f"] else "AVX2" if flags["avx2"] else platform.machine()
    gpus = ", ".join(f"{d['name']} {d['memory_gb']:.0f} GB" for d in _cuda_devices()) or "none"
    return (
        f"{cpu_model()}, {usable_cores()} cores ({torch.get_num_threads()} torch threads), {vector}, "
        f"native bf16: {bf16}; torch {torch.__version__}; GPU: {gpus}"
    )


def recorded_command(argv: list[str] | None = None) -> str | None:
    """The command line as a run records it: the program's name (not its path) and each argument with the
    passwords of URLs in it masked (`--storage postgresql://tuner:***@db/tune`)."""
    argv = sys.argv if argv is None else argv
    return shlex.join([Path(argv[0]).name, *(mask_secrets(a) for a in argv[1:])]) if argv else None


def provenance() -> dict:
    """What a run records about where and how it ran: versions, platform, CPU, git commit, the command line
    (masked: recorded_command)."""
    commit, dirty = git_revision()
    return {
        "resnetcls": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "cuda": torch.version.cuda,
        "git_commit": commit,
        "git_dirty": dirty,
        "command": recorded_command(),
    }


def _yes(value) -> str:
    return "yes" if value is True else "no" if value is False else "-" if value is None else str(value)


def format_text(info: dict) -> str:
    """collect() as aligned lines for a terminal or a bug report."""
    cpu, cache = info["cpu"], info["cache"]
    head = f"resnetcls {info['resnetcls']}"
    if info["git_commit"]:
        head += f" (git {info['git_commit'][:12]}{', modified' if info['git_dirty'] else ''})"
    lines = [
        head,
        f"python {info['python']} on {info['platform']}",
        f"torch {info['torch']} (CUDA build {info['torch_cuda'] or 'none'}), "
        f"torchvision {info['torchvision']}",
        "",
        f"CPU: {cpu['model']} ({cpu['architecture']})",
        f"  cores: {cpu['usable_cores']} usable of {cpu['logical_cores']}; "
        f"torch threads {cpu['torch_threads']}"
        f" (inter-op {cpu['torch_interop_threads']}); kernels: {cpu['torch_capability']}",
        f"  native bf16: {_yes(cpu['native_bf16'])}"
        + (f" (ONEDNN_MAX_CPU_ISA={cpu['onednn_max_cpu_isa']})" if cpu["onednn_max_cpu_isa"] else ""),
        "  flags: " + "  ".join(f"{k} {_yes(v)}" for k, v in cpu["flags"].items()),
        f"  precision: train {info['precision']['cpu']['train']}, "
        f"predict {info['precision']['cpu']['predict']}"
        f" (with an exported model.onnx: {info['precision']['cpu']['predict_exported']})",
        "",
        "CUDA devices:" + ("" if info["cuda_devices"] else " none"),
    ]
    for d in info["cuda_devices"]:
        lines.append(
            f"  cuda:{d['index']} {d['name']}, {d['memory_gb']} GB, compute {d['capability']}; "
            f"precision: train {d['precision']['train']}, predict {d['precision']['predict']}"
        )
    used = f"{cache['used_gb']} GB used" if cache["exists"] else "not created yet"
    free = "free space unknown" if cache["free_gb"] is None else f"{cache['free_gb']} GB free"
    limit = f"limit {cache['max_gb']:g} GB" if cache["max_gb"] else "no size limit"  # (0 = none)
    installed = [f"{k} {v}" for k, v in info["packages"].items() if v]
    missing = [k for k, v in info["packages"].items() if not v]
    lines += [
        "",
        f"cache: {cache['dir']} ({used}; {free}; {limit} unless a run sets data.cache_max_gb)",
        "",
        "packages: " + (", ".join(installed) or "none of the optional ones"),
        "not installed: " + (", ".join(missing) or "-"),
    ]
    return "\n".join(lines) + "\n"


def run_env(fmt: str = "text") -> str:
    """`resnetcls env`: the report as text (for people) or JSON (for programs)."""
    info = collect()
    return json.dumps(info, indent=2) + "\n" if fmt == "json" else format_text(info)
