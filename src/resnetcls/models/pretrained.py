"""`--pretrained`: initialise a ResNet from a torchvision- or timm-format state_dict, with a new head.

A file is read as safetensors, or as a .pth/.pt/.bin with ``torch.load(weights_only=True)``, which refuses
anything but tensors and plain containers (no code runs from a planted pickle). ``torchvision`` reads
torchvision's ImageNet weights for the chosen depth from the torch hub cache, downloading them when online
(weights.py, which `resnetcls weights` also uses).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import UserError
from .weights import IMAGENET_WEIGHTS, download, imagenet_weights_available

HEAD = ("fc.weight", "fc.bias")
STEM = ("conv1.weight",)
WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema")  # timm / training-script checkpoints
PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def _unwrap(obj, source: str) -> dict[str, torch.Tensor]:
    """A bare state_dict, or one nested under a checkpoint key; DDP/compile prefixes removed."""
    for key in WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise UserError(f"{source}: not a state_dict (found {type(obj).__name__})")
    state = {}
    for name, value in obj.items():
        if isinstance(value, torch.Tensor):
            for prefix in PREFIXES:
                name = name.removeprefix(prefix)
            state[name] = value
    if not state:
        raise UserError(f"{source}: holds no tensors")
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a .pth/.pt/.bin loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--pretrained {path}: no such file (or pass 'torchvision' to download ImageNet weights)"
        )
    if path.suffix == ".safetensors":
        try:
            return _unwrap(load_file(str(path), device="cpu"), str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path}: not a valid safetensors file: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code-carrying pickles, RuntimeError/EOFError for junk
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path}: refused: not a plain tensor state_dict loadable with weights_only=True ({first})"
        ) from None
    return _unwrap(obj, str(path))


def torchvision_state_dict(arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's IMAGENET1K_V1 weights for arch: from the hub cache, else downloaded (sha256 prefix
    checked) when download.pytorch.org answers within 3 s; offline, a UserError saying how to fetch them."""
    if arch not in IMAGENET_WEIGHTS:
        raise UserError(
            f"--pretrained torchvision: no ImageNet weights for {arch!r} "
            f"(torchvision has {', '.join(IMAGENET_WEIGHTS)})"
        )
    path = imagenet_weights_available(arch) or download(arch)[0]
    return read_state_dict(path), str(path)


def _names(items: list, limit: int = 6) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load_pretrained(model: nn.Module, source: str, arch: str, log: Callable[[str], None] = _stderr) -> dict:
    """Copy every tensor of source whose name and shape fit model; the fc head is always left new.

    Returns {"source", "loaded", "reshaped", "new", "unused"} (tensor names; reshaped maps the head, and the
    stem conv when model.stem differs, to "file shape -> model shape") and logs one summary line. Tensors of
    another shape elsewhere, or weights the model lacks, mean the file is for another architecture: an error.
    """
    state, where = (
        torchvision_state_dict(arch) if source == "torchvision" else (read_state_dict(source), source)
    )
    own = model.state_dict()
    fits, loaded, new, reshaped = {}, [], [], {}
    for name, tensor in own.items():
        theirs = state.get(name)
        if theirs is None:
            new.append(name)
        elif name in HEAD or theirs.shape != tensor.shape:
            reshaped[name] = f"{tuple(theirs.shape)} -> {tuple(tensor.shape)}"
        else:
            fits[name] = theirs
            loaded.append(name)
    unused = [k for k in state if k not in own]
    # The head always differs (new classes); the stem may (model.stem=small). Any other difference means
    # the file is for another depth or width, and loading the tensors that happen to fit would be garbage.
    wrong = [f"{n} {s}" for n, s in reshaped.items() if n not in HEAD + STEM]
    extra = [k for k in unused if not k.endswith("num_batches_tracked")]
    body = [n for n in own if n not in HEAD]
    if wrong or extra or len(loaded) < len(body) / 2:
        raise UserError(
            f"{where}: does not fit {arch} with these settings: {len(loaded)} of {len(body)} tensors "
            f"fit (other shapes: {_names(wrong) or 'none'}; not in {arch}: {_names(extra) or 'none'}; "
            f"missing: {_names(new) or 'none'}); pass a {arch} state_dict (model.width=64)"
        )
    model.load_state_dict(fits, strict=False)
    log(
        f"pretrained {where}: loaded {len(loaded)} tensors; reshaped and left new: "
        f"{_names([f'{n} {s}' for n, s in reshaped.items()]) or 'none'}; left new: {_names(new) or 'none'}; "
        f"unused from the file: {_names(unused) or 'none'}"
    )
    return {"source": where, "loaded": loaded, "reshaped": reshaped, "new": new, "unused": unused}
