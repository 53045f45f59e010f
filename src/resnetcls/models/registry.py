"""Model names -> builders, and model_info() for `resnetcls models`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from . import resnet

MODELS = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
    "resnet152": resnet.resnet152,
}


def create_model(name: str, num_classes: int, **arch_args) -> resnet.ResNet:
    """Build the named ResNet with a head of num_classes; arch_args go to ResNet (stem, width, ...)."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, **arch_args)


@dataclass
class ModelInfo:
    name: str
    params: int
    macs: int  # multiply-accumulates of one forward pass of one image


def count_macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of conv and linear layers for one image (BN/ReLU/pool are negligible)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        kernel = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() * kernel

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total


def model_info(name: str, image_size: int = 224, num_classes: int = 1000, **arch_args) -> ModelInfo:
    """Parameters and MACs of the named model at image_size (square input)."""
    model = create_model(name, num_classes, **arch_args)
    params = sum(p.numel() for p in model.parameters())
    return ModelInfo(name, params, count_macs(model, image_size))
