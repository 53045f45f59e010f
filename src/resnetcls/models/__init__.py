"""ResNet definitions and the name registry."""

from .registry import MODELS, create_model, model_info
from .resnet import ResNet

__all__ = ["MODELS", "ResNet", "create_model", "model_info"]
