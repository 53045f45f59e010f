"""models/resnet.py: torchvision-compatible weights and logits, both stems, stride placement, shortcuts,
zero-init, the timm-style classifier interface."""

import pytest
import torch
import torchvision

from resnetcls.models import create_model
from resnetcls.models.resnet import BasicBlock, Bottleneck

DEPTHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


@pytest.mark.parametrize("name", DEPTHS)
def test_torchvision_weights_load_strict_and_give_equal_logits(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None, num_classes=1000).eval()
    ours = create_model(name, 1000).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("stem", ["imagenet", "small"])
@pytest.mark.parametrize("size", [32, 64, 128, 224])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_output_shapes_for_both_stems(name, stem, size):
    model = create_model(name, 7, stem=stem, width=8).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, size, size))
        logits = model.forward_head(feats)
    reduction = 32 if stem == "imagenet" else 16
    assert feats.shape == (2, model.num_features, -(-size // reduction), -(-size // reduction))
    assert logits.shape == (2, 7)


def test_stride_placement_option_moves_the_stride_to_the_first_1x1():
    v15 = create_model("resnet50", 10)
    v1 = create_model("resnet50", 10, stride_on_1x1=True)
    assert v15.layer2[0].conv2.stride == (2, 2) and v15.layer2[0].conv1.stride == (1, 1)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    # same parameters either way, and torchvision names still fit
    v1.load_state_dict(v15.state_dict(), strict=True)
    with torch.no_grad():
        assert v1.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_projection_shortcut_only_where_shape_changes():
    model = create_model("resnet50", 10)
    assert model.layer1[0].downsample is not None  # 64 -> 256 channels
    assert all(block.downsample is None for block in list(model.layer1)[1:])
    model18 = create_model("resnet18", 10)
    assert model18.layer1[0].downsample is None and model18.layer2[0].downsample is not None
    assert isinstance(model18.layer1[0], BasicBlock) and isinstance(model.layer1[0], Bottleneck)


def test_zero_init_residual_makes_blocks_start_as_identity():
    model = create_model("resnet18", 10, zero_init_residual=True).eval()
    block = model.layer1[1]
    x = torch.relu(torch.randn(1, 64, 8, 8))
    with torch.no_grad():
        assert torch.allclose(block(x), x)


def test_reset_classifier_and_pre_logits():
    model = create_model("resnet18", 10, width=8)
    model.reset_classifier(3)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 3)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
